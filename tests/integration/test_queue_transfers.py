"""A blind transfer of a queue call to an outside number, end to end: Kamailio, Asterisk,
the FastAGI server, the ACD in Redis, SIPp.

The caller (SIPp, a carrier's call to DID 5550110) waits in queue `sales`; agent 1001
(tests/integration/raw_agent.py, logged in to the ACD) answers and REFERs the call to
95551234; route `national` sends +345551234 to the outside carrier (a SIPp UAS on
127.0.0.122). The transfer AGI knows 1001 as the transferring agent from the ACD's record
of the queue call (the call's OMNICC_QCALL), not from anything the phone sent; the queue
call ends in the ACD at the transfer, so 1001 goes into wrap-up while the caller talks on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.events import read_events
from omnicc.keys import agent_hash
from omnicc.sipp import SippRun

from .conftest import DOMAIN, SERVICES_TEMPLATE, TRUNK_IP, RunningStack, free_ports, stack_up
from .queue_agents import wait_until
from .test_first_call import now_id
from .test_transfers import BRIDGED, invites, transferring_agent, transfers_since

pytestmark = pytest.mark.integration

OUTSIDE_CARRIER_IP = "127.0.0.122"

CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
      - {{name: carrier-out, address: 127.0.0.122, dial_host: 127.0.0.122,
          dial_port: {carrier}}}
    inbound_routes:
      - {{did: "5550110", destination: "queue:sales"}}
    outbound_routes:
      - {{name: national, patterns: [_9NXXXXXX], strip: 1, prepend: "+34",
          trunks: [carrier-out]}}
    queues:
      - name: sales
        members: [{{agent: "1001"}}]
        wrapup_seconds: 60
        max_wait_seconds: 60
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    [carrier] = free_ports(1)
    with stack_up("omnicc-it-qtransfer-", "qtransfer", CONFIG, carrier=carrier) as running:
        yield running


def test_a_queue_call_transferred_to_an_outside_number_goes_out_as_the_agents_call(
    stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    r = stack.redis()
    trunk = stack.config.tenants[0].trunk("carrier-out")
    assert trunk is not None
    carrier = SippRun("carrier-out", [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "carrier_answers.xml"),
        "-i", OUTSIDE_CARRIER_IP, "-p", str(trunk.dial_port), "-m", "1",
        *sipp._common("carrier-out", sipp_dir)], sipp_dir).start()
    try:
        with transferring_agent(stack) as alice:
            assert AcdSync(r, "it-qtransfer").login("default", "1001").ok
            caller = sipp.carrier_calls(sipp_dir, proxy=stack.proxy, did="5550110",
                                        local_ip=TRUNK_IP, talk_ms=5000, name="queue-caller")
            caller.start()
            call = alice.answer()
            # The agent's 200 OK is confirmed in the ACD (queue_answer) before the bridge.
            assert wait_until(
                lambda: r.hget(agent_hash("default", "1001"), "state") == "ONCALL", 10)
            time.sleep(BRIDGED)
            assert alice.refer(call, f"<sip:95551234@{DOMAIN}>").status == 202
            assert alice.wait_for_outcome(call) == "SIP/2.0 200 OK"
            alice.finish(call)
            # The queue call ended at the transfer: 1001 wraps up while the caller talks.
            assert wait_until(
                lambda: r.hget(agent_hash("default", "1001"), "state") == "WRAPUP", 10)
            assert caller.wait(timeout=30) == 0, caller.trace()
            assert carrier.wait(timeout=15) == 0, carrier.trace()
    finally:
        carrier.stop()
    (invite,) = invites(carrier)
    assert invite.startswith("INVITE sip:+345551234@127.0.0.122")
    (transfer,) = transfers_since(stack, since)
    assert (transfer["kind"], transfer["outcome"], transfer["destination"]) == (
        "blind", "routed", "outbound")
    assert (transfer["from_agent"], transfer["from_queue"]) == ("1001", "sales")
    events = read_events(r, "default", since=since)
    (routed,) = [e for e in events if e["event"] == "outbound_routed"]
    assert (routed["agent"], routed["number"]) == ("1001", "+345551234")


def test_a_refused_transfer_of_a_queue_call_comes_back_to_the_agent(
    stack: RunningStack, sipp_dir: Path
) -> None:
    """5551234 matches no outbound route: the transfer is refused, nothing is dialled, the
    caller hears the error beep and is put back to 1001 (a new call to its phone), still
    the queue call's agent in the ACD; when 1001 hangs up, it wraps up."""
    since = now_id()
    r = stack.redis()
    with transferring_agent(stack) as alice:
        acd = AcdSync(r, "it-qtransfer")
        # Ready again (the test before may have left 1001 in its 60 s of wrap-up).
        acd.logout("default", "1001", force=True)
        assert acd.login("default", "1001").ok
        assert r.hget(agent_hash("default", "1001"), "state") == "READY"
        caller = sipp.carrier_calls(sipp_dir, proxy=stack.proxy, did="5550110",
                                    local_ip=TRUNK_IP, scenario="caller_waits_for_bye.xml",
                                    name="refused-queue-caller")
        caller.start()
        call = alice.answer()
        assert wait_until(
            lambda: r.hget(agent_hash("default", "1001"), "state") == "ONCALL", 10)
        time.sleep(BRIDGED)
        assert alice.refer(call, f"<sip:5551234@{DOMAIN}>").status == 202
        alice.wait_for_outcome(call)
        alice.finish(call)
        returned = alice.answer()
        assert returned.call_id != call.call_id
        assert r.hget(agent_hash("default", "1001"), "state") == "ONCALL"
        alice.hang_up(returned)
        assert caller.wait(timeout=30) == 0, caller.trace()
        assert wait_until(
            lambda: r.hget(agent_hash("default", "1001"), "state") == "WRAPUP", 10)
    (transfer,) = transfers_since(stack, since)
    assert (transfer["outcome"], transfer["from_agent"], transfer["returned_to"]) == (
        "refused", "1001", "1001")
    events = read_events(r, "default", since=since)
    (refused,) = [e for e in events if e["event"] == "outbound_refused"]
    assert (refused["refusal"], refused["agent"]) == ("no_route", "1001")
    assert not [e for e in events if e["event"] == "outbound_trunk_dialled"]
