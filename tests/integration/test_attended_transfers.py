"""Attended transfers to an outside number and to a queue, and of a queue call, end to end:
Kamailio, Asterisk, the FastAGI server, the ACD in Redis, SIPp.

The parties (the machinery of tests/integration/test_transfers.py):
- the caller is SIPp, a carrier's call to DID 5550100 (routed to agent 1001) or 5550110
  (queue `sales`, whose member is 1001);
- the transferring agent 1001 is tests/integration/raw_agent.py: it answers the caller,
  places the consultation call (a second INVITE through Kamailio, an agent call), then
  REFERs the caller's dialog with Replaces naming the consultation; Asterisk bridges the
  caller with the consultation's far end and hangs up both of 1001's legs;
- the far end is the outside carrier (a SIPp UAS on 127.0.0.140, reached by route
  `national`: 9 + 7 digits, strip 1, prepend +34), or agent 1002 (a SIPp phone) answering
  the consultation as a member of queue `support` (DID 5550120) or dialled directly.

`call_transferred kind=attended` is logged when the consultation's far-end leg hangs up
bridged to the caller's call; a queue call's ACD record ends at the transfer (1001 wraps
up) instead of when the caller hangs up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.events import read_events
from omnicc.keys import agent_hash, trunk_channels
from omnicc.sipp import SippRun

from .conftest import (
    DOMAIN,
    SERVICES_TEMPLATE,
    TRUNK_IP,
    RunningStack,
    free_ports,
    stack_up,
)
from .queue_agents import wait_until
from .raw_agent import RawAgent
from .test_first_call import PASSWORDS, agent_online, now_id
from .test_transfers import BRIDGED, invites, transferring_agent, transfers_since

pytestmark = pytest.mark.integration

OUTSIDE_CARRIER_IP = "127.0.0.140"

CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
      - {{name: carrier-out, address: 127.0.0.140, dial_host: 127.0.0.140,
          dial_port: {carrier}, max_channels: 2}}
    inbound_routes:
      - {{did: "5550100", destination: "agent:1001"}}
      - {{did: "5550110", destination: "queue:sales"}}
      - {{did: "5550120", destination: "queue:support"}}
    outbound_routes:
      - {{name: national, patterns: [_9NXXXXXX], strip: 1, prepend: "+34",
          trunks: [carrier-out]}}
    queues:
      - name: sales
        members: [{{agent: "1001"}}]
        wrapup_seconds: 60
        max_wait_seconds: 60
      - name: support
        members: [{{agent: "1002"}}]
        wrapup_seconds: 60
        max_wait_seconds: 60
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    [carrier] = free_ports(1)
    with stack_up("omnicc-it-attended-", "attended", CONFIG, carrier=carrier) as running:
        yield running


def outside_carrier(stack: RunningStack, sipp_dir: Path) -> SippRun:
    """The carrier route `national` dials: answers one call, waits for its BYE."""
    trunk = stack.config.tenants[0].trunk("carrier-out")
    assert trunk is not None
    return SippRun("carrier-out", [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "carrier_answers.xml"),
        "-i", OUTSIDE_CARRIER_IP, "-p", str(trunk.dial_port), "-m", "1",
        *sipp._common("carrier-out", sipp_dir)], sipp_dir).start()


def agent_state(stack: RunningStack, extension: str) -> str | None:
    return stack.redis().hget(agent_hash("default", extension), "state")


def ready(stack: RunningStack, *extensions: str) -> AcdSync:
    """`extensions` (registered) logged in to the ACD and READY (a test before may have
    left one in its 60 s of wrap-up)."""
    acd = AcdSync(stack.redis(), "it-attended")
    for extension in extensions:
        acd.logout("default", extension, force=True)
        result = acd.login("default", extension)
        assert result.ok, result
        assert agent_state(stack, extension) == "READY"
    return acd


def test_an_attended_transfer_to_an_outside_number_bridges_the_caller_with_the_carrier(
    stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    r = stack.redis()
    channels = trunk_channels("default", "carrier-out")

    def ended(uniqueid: str) -> bool:
        return any(e["event"] == "call_ended" and e.get("uniqueid") == uniqueid
                   for e in read_events(r, "default", since=since))

    carrier = outside_carrier(stack, sipp_dir)
    try:
        with transferring_agent(stack) as alice:
            caller = sipp.carrier_calls(sipp_dir, proxy=stack.proxy, did="5550100",
                                        local_ip=TRUNK_IP, talk_ms=7000,
                                        name="outside-caller")
            caller.start()
            call = alice.answer()
            time.sleep(BRIDGED)
            consultation = alice.call("95551234")  # answered by the carrier
            time.sleep(BRIDGED)
            reply = alice.refer(call, alice.replaces(consultation))
            assert reply.status == 202, reply.first_line
            assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
            alice.finish(call)
            alice.finish(consultation)
            (outbound,) = [e for e in read_events(r, "default", since=since)
                           if e["event"] == "outbound_routed"]
            # 1001's consultation channel has hung up (its hang-up handlers ran, the last
            # one logs call_ended): the trunk's channel, still carrying the caller, stays
            # counted against max_channels under that channel's id.
            assert wait_until(lambda: ended(outbound["uniqueid"]), 10)
            assert r.zscore(channels, outbound["uniqueid"]) is not None
            # The caller talks on with the carrier, then hangs up (its BYE, not one from
            # Asterisk: caller.xml fails on a BYE it did not send); the carrier gets its.
            assert caller.wait(timeout=30) == 0, caller.trace()
            assert carrier.wait(timeout=15) == 0, carrier.trace()
    finally:
        carrier.stop()
    # The trunk's leg gave its channel back when it ended.
    assert wait_until(lambda: r.zscore(channels, outbound["uniqueid"]) is None, 10)
    (invite,) = invites(carrier)
    assert invite.startswith("INVITE sip:+345551234@127.0.0.140")
    assert any(line.startswith("BYE ") for line in carrier.first_lines())

    (transfer,) = transfers_since(stack, since)
    events = read_events(r, "default", since=since)
    (routed,) = [e for e in events if e["event"] == "call_routed"]
    assert (transfer["kind"], transfer["outcome"], transfer["destination"]) == (
        "attended", "bridged", "outbound")
    assert (transfer["from_agent"], transfer["target"]) == ("1001", "95551234")
    assert transfer["uniqueid"] == routed["uniqueid"]
    # The consultation is the agent's outbound call.
    assert transfer["consultation"] == outbound["uniqueid"] != routed["uniqueid"]
    assert (transfer["route"], transfer["number"]) == ("national", "+345551234")


def test_an_outbound_call_transferred_to_a_consulted_agent_keeps_its_trunk_channel(
    stack: RunningStack, sipp_dir: Path
) -> None:
    """The agent's call to the customer is the older call; its consultation with agent
    1002 (a supervisor) the newer; 1001 transfers the customer to 1002. Asterisk gives the
    merged bridge the older linkedid, so the customer's trunk leg keeps its own: the trunk
    channel must stay counted while the customer talks with 1002 (1001's channel has hung
    up by then), and be given back when the trunk leg ends."""
    since = now_id()
    r = stack.redis()
    channels = trunk_channels("default", "carrier-out")

    def events() -> list[dict]:
        return read_events(r, "default", since=since)

    carrier = outside_carrier(stack, sipp_dir)
    supervisor = RawAgent(("127.0.0.1", stack.config.services.kamailio.port), "1002",
                          PASSWORDS["1002"], DOMAIN)
    try:
        assert supervisor.register() == 200
        with transferring_agent(stack) as alice:
            customer = alice.call("95551234")  # answered by the carrier: the older call
            (outbound,) = [e for e in events() if e["event"] == "outbound_routed"]
            assert r.zscore(channels, outbound["uniqueid"]) is not None
            time.sleep(BRIDGED)
            with ThreadPoolExecutor(1) as pool:
                answering = pool.submit(supervisor.answer, 20.0)
                consultation = alice.call("1002")
                supervisor_leg = answering.result(timeout=25)
            time.sleep(BRIDGED)
            reply = alice.refer(customer, alice.replaces(consultation))
            assert reply.status == 202, reply.first_line
            assert alice.wait_for_outcome(customer) == "SIP/2.0 200 OK"
            alice.finish(customer)
            alice.finish(consultation)

            def ended(uniqueid: str) -> bool:
                return any(e["event"] == "call_ended" and e.get("uniqueid") == uniqueid
                           for e in events())

            # 1001's channel to the customer has hung up (its hang-up handlers ran, the
            # last one logs call_ended); the customer talks on with 1002 over the trunk.
            assert wait_until(lambda: ended(outbound["uniqueid"]), 10)
            assert r.zscore(channels, outbound["uniqueid"]) is not None
            assert carrier.proc is not None and carrier.proc.poll() is None
            # 1002 hangs up: Asterisk ends the customer's trunk leg (BYE to the carrier).
            supervisor.hang_up(supervisor_leg)
            assert carrier.wait(timeout=15) == 0, carrier.trace()
    finally:
        carrier.stop()
        with contextlib.suppress(Exception):
            supervisor.register(expires=0)
        supervisor.close()
    # The trunk's leg gave its channel back when it ended.
    assert wait_until(lambda: r.zscore(channels, outbound["uniqueid"]) is None, 10)
    assert r.zcard(channels) == 0
    (invite,) = invites(carrier)
    assert invite.startswith("INVITE sip:+345551234@127.0.0.140")
    assert any(line.startswith("BYE ") for line in carrier.first_lines())
    # Logged when 1002's leg ended: the customer's call (1001's outbound call, the older
    # linkedid) transferred to 1002 after consulting it.
    (transfer,) = transfers_since(stack, since)
    (consulted,) = [e for e in events() if e["event"] == "agent_call_routed"]
    assert (transfer["kind"], transfer["outcome"], transfer["destination"]) == (
        "attended", "bridged", "agent")
    assert (transfer["from_agent"], transfer["target"], transfer["agent"]) == (
        "1001", "1002", "1002")
    assert transfer["uniqueid"] == outbound["uniqueid"]
    assert transfer["consultation"] == consulted["uniqueid"] != outbound["uniqueid"]


def test_a_queue_call_transferred_attended_leaves_the_agent_in_wrapup(
    stack: RunningStack, sipp_dir: Path
) -> None:
    """The caller waits in `sales`; 1001 answers, consults agent 1002 and transfers: the
    ACD call ends at the transfer (reason `transferred`), and 1001 wraps up while the
    caller still talks with 1002."""
    since = now_id()
    with transferring_agent(stack) as alice, \
            agent_online(stack, sipp_dir, "1002") as bob:
        ready(stack, "1001")
        caller = sipp.carrier_calls(sipp_dir, proxy=stack.proxy, did="5550110",
                                    local_ip=TRUNK_IP, talk_ms=15000, name="queue-caller")
        caller.start()
        call = alice.answer()
        assert wait_until(lambda: agent_state(stack, "1001") == "ONCALL", 10)
        time.sleep(BRIDGED)
        consultation = alice.call("1002")
        reply = alice.refer(call, alice.replaces(consultation))
        assert reply.status == 202, reply.first_line
        assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
        alice.finish(call)
        alice.finish(consultation)
        assert wait_until(lambda: agent_state(stack, "1001") == "WRAPUP", 10)
        # Wrapping up while the caller talks on (it hangs up after its 15 s).
        assert caller.proc is not None and caller.proc.poll() is None
        assert caller.wait(timeout=30) == 0, caller.trace()
        assert bob.wait(timeout=15) == 0, bob.trace()
    events = read_events(stack.redis(), "default", since=since)
    (ended,) = [e for e in events if e["event"] == "call_ended" and e.get("queue") == "sales"]
    assert (ended["agent"], ended["reason"]) == ("1001", "transferred")
    (transfer,) = transfers_since(stack, since)
    assert (transfer["kind"], transfer["outcome"], transfer["destination"]) == (
        "attended", "bridged", "agent")
    assert (transfer["from_agent"], transfer["target"], transfer["agent"]) == (
        "1001", "1002", "1002")


def test_an_attended_transfer_to_a_queue_bridges_the_caller_with_its_agent(
    stack: RunningStack, sipp_dir: Path
) -> None:
    """1001 dials 5550120, the DID of queue `support`: its call joins the queue, 1002 answers
    it; 1001 transfers the caller there. 1002 stays ONCALL with the caller (the consultation's
    ACD call is not ended by 1001's leg going), and wraps up when the caller hangs up."""
    since = now_id()
    with transferring_agent(stack) as alice, \
            agent_online(stack, sipp_dir, "1002") as bob:
        ready(stack, "1002")
        caller = sipp.carrier_calls(sipp_dir, proxy=stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=10000, name="to-queue-caller")
        caller.start()
        call = alice.answer()
        time.sleep(BRIDGED)
        consultation = alice.call("5550120")  # answered by the queue, then 1002 answers
        assert wait_until(lambda: agent_state(stack, "1002") == "ONCALL", 10)
        time.sleep(BRIDGED)
        reply = alice.refer(call, alice.replaces(consultation))
        assert reply.status == 202, reply.first_line
        assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
        alice.finish(call)
        alice.finish(consultation)

        def consultation_ended() -> bool:
            return any(e["event"] == "call_ended" and e.get("uniqueid") == joined["uniqueid"]
                       for e in read_events(stack.redis(), "default", since=since))

        (joined,) = [e for e in read_events(stack.redis(), "default", since=since)
                     if e["event"] == "agent_call_routed"]
        # 1001's consultation channel has hung up (its hang-up handlers ran): 1002 is still
        # on the call, now with the caller.
        assert wait_until(consultation_ended, 10)
        assert agent_state(stack, "1002") == "ONCALL"
        assert caller.wait(timeout=30) == 0, caller.trace()
        assert bob.wait(timeout=15) == 0, bob.trace()
        assert wait_until(lambda: agent_state(stack, "1002") == "WRAPUP", 10)
    assert len(invites(bob)) == 1
    assert (joined["destination"], joined["queue"], joined["from_agent"]) == (
        "queue", "support", "1001")
    events = read_events(stack.redis(), "default", since=since)
    (routed,) = [e for e in events if e["event"] == "call_routed"]
    (transfer,) = transfers_since(stack, since)
    assert (transfer["kind"], transfer["outcome"], transfer["destination"]) == (
        "attended", "bridged", "queue")
    assert (transfer["from_agent"], transfer["target"], transfer["queue"],
            transfer["agent"]) == ("1001", "5550120", "support", "1002")
    assert transfer["uniqueid"] == routed["uniqueid"]
    assert transfer["consultation"] == joined["uniqueid"]
    (ended,) = [e for e in events if e["event"] == "call_ended" and e.get("queue") == "support"]
    assert ended["agent"] == "1002"
