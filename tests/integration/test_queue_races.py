"""Races between a queued call and its agent's state, end to end through real Kamailio,
Asterisk, the FastAGI server and SIPp, many times over with jittered timing.

- A call arrives just as its agent is paused or logged out (AcdSync, at a random moment
  while the call is being enqueued, offered or rung): the call goes to the other agent or
  to this one only if it answered first (then the pause is refused: on_call); never lost.
- A call arrives just as its agent's previous call ends (wrap-up begins): it goes to the
  other agent; the first agent gets no INVITE within its wrap-up.
- An agent in two queues with different wrap-ups keeps the wrap-up of the queue the call
  came from.

Who was really bridged is read from SIPp's traces, not from omnicc: the agent leg that
Asterisk hangs up only after the caller's BYE. A refused or cancelled leg ends before it.
(The ringall race, two agents answering at once, is in test_queue_calls.py.)
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdResult, AcdSync
from omnicc.keys import agent_hash
from omnicc.sipp import SippRun

from .conftest import TRUNK_IP, RunningStack, stack_up
from .queue_agents import (
    agents_yaml,
    bridged_agents,
    phones_online,
    queue_events,
    wait_until,
    wrapup_violations,
)
from .test_first_call import now_id

pytestmark = pytest.mark.integration

RACE_WRAPUP = 1
SHORT_WRAPUP, LONG_WRAPUP = 1, 4
REPETITIONS = 6

RACE_CONFIG = f"""\
node: it-{{name}}
services:
  listen: 127.0.0.1
  kamailio: {{{{port: {{kamailio}}}}}}
  asterisk: {{{{port: {{asterisk}}}}}}
  agi:      {{{{port: {{agi}}}}}}
  redis:    {{{{port: {{redis}}}}}}
  postgres: {{{{port: {{postgres}}}}}}
tenants:
  - name: default
    domain: {{domain}}
    agents:
{agents_yaml(["3001", "3002", "3003"])}
    trunks:
      - {{{{name: test-carrier, address: {{trunk}}}}}}
    inbound_routes:
      - {{{{did: "5550301", destination: "queue:race"}}}}
      - {{{{did: "5550303", destination: "queue:short-wrap"}}}}
      - {{{{did: "5550304", destination: "queue:long-wrap"}}}}
    queues:
      - name: race              # 3001 whenever it is READY, else 3002
        strategy: linear
        members: [{{{{agent: "3001"}}}}, {{{{agent: "3002"}}}}]
        ring_timeout_seconds: 10
        max_wait_seconds: 40
        wrapup_seconds: {RACE_WRAPUP}
      - name: short-wrap
        members: [{{{{agent: "3003"}}}}]
        overflow_when_no_agents: false
        max_wait_seconds: 40
        wrapup_seconds: {SHORT_WRAPUP}
      - name: long-wrap
        members: [{{{{agent: "3003"}}}}]
        overflow_when_no_agents: false
        max_wait_seconds: 40
        wrapup_seconds: {LONG_WRAPUP}
"""


@pytest.fixture(scope="module")
def race_stack() -> Iterator[RunningStack]:
    with stack_up("omnicc-it-race-", "race", RACE_CONFIG) as running:
        yield running


@pytest.fixture(scope="module")
def phones(race_stack: RunningStack,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SippRun]]:
    """The three agents' phones (answer after 200 ms, wait for the far end's BYE)."""
    workdir = tmp_path_factory.mktemp("race-phones")
    with phones_online(race_stack, workdir, ["3001", "3002", "3003"],
                       scenario="agent_answer.xml") as running:
        yield running


@pytest.fixture
def acd(race_stack: RunningStack) -> AcdSync:
    return AcdSync(race_stack.redis(), "it-race-test")


def state(stack: RunningStack, ext: str) -> str:
    return stack.redis().hget(agent_hash("default", ext), "state") or "OFFLINE"


def make_ready(stack: RunningStack, acd: AcdSync, *extensions: str) -> None:
    """Each agent READY: logged in, unpaused, its wrap-up over (settled by a tick)."""
    for ext in extensions:
        if state(stack, ext) == "OFFLINE":
            assert acd.login("default", ext).ok, ext
        if state(stack, ext) == "PAUSED":
            assert acd.unpause("default", ext).ok, ext

    def all_ready() -> bool:
        acd.tick("default")
        return all(state(stack, ext) == "READY" for ext in extensions)

    assert wait_until(all_ready, 15), {ext: state(stack, ext) for ext in extensions}


def call(stack: RunningStack, workdir: Path, did: str, number: str,
         talk_ms: int = 1500) -> SippRun:
    return sipp.carrier_calls(workdir, proxy=stack.proxy, did=did, local_ip=TRUNK_IP,
                              talk_ms=talk_ms, caller=number, name=f"call-{number}").start()


def ended_call(stack: RunningStack, since: str, number: str,
               timeout: float = 15) -> list[dict[str, str]]:
    """The events of the caller's queued call, once the ACD has ended it (or `timeout`)."""
    def of_call() -> list[dict[str, str]]:
        events = queue_events(stack, since)
        ids = {e["call"] for e in events
               if e["event"] == "call_enqueued" and e.get("caller") == number}
        return [e for e in events if e.get("call") in ids]

    wait_until(lambda: any(e["event"] in ("call_ended", "call_abandoned", "call_failed_over")
                           for e in of_call()), timeout)
    return of_call()


def check_call(stack: RunningStack, since: str, caller: SippRun,
               phones: dict[str, SippRun]) -> str:
    """The call was answered (not lost) by exactly one agent, the same one by SIPp's traces
    and by omnicc's events; returns that agent."""
    assert caller.wait(timeout=60) == 0, caller.errors.read_text(errors="replace")
    (caller_leg,) = caller.traced_dialogs()
    events = ended_call(stack, since, caller_leg.caller)
    answered = [e["agent"] for e in events if e["event"] == "call_answered"]
    assert len(answered) == 1, [(e["event"], e.get("agent"), e.get("reason")) for e in events]
    assert bridged_agents(caller_leg, phones) == answered, (caller_leg, answered)
    return answered[0]


@pytest.mark.parametrize("transition", ["pause", "logout"])
def test_a_call_racing_a_pause_or_logout_never_reaches_that_agent(
    race_stack: RunningStack, phones: dict[str, SippRun], acd: AcdSync, sipp_dir: Path,
    transition: str,
) -> None:
    rng = random.Random(f"race-{transition}")
    outcomes: list[tuple[str, str]] = []
    for rep in range(REPETITIONS):
        make_ready(race_stack, acd, "3001", "3002")
        since = now_id()
        number = f"54911{1 if transition == 'pause' else 2}{rep:04d}"
        caller = call(race_stack, sipp_dir, "5550301", number, talk_ms=1000)
        if rep % 2:
            # While 3001's phone rings or has just answered.
            assert wait_until(lambda: state(race_stack, "3001") in ("RESERVED", "ONCALL"),
                              15, step=0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            # Somewhere from the INVITE on its way to the call being answered.
            time.sleep(rng.uniform(0.2, 1.2))
        seen = state(race_stack, "3001")
        result: AcdResult = (acd.pause("default", "3001", "break") if transition == "pause"
                             else acd.logout("default", "3001"))
        answered_by = check_call(race_stack, since, caller, phones)
        outcomes.append((seen, result.code))
        if result.ok:
            assert answered_by == "3002", (rep, seen, result)
            assert state(race_stack, "3001") == ("PAUSED" if transition == "pause"
                                                  else "OFFLINE")
        else:
            # Too late: 3001 had answered, and an agent on a call cannot be paused.
            assert (result.code, answered_by) == ("on_call", "3001"), (rep, seen, result)
    print("3001's state when the", transition, "came, and the ACD's answer:", outcomes)
    # The race was run: the transition came while the call was at 3001 at least once.
    assert any(seen in ("RESERVED", "ONCALL") for seen, _ in outcomes), outcomes


def test_a_call_arriving_as_the_agent_enters_wrapup_goes_to_another_agent(
    race_stack: RunningStack, phones: dict[str, SippRun], acd: AcdSync, sipp_dir: Path,
) -> None:
    rng = random.Random("race-wrapup")
    offsets: list[int] = []
    # How much later than aimed the second call arrives (the first call is answered by
    # Asterisk before it is enqueued): learnt from each repetition.
    lag = 0.5
    for rep in range(REPETITIONS):
        make_ready(race_stack, acd, "3001", "3002")
        since = now_id()
        first_number, second_number = f"549113{rep:04d}", f"549114{rep:04d}"
        started = time.time()
        first = call(race_stack, sipp_dir, "5550301", first_number, talk_ms=1500)
        # The first caller hangs up 1.5 s after Asterisk answered it, a while before it
        # reached the queue. The second call is placed so that it reaches the queue at a
        # random moment around then (both take about as long from SIPp to the queue).
        aimed = rng.uniform(-0.4, 0.4)
        time.sleep(max(0.0, started + 1.5 - lag + aimed - time.time()))
        second = call(race_stack, sipp_dir, "5550301", second_number, talk_ms=1000)
        assert check_call(race_stack, since, first, phones) == "3001"
        answered_by = check_call(race_stack, since, second, phones)
        (first_end,) = [e for e in ended_call(race_stack, since, first_number)
                        if e["event"] == "call_ended"]
        (enqueued,) = [e for e in ended_call(race_stack, since, second_number)
                       if e["event"] == "call_enqueued"]
        arrived_ms = round(float(enqueued["ts"]) * 1000)
        offsets.append(arrived_ms - round(float(first_end["ts"]) * 1000))
        lag = min(1.5, max(0.0, lag + (offsets[-1] / 1000 - aimed) / 2))
        if arrived_ms < int(first_end["wrapup_until"]):
            # 3001 was on the call or in its wrap-up when the second call came.
            assert answered_by == "3002", (rep, offsets[-1])
    print("second call's arrival after the first call's end, ms:", offsets)
    # The race was run: some second calls came before the first's wrap-up was over.
    assert any(offset < RACE_WRAPUP * 1000 for offset in offsets), offsets
    # From 3001's own trace: no INVITE within its wrap-up after any of its calls.
    calls = phones["3001"].traced_dialogs()
    assert calls and wrapup_violations(calls, {leg.caller: RACE_WRAPUP for leg in calls}) == []


def test_an_agent_in_two_queues_keeps_the_wrapup_of_the_queue_the_call_came_from(
    race_stack: RunningStack, phones: dict[str, SippRun], acd: AcdSync, sipp_dir: Path,
) -> None:
    make_ready(race_stack, acd, "3003")
    since = now_id()
    plan = [("5550304", "549115000001", LONG_WRAPUP), ("5550303", "549115000002", SHORT_WRAPUP),
            ("5550304", "549115000003", LONG_WRAPUP)]
    ended: list[dict[str, str]] = []
    previous_wrapup = 0
    for did, number, wrapup in plan:
        # Each call is placed as soon as the previous one ended: it waits out the wrap-up
        # of the previous call's queue, whichever queue it comes from itself. (The caller
        # hangs up talk_ms after Asterisk answered it, waiting included.)
        caller = call(race_stack, sipp_dir, did, number,
                      talk_ms=previous_wrapup * 1000 + 2500)
        previous_wrapup = wrapup
        assert check_call(race_stack, since, caller, phones) == "3003"
        (end,) = [e for e in ended_call(race_stack, since, number)
                  if e["event"] == "call_ended"]
        assert int(end["wrapup_until"]) - round(float(end["ts"]) * 1000) == wrapup * 1000, end
        ended.append(end)
    assert [e["queue"] for e in ended] == ["long-wrap", "short-wrap", "long-wrap"]
    calls = [leg for leg in phones["3003"].traced_dialogs()
             if leg.caller in {number for _, number, _ in plan}]
    assert len(calls) == 3
    # From the phone's own trace: each INVITE came after the wrap-up of the previous
    # call's queue (4 s after the long-wrap call, 1 s after the short-wrap one).
    assert wrapup_violations(calls, {number: w for _, number, w in plan}) == []
