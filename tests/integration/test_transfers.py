"""Blind and attended transfers end to end: Kamailio, Asterisk, the FastAGI server, SIPp.

How each party is driven:
- the caller is SIPp (caller.xml, or caller_waits_for_bye.xml when omnicc ends the call),
  a carrier's call to DID 5550100, routed to agent 1001;
- the transfer target, agent 1002, is a SIPp phone (agent_answer.xml) registered through
  Kamailio with its digest;
- the transferring agent 1001 is tests/integration/raw_agent.py, raw SIP over UDP: it
  holds two dialogs and puts the second's Call-ID and tags in the first's REFER
  (Replaces), which a SIPp scenario cannot take from one dialog into another.

A blind transfer is a REFER in the caller's dialog; Asterisk sends the caller to the
omnicc-transfer context, whose transfer AGI checks the target in the call's own tenant.
An attended one: agent 1001 calls 1002 (a second INVITE, an agent call), then REFERs the
caller's dialog with Replaces naming that call; Asterisk bridges the caller with 1002.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.events import read_events
from omnicc.sipp import SippRun

from .conftest import DOMAIN, SERVICES_TEMPLATE, TRUNK_IP, RunningStack, free_ports, stack_up
from .raw_agent import RawAgent
from .test_first_call import PASSWORDS, agent_online, now_id

pytestmark = pytest.mark.integration

TRANSFER_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
      - {{name: carrier-out, address: 127.0.0.8, dial_host: 127.0.0.8, dial_port: {carrier}}}
    inbound_routes:
      - {{did: "5550100", destination: "agent:1001"}}
      - {{did: "5550103", destination: "queue:backlog"}}
    outbound_routes:
      - {{name: national, patterns: [_9NXXXXXX], strip: 1, prepend: "+34",
          trunks: [carrier-out]}}
    queues:
      - name: backlog           # nobody logs in: a call transferred here waits
        members: [{{agent: "1002"}}]
        overflow_when_no_agents: false
        max_wait_seconds: 60
  - name: other
    domain: other.{domain}
    agents:
      - {{extension: "2001", name: Eve, password: "it-pass-2001"}}
"""


# The agent transfers once the call is up: Asterisk bridges the caller with the agent's leg
# just after the agent's 200 OK, and answers a REFER that comes before with 400 (invalid).
BRIDGED = 1.0


@pytest.fixture(scope="module")
def transfer_stack() -> Iterator[RunningStack]:
    [carrier] = free_ports(1)
    with stack_up("omnicc-it-transfer-", "transfer", TRANSFER_CONFIG,
                  carrier=carrier) as running:
        yield running


@contextlib.contextmanager
def transferring_agent(stack: RunningStack) -> Iterator[RawAgent]:
    agent = RawAgent(("127.0.0.1", stack.config.services.kamailio.port), "1001",
                     PASSWORDS["1001"], DOMAIN)
    try:
        assert agent.register() == 200
        yield agent
    finally:
        with contextlib.suppress(Exception):
            agent.register(expires=0)
        agent.close()


def transfers_since(stack: RunningStack, since: str, want: int = 1,
                    timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in read_events(stack.redis(), "default", since=since)
                  if e["event"] == "call_transferred"]
        if len(events) >= want or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def invites(phone: SippRun) -> list[str]:
    return [line for line in phone.first_lines() if line.startswith("INVITE ")]


def test_blind_transfer_to_another_agent(transfer_stack: RunningStack,
                                         sipp_dir: Path) -> None:
    since = now_id()
    with transferring_agent(transfer_stack) as alice, \
            agent_online(transfer_stack, sipp_dir, "1002") as bob:
        caller = sipp.carrier_calls(sipp_dir, proxy=transfer_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=5000, name="blind-caller")
        caller.start()
        call = alice.answer()
        time.sleep(BRIDGED)
        reply = alice.refer(call, f"<sip:1002@{DOMAIN}>")
        assert reply.status == 202, reply.first_line
        # Asterisk reports the transfer's outcome in the REFER's subscription (sipfrag);
        # then the transferring agent hangs up its leg.
        assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
        alice.finish(call)
        # The caller talks with 1002 until it hangs up; 1002 gets the BYE.
        assert caller.wait(timeout=30) == 0, caller.trace()
        assert bob.wait(timeout=15) == 0, bob.trace()
    assert caller.successful_calls == 1
    assert len(invites(bob)) == 1 and invites(bob)[0].startswith("INVITE sip:1002@")
    assert any(line.startswith("BYE ") for line in bob.first_lines())

    [transfer] = transfers_since(transfer_stack, since)
    assert transfer["kind"] == "blind"
    assert transfer["outcome"] == "routed"
    assert transfer["from_agent"] == "1001"
    assert transfer["target"] == "1002"
    assert transfer["destination"] == "agent" and transfer["agent"] == "1002"
    assert transfer["transferer"].startswith("PJSIP/kamailio-")


def test_blind_transfer_to_a_queue_number(transfer_stack: RunningStack,
                                          sipp_dir: Path) -> None:
    """The target is a DID of the tenant's inbound routes: the caller goes where the route
    says, here a queue where it waits (its agent is not logged in)."""
    since = now_id()
    with transferring_agent(transfer_stack) as alice:
        caller = sipp.carrier_calls(sipp_dir, proxy=transfer_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=4000, name="queue-caller")
        caller.start()
        call = alice.answer()
        time.sleep(BRIDGED)
        assert alice.refer(call, f"<sip:5550103@{DOMAIN}>").status == 202
        assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
        alice.finish(call)
        assert caller.wait(timeout=30) == 0, caller.trace()
    [transfer] = transfers_since(transfer_stack, since)
    assert (transfer["outcome"], transfer["destination"], transfer["queue"]) == \
        ("routed", "queue", "backlog")
    # The queued call was abandoned when the caller hung up.
    events = read_events(transfer_stack.redis(), "default", since=since)
    assert any(e["event"].startswith("queue") or e.get("queue") == "backlog"
               for e in events if e["event"] != "call_transferred"), events


def test_blind_transfer_to_an_outside_number_goes_out_by_the_outbound_routes(
    transfer_stack: RunningStack, sipp_dir: Path
) -> None:
    """95551234: route national (strip 1, prepend +34) to the carrier, a SIPp UAS that
    answers; the caller talks to it and hangs up."""
    since = now_id()
    trunk = transfer_stack.config.tenants[0].trunk("carrier-out")
    assert trunk is not None
    carrier = SippRun("carrier-out", [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "carrier_answers.xml"),
        "-i", "127.0.0.8", "-p", str(trunk.dial_port), "-m", "1",
        *sipp._common("carrier-out", sipp_dir)], sipp_dir).start()
    try:
        with transferring_agent(transfer_stack) as alice:
            caller = sipp.carrier_calls(sipp_dir, proxy=transfer_stack.proxy,
                                        did="5550100", local_ip=TRUNK_IP, talk_ms=5000,
                                        name="outside-caller")
            caller.start()
            call = alice.answer()
            time.sleep(BRIDGED)
            assert alice.refer(call, f"<sip:95551234@{DOMAIN}>").status == 202
            assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
            alice.finish(call)
            assert caller.wait(timeout=30) == 0, caller.trace()
            assert carrier.wait(timeout=15) == 0, carrier.trace()
    finally:
        carrier.stop()
    assert invites(carrier)[0].startswith("INVITE sip:+345551234@127.0.0.8")
    [transfer] = transfers_since(transfer_stack, since)
    assert (transfer["outcome"], transfer["destination"]) == ("routed", "outbound")
    events = read_events(transfer_stack.redis(), "default", since=since)
    [routed] = [e for e in events if e["event"] == "outbound_routed"]
    assert (routed["route"], routed["number"], routed["agent"]) == \
        ("national", "+345551234", "1001")


@pytest.mark.parametrize("target", [
    "1002&PJSIP/x%40evil.example",  # dialplan injection: would ring 1002 and evil
    "2001",                         # an agent of another tenant
    "1,2",                          # another extension and priority, were it a Goto
])
def test_refused_transfer_target_dials_nothing(transfer_stack: RunningStack, sipp_dir: Path,
                                               target: str) -> None:
    """The Refer-To's user part reaches only the transfer AGI, which refuses it: the caller
    hears the error beep and goes back to agent 1001 (a new call to its phone, which it
    answers, then hangs up); agent 1002, online, is never rung."""
    since = now_id()
    with transferring_agent(transfer_stack) as alice, \
            agent_online(transfer_stack, sipp_dir, "1002") as bob:
        caller = sipp.carrier_calls(sipp_dir, proxy=transfer_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, scenario="caller_waits_for_bye.xml",
                                    name=f"refused-caller-{len(target)}")
        caller.start()
        call = alice.answer()
        time.sleep(BRIDGED)
        reply = alice.refer(call, f"<sip:{target}@{DOMAIN}>")
        assert reply.status in (202, 400, 403, 404), reply.first_line
        if reply.status == 202:
            alice.wait_for_outcome(call)
            alice.finish(call)
            returned = alice.answer()  # the caller, back after the error beep
            assert returned.call_id != call.call_id
            alice.hang_up(returned)
            assert caller.wait(timeout=30) == 0, caller.trace()
            [transfer] = transfers_since(transfer_stack, since)
            assert transfer["outcome"] == "refused", transfer
            assert (transfer["from_agent"], transfer["returned_to"]) == ("1001", "1001")
        else:
            alice.hang_up(call)
            assert caller.wait(timeout=30) == 0, caller.trace()
        time.sleep(0.5)
    assert invites(bob) == []
    events = read_events(transfer_stack.redis(), "default", since=since)
    assert not [e for e in events if e["event"] == "call_transferred"
                and e["outcome"] != "refused"], events


def test_attended_transfer_bridges_the_caller_with_the_consulted_agent(
    transfer_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    with transferring_agent(transfer_stack) as alice, \
            agent_online(transfer_stack, sipp_dir, "1002") as bob:
        caller = sipp.carrier_calls(sipp_dir, proxy=transfer_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=7000, name="attended-caller")
        caller.start()
        call = alice.answer()
        time.sleep(BRIDGED)
        consultation = alice.call("1002")
        reply = alice.refer(call, alice.replaces(consultation))
        assert reply.status == 202, reply.first_line
        # Both of the agent's legs are hung up by Asterisk once caller and 1002 are bridged.
        assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
        alice.finish(call)
        alice.finish(consultation)
        assert caller.wait(timeout=30) == 0, caller.trace()
        assert bob.wait(timeout=15) == 0, bob.trace()
    assert caller.successful_calls == 1
    # 1002 was called once (the consultation) and hung up when the caller did.
    assert len(invites(bob)) == 1
    assert any(line.startswith("BYE ") for line in bob.first_lines())
    # Logged when 1002's leg hung up: the caller's call (the uniqueid its routing had),
    # transferred by 1001 to 1002 after consulting it.
    [transfer] = transfers_since(transfer_stack, since)
    [routed] = [e for e in read_events(transfer_stack.redis(), "default", since=since)
                if e["event"] == "call_routed"]
    assert transfer["kind"] == "attended" and transfer["outcome"] == "bridged"
    assert (transfer["from_agent"], transfer["target"]) == ("1001", "1002")
    assert transfer["uniqueid"] == routed["uniqueid"]
    assert transfer["consultation"] and transfer["consultation"] != routed["uniqueid"]
