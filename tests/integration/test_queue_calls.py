"""A queued call end to end, through real Kamailio, Asterisk, the FastAGI server, Redis
and SIPp.

carrier (SIPp) -> Kamailio -> Asterisk -> AGI inbound_route (queue:support) -> Asterisk
answers, music on hold -> AGI queue_call (enqueue; the READY agent is reserved) -> Dial
through Kamailio with U(): AGI queue_answer confirms the reservation -> bridged -> the
carrier hangs up -> hang-up handler AGI queue_end -> the agent is in WRAPUP.

Its own stack (conftest's CONFIG_TEMPLATE has no queue): the config below.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.events import read_events
from omnicc.keys import agent_hash

from .conftest import DOMAIN, SERVICES_TEMPLATE, TRUNK_IP, RunningStack, stack_up
from .queue_agents import bridged_agents
from .test_first_call import PASSWORDS, agent_online, now_id

pytestmark = pytest.mark.integration

QUEUE_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
    inbound_routes:
      - {{did: "5550100", destination: "agent:1001"}}
      - {{did: "5550102", destination: "queue:support"}}
      - {{did: "5550103", destination: "queue:backlog"}}
      - {{did: "5550104", destination: "queue:everyone"}}
      - {{did: "5550105", destination: "queue:short"}}
      - {{did: "5550106", destination: "queue:missed"}}
    queues:
      - name: support
        strategy: longest-idle
        members: [{{agent: "1001"}}]
        ring_timeout_seconds: 10
        max_wait_seconds: 30
        failover: hangup
        wrapup_seconds: 60
      - name: backlog           # nobody logs in: calls wait
        members: [{{agent: "1002"}}]
        overflow_when_no_agents: false
        max_wait_seconds: 60
      - name: everyone
        strategy: ringall
        members: [{{agent: "1001"}}, {{agent: "1002"}}]
        wrapup_seconds: 60
      - name: short             # waits 2 s, then rings agent 1002 directly
        members: [{{agent: "1001"}}]
        overflow_when_no_agents: false
        max_wait_seconds: 2
        failover: "agent:1002"
      - name: missed            # an agent who lets it ring is paused
        members: [{{agent: "1001"}}]
        overflow_when_no_agents: false
        ring_timeout_seconds: 2
        auto_pause_reason: missed
        max_wait_seconds: 5
        failover: "agent:1002"
"""


@pytest.fixture(scope="module")
def queue_stack() -> Iterator[RunningStack]:
    with stack_up("omnicc-it-queue-", "queue", QUEUE_CONFIG) as running:
        yield running


def wait_for_events(stack: RunningStack, since: str, names: set[str],
                    timeout: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(stack.redis(), "default", since=since)
        if names <= {e["event"] for e in events} or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_a_queued_call_reaches_the_ready_agent_who_then_wraps_up(
    queue_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    r = queue_stack.redis()
    # The FastAGI server pushed the config's queue and member at start.
    assert r.hgetall("{t:default}:queue:support:members") == {"1001": "0"}
    acd = AcdSync(r, "it-queue")
    with agent_online(queue_stack, sipp_dir, "1001") as phone:
        login = acd.login("default", "1001")
        assert login.ok, login
        assert r.hget(agent_hash("default", "1001"), "state") == "READY"
        caller = sipp.carrier_calls(sipp_dir, proxy=queue_stack.proxy, did="5550102",
                                    local_ip=TRUNK_IP, talk_ms=4000, name="queue-caller")
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(queue_stack, since,
                                 {"call_enqueued", "call_answered", "call_ended"})
        # The agent's phone answered and the caller's BYE ended the call: wrap-up.
        state = r.hget(agent_hash("default", "1001"), "state")
        assert state == "WRAPUP", [(e["event"], e.get("agent"), e.get("reason")) for e in events]

    assert caller.successful_calls == 1
    lines = phone.first_lines()
    assert lines[0].startswith("INVITE sip:1001@127.0.0.1:"), lines
    assert "SIP/2.0 200 OK" in lines and any(line.startswith("BYE ") for line in lines)

    by_name: dict[str, list[dict[str, str]]] = {}
    for event in events:
        by_name.setdefault(event["event"], []).append(event)
    routed = by_name["call_routed"]
    assert routed[0]["destination"] == "queue" and routed[0]["did"] == "5550102"
    (enqueued,) = by_name["call_enqueued"]
    assert enqueued["queue"] == "support" and enqueued["did"] == "5550102"
    (reserved,) = by_name["call_reserved"]
    assert reserved["agent"] == "1001"
    (answered,) = by_name["call_answered"]
    assert answered["agent"] == "1001" and answered["outcome"] == "answered"
    assert answered["call"] == enqueued["call"]
    # call_ended twice: the ACD's (the queued call, its talk time) and the hang-up
    # handler's record of the channel (call_end).
    (ended,) = [e for e in by_name["call_ended"] if e.get("call") == enqueued["call"]]
    assert ended["agent"] == "1001" and int(ended["talk_ms"]) > 1000
    (channel_end,) = [e for e in by_name["call_ended"] if "uniqueid" in e]
    assert channel_end["dialstatus"] == "ANSWER" and channel_end["agent"] == "1001"
    assert "call_abandoned" not in by_name


def test_a_caller_who_hangs_up_while_waiting_leaves_the_queue_at_once(
    queue_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    r = queue_stack.redis()
    caller = sipp.carrier_calls(sipp_dir, proxy=queue_stack.proxy, did="5550103",
                                local_ip=TRUNK_IP, talk_ms=2000, name="queue-abandon")
    assert caller.run(timeout=60) == 0, caller.trace()  # answered (music), then its BYE
    hung_up_at = time.time()
    events = wait_for_events(queue_stack, since, {"call_enqueued", "call_abandoned"})
    names = [e["event"] for e in events]
    assert "call_enqueued" in names and "call_abandoned" in names, names
    (abandoned,) = [e for e in events if e["event"] == "call_abandoned"]
    assert abandoned["queue"] == "backlog" and abandoned["reason"] == "caller_hangup"
    assert 1500 <= int(abandoned["wait_ms"]) < 4000
    # Abandoned when the HANGUP reached the waiting AGI session, not at a timeout.
    assert float(abandoned["ts"]) < hung_up_at + 1.0
    assert r.zcard("{t:default}:queue:backlog:waiting") == 0


RINGALL_ROUNDS = 3


def test_ringall_rings_both_agents_and_exactly_one_takes_the_call(
    queue_stack: RunningStack, sipp_dir: Path
) -> None:
    """Both phones answer the same call at once (200 ms after its INVITE), several times.
    Each agent's leg tells the ACD who answered (the extension it dialled); the ACD takes
    the first answer and releases the other agent at once. SIPp's traces say which phone
    was bridged (the one on the line until the caller hung up) and that the other got a
    BYE or CANCEL: it must be the ACD's winner."""
    r = queue_stack.redis()
    acd = AcdSync(r, "it-queue")
    for extension in ("1001", "1002"):
        acd.logout("default", extension, force=True)  # whatever earlier tests left
    winners = []
    with agent_online(queue_stack, sipp_dir, "1001", calls=RINGALL_ROUNDS) as phone_a, \
            agent_online(queue_stack, sipp_dir, "1002", calls=RINGALL_ROUNDS) as phone_b:
        phones = {"1001": phone_a, "1002": phone_b}
        for extension in ("1001", "1002"):
            assert acd.login("default", extension).ok
        for round_ in range(RINGALL_ROUNDS):
            since = now_id()
            caller = sipp.carrier_calls(sipp_dir, proxy=queue_stack.proxy, did="5550104",
                                        local_ip=TRUNK_IP, talk_ms=2500,
                                        caller=f"549110000{round_}",
                                        name=f"queue-ringall-{round_}").start()
            # Right after the answer, while the winner still talks: the loser is READY.
            events = wait_for_events(queue_stack, since, {"call_answered"})
            states = {ext: r.hget(agent_hash("default", ext), "state") for ext in phones}
            assert caller.wait(timeout=60) == 0, caller.trace()
            events = wait_for_events(queue_stack, since, {"call_answered", "call_ended"})
            reserved = sorted(e["agent"] for e in events if e["event"] == "call_reserved")
            assert reserved == ["1001", "1002"], events
            answered = [e for e in events if e["event"] == "call_answered"]
            assert len(answered) == 1, events
            winner = answered[0]["agent"]
            loser = "1002" if winner == "1001" else "1001"
            assert (states[winner], states[loser]) == ("ONCALL", "READY"), states
            (caller_leg,) = caller.traced_dialogs()
            assert bridged_agents(caller_leg, phones) == [winner]
            # The loser's leg was ended by omnicc; on a busy machine Asterisk may cancel it
            # before Kamailio's INVITE ever reached the phone (no leg at all).
            loser_legs = [leg for leg in phones[loser].traced_dialogs()
                          if leg.caller == caller_leg.caller]
            assert len(loser_legs) <= 1, loser_legs
            for loser_leg in loser_legs:
                assert loser_leg.ended_by in ("BYE received", "CANCEL received"), loser_leg
            # The everyone queue has 60 s of wrap-up: the winner is back for the next round.
            assert r.hget(agent_hash("default", winner), "state") == "WRAPUP"
            assert acd.pause("default", winner, "next-round").ok
            assert acd.unpause("default", winner).ok
            winners.append(winner)
        phone_a.stop()
        phone_b.stop()
    print("ringall winners:", winners)


def test_max_wait_sends_the_call_to_the_failover_destination(
    queue_stack: RunningStack, sipp_dir: Path
) -> None:
    r = queue_stack.redis()
    AcdSync(r, "it-queue").logout("default", "1001", force=True)  # nobody takes the call
    since = now_id()
    with agent_online(queue_stack, sipp_dir, "1002") as phone:
        caller = sipp.carrier_calls(sipp_dir, proxy=queue_stack.proxy, did="5550105",
                                    local_ip=TRUNK_IP, talk_ms=6000, name="queue-max-wait")
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(queue_stack, since, {"call_failed_over", "call_ended"})
    (failed_over,) = [e for e in events if e["event"] == "call_failed_over"]
    assert failed_over["queue"] == "short" and failed_over["reason"] == "max_wait"
    assert 2000 <= int(failed_over["wait_ms"]) < 3500
    (channel_end,) = [e for e in events if e["event"] == "call_ended" and "uniqueid" in e]
    assert channel_end["dialstatus"] == "ANSWER" and channel_end["agent"] == "1002"
    assert r.zcard("{t:default}:queue:short:waiting") == 0


@contextlib.contextmanager
def ringing_phone_online(stack: RunningStack, workdir: Path,
                         extension: str) -> Iterator[sipp.SippRun]:
    """An agent phone that rings and never answers (sipp-scenarios/agent_ring_cancelled.xml),
    registered through Kamailio; unregistered afterwards."""
    from omnicc.demo import free_udp_port

    port = free_udp_port("127.0.0.1")
    name = f"ringing-{port}"
    phone = sipp.SippRun(name, [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "agent_ring_cancelled.xml"),
        "-i", "127.0.0.1", "-p", str(port), "-m", "1", *sipp._common(name, workdir),
    ], workdir).start()
    time.sleep(0.3)
    register = {"proxy": stack.proxy, "extension": extension,
                "password": PASSWORDS[extension], "domain": DOMAIN,
                "local_ip": "127.0.0.1", "contact_port": port}
    try:
        reg = sipp.agent_register(workdir, **register, name=f"register-ringing-{extension}")
        assert reg.run(timeout=30) == 0, reg.trace()
        yield phone
    finally:
        phone.stop()
        sipp.agent_register(workdir, **register, expires=0,
                            name=f"unregister-ringing-{extension}").run(timeout=30)


def test_an_unanswered_ring_returns_the_call_and_pauses_the_agent(
    queue_stack: RunningStack, sipp_dir: Path
) -> None:
    r = queue_stack.redis()
    acd = AcdSync(r, "it-queue")
    for extension in ("1001", "1002"):
        acd.logout("default", extension, force=True)
    since = now_id()
    with ringing_phone_online(queue_stack, sipp_dir, "1001") as ringing, \
            agent_online(queue_stack, sipp_dir, "1002") as phone:
        assert acd.login("default", "1001").ok
        caller = sipp.carrier_calls(sipp_dir, proxy=queue_stack.proxy, did="5550106",
                                    local_ip=TRUNK_IP, talk_ms=9000, name="queue-missed")
        assert caller.run(timeout=60) == 0, caller.trace()
        assert ringing.wait(timeout=15) == 0, ringing.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(queue_stack, since, {"call_failed_over", "call_ended"})
        agent = r.hgetall(agent_hash("default", "1001"))
    names = [e["event"] for e in events]
    (released,) = [e for e in events if e["event"] == "call_released"]
    assert released["agent"] == "1001" and released["reason"] == "no_answer", names
    paused = [e for e in events if e["event"] == "agent_paused"]
    assert paused and paused[0]["reason"] == "missed", names
    assert (agent["state"], agent["reason"]) == ("PAUSED", "missed")
    (failed_over,) = [e for e in events if e["event"] == "call_failed_over"]
    assert failed_over["reason"] == "max_wait"
    (channel_end,) = [e for e in events if e["event"] == "call_ended" and "uniqueid" in e]
    assert channel_end["dialstatus"] == "ANSWER" and channel_end["agent"] == "1002"
