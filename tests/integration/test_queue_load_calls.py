"""200 queued calls through real Kamailio, Asterisk, the FastAGI server and Redis, to 20
SIPp agent phones in two queues (some agents in both), checked from SIPp's own message
traces as well as from omnicc's events.

Two carrier SIPps place 100 calls each (one per queue, each with its own caller number) at
a steady rate and stay on the line until omnicc hangs up. Each agent phone
(agent_answer_talk.xml) answers at once, talks a random 1 to 4 s and hangs up itself. Three
agents are paused for the whole run.

From the agents' traces: no phone ever has two calls at once; no phone gets an INVITE
within the wrap-up of its previous call (the wrap-up of that call's queue, known by its
caller number); a paused agent gets nothing; an agent gets calls only of its queues. From
the callers' traces: every call was answered and ended by omnicc. From the event stream:
every call was answered or failed over, none lost, and the answers per agent are those its
phone saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.keys import agent_hash

from .conftest import TRUNK_IP, RunningStack, stack_up
from .queue_agents import (
    agents_yaml,
    overlapping_calls,
    phones_online,
    queue_events,
    wait_until,
    wrapup_violations,
)
from .test_first_call import now_id

pytestmark = pytest.mark.integration

AGENTS = [str(ext) for ext in range(2001, 2021)]
SALES = AGENTS[:12]           # 2001..2012
CARE = AGENTS[8:]             # 2009..2020: 2009..2012 are in both queues
PAUSED = ["2003", "2010", "2017"]  # sales only, both queues, care only
SALES_CALLER, CARE_CALLER = "5491100000201", "5491100000202"
WRAPUP = {SALES_CALLER: 2, CARE_CALLER: 1}  # seconds, by the caller number of the queue
CALLS_PER_QUEUE = 100
RATE_PER_QUEUE = 1.6  # calls/s: 200 calls in about a minute, ~80% of the agents busy

LOAD_CONFIG = f"""\
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
{agents_yaml(AGENTS)}
    trunks:
      - {{{{name: test-carrier, address: {{trunk}}}}}}
    inbound_routes:
      - {{{{did: "5550201", destination: "queue:sales"}}}}
      - {{{{did: "5550202", destination: "queue:care"}}}}
    queues:
      - name: sales
        strategy: longest-idle
        members: [{", ".join(f'{{{{agent: "{e}"}}}}' for e in SALES)}]
        ring_timeout_seconds: 10
        max_wait_seconds: 60
        failover: hangup
        wrapup_seconds: {WRAPUP[SALES_CALLER]}
      - name: care
        strategy: round-robin-memory
        members: [{", ".join(f'{{{{agent: "{e}"}}}}' for e in CARE)}]
        ring_timeout_seconds: 10
        max_wait_seconds: 60
        failover: hangup
        wrapup_seconds: {WRAPUP[CARE_CALLER]}
"""


@pytest.fixture(scope="module")
def load_stack() -> Iterator[RunningStack]:
    with stack_up("omnicc-it-load-", "load", LOAD_CONFIG) as running:
        yield running


def test_200_calls_to_20_agents_in_two_queues(load_stack: RunningStack,
                                              sipp_dir: Path) -> None:
    r = load_stack.redis()
    acd = AcdSync(r, "it-load")
    since = now_id()
    with phones_online(load_stack, sipp_dir, AGENTS,
                       scenario="agent_answer_talk.xml") as phones:
        for ext in AGENTS:
            assert acd.login("default", ext).ok, ext
        for ext in PAUSED:
            assert acd.pause("default", ext, "training").ok, ext
        callers = [
            sipp.carrier_calls(sipp_dir, proxy=load_stack.proxy, did=did, local_ip=TRUNK_IP,
                               calls=CALLS_PER_QUEUE, rate=RATE_PER_QUEUE, caller=number,
                               scenario="caller_waits_for_bye.xml", run_timeout_s=400,
                               name=f"load-{did}").start()
            for did, number in (("5550201", SALES_CALLER), ("5550202", CARE_CALLER))
        ]
        for caller in callers:
            assert caller.wait(timeout=420) == 0, caller.errors.read_text(errors="replace")
        # Every answered call has ended in the ACD before the phones stop.
        assert wait_until(lambda: _count(queue_events(load_stack, since), "call_ended",
                                         lambda e: bool(e.get("call")))
                          >= _count(queue_events(load_stack, since), "call_answered"), 20)
        paused_states = {ext: r.hget(agent_hash("default", ext), "state") for ext in PAUSED}
        for phone in phones.values():
            phone.stop()
        calls_by_agent = {ext: phone.traced_dialogs() for ext, phone in phones.items()}
    events = queue_events(load_stack, since)

    # The callers' side: 200 calls, each answered by Asterisk and ended by omnicc's BYE.
    caller_calls = [d for caller in callers for d in caller.traced_dialogs()]
    assert len(caller_calls) == 2 * CALLS_PER_QUEUE
    assert all(d.answered and d.ended_by == "BYE received" for d in caller_calls), [
        d for d in caller_calls if not (d.answered and d.ended_by == "BYE received")]

    # The agents' side, from each phone's own trace.
    assert paused_states == dict.fromkeys(PAUSED, "PAUSED")
    for ext in PAUSED:
        assert calls_by_agent[ext] == [], f"paused agent {ext} was offered calls"
    for ext, calls in calls_by_agent.items():
        assert all(d.user == ext for d in calls), (ext, {d.user for d in calls})
        assert overlapping_calls(calls) == [], f"agent {ext} had two calls at once"
        assert wrapup_violations(calls, WRAPUP) == [], ext
        queues_seen = {d.caller for d in calls}
        allowed = ({SALES_CALLER} if ext in SALES else set()) | (
            {CARE_CALLER} if ext in CARE else set())
        assert queues_seen <= allowed, (ext, queues_seen)
    answered_by_phone = Counter({ext: sum(d.answered for d in calls)
                                 for ext, calls in calls_by_agent.items()})
    # The load was spread: every agent who was not paused took calls.
    assert all(answered_by_phone[ext] > 0 for ext in AGENTS if ext not in PAUSED), \
        answered_by_phone
    shared_took_both = [ext for ext in set(SALES) & set(CARE) - set(PAUSED)
                        if {d.caller for d in calls_by_agent[ext]} == set(WRAPUP)]
    assert shared_took_both, "no agent of both queues took calls of both"

    # omnicc's stream reconciles with SIPp: every call answered or failed over, none
    # abandoned or lost, and each agent's answers are those its phone saw.
    enqueued = [e for e in events if e["event"] == "call_enqueued"]
    assert Counter(e["queue"] for e in enqueued) == {"sales": 100, "care": 100}
    answered = [e for e in events if e["event"] == "call_answered"]
    failed_over = [e for e in events if e["event"] == "call_failed_over"]
    assert not [e for e in events if e["event"] in ("call_abandoned", "call_overflowed")]
    assert {e["call"] for e in answered} | {e["call"] for e in failed_over} == {
        e["call"] for e in enqueued}
    assert len(answered) + len(failed_over) == len(enqueued)
    assert Counter(e["agent"] for e in answered) == answered_by_phone - Counter()
    # Failover (max wait 60 s) is allowed on a slow machine, but most calls are answered.
    assert len(answered) >= 150, (len(answered), len(failed_over))
    ended = {e["call"] for e in events if e["event"] == "call_ended" and e.get("call")}
    assert ended == {e["call"] for e in answered}


def _count(events: list[dict[str, str]], name: str, where=lambda _e: True) -> int:
    return sum(1 for e in events if e["event"] == name and where(e))
