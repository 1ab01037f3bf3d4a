"""Forwarded calls end to end, through real Kamailio, Asterisk, the FastAGI server, Redis
and SIPp: a carrier calls a DID whose destination sends the call out again, and the call
leaves through another carrier, or reaches the company PBX, with the caller ID the trunk's
policy says.

carrier (SIPp, 127.0.0.100) -> Kamailio -> Asterisk -> AGI inbound_route (external: or
pbx:) -> AGI forward_call (route, first trunk, caller ID) -> Dial PJSIP/<number>@trunk...
-> carrier A (SIPp UAS, 127.0.0.101) / carrier B (127.0.0.102) / the PBX (127.0.0.103)
-> AGI outbound_result after a failed Dial (next trunk, its own caller ID).

What each far end receives is read from its SIPp trace: the Request-URI (the number), the
From (the caller ID) and the identity headers its trunk asks for (P-Asserted-Identity,
Remote-Party-ID). Its own stack: the config below.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.sipp import SippRun, TracedMessage

from .conftest import SERVICES_TEMPLATE, RunningStack, free_ports, stack_up
from .test_first_call import final_status, now_id
from .test_outbound_calls import CARRIER_SCENARIOS, events_until, named

pytestmark = pytest.mark.integration

CALLER_IP = "127.0.0.100"     # the carrier that brings the calls in
CARRIER_A_IP = "127.0.0.101"
CARRIER_B_IP = "127.0.0.102"
PBX_IP = "127.0.0.103"
CALLER = "5491155550000"      # the outside caller's number (caller.xml's From)

FORWARD_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
    trunks:
      - {{name: inbound, address: 127.0.0.100}}
      - name: carrier-a
        address: 127.0.0.101
        dial_host: 127.0.0.101
        dial_port: {carrier_a}
        caller_id: {{number: "+15550001", send_pai: true}}
      - name: carrier-b
        address: 127.0.0.102
        dial_host: 127.0.0.102
        dial_port: {carrier_b}
        caller_id: {{number: "+15550002", send_rpid: true}}
      - {{name: hq, kind: pbx, address: 127.0.0.103, dial_host: 127.0.0.103,
          dial_port: {pbx}}}
    outbound_routes:
      - {{name: us, patterns: ["_+1NXXNXXXXXX"], trunks: [carrier-a, carrier-b]}}
    queues:
      # Nobody logs in: a call overflows at once, out again with the queue's number.
      - {{name: sales, members: [{{agent: "1001"}}], caller_id: "+15550999",
          overflow: "external:+15552220003"}}
    time_groups:
      - {{name: always, timezone: UTC, rules: [{{weekdays: mon-sun}}]}}
    time_conditions:
      - {{name: open, time_group: always, matched: "external:+15552220002", unmatched: busy}}
    inbound_routes:
      - {{did: "5550700", destination: "external:+15552220001"}}
      - {{did: "5550701", destination: "pbx:2001"}}
      - {{did: "5550702", destination: "time_condition:open"}}
      - {{did: "5550703", destination: "queue:sales"}}
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    [carrier_a] = free_ports(1, CARRIER_A_IP)
    [carrier_b] = free_ports(1, CARRIER_B_IP)
    [pbx] = free_ports(1, PBX_IP)
    with stack_up("omnicc-it-forward-", "forward", FORWARD_CONFIG, carrier_a=carrier_a,
                  carrier_b=carrier_b, pbx=pbx) as running:
        yield running


def far_end(stack: RunningStack, workdir: Path, trunk: str, code: int = 200) -> SippRun:
    """A SIPp UAS where trunk `trunk` dials, answering its one call with `code`."""
    found = stack.config.tenants[0].trunk(trunk)
    assert found is not None and found.dial_host is not None
    return SippRun(trunk, [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / CARRIER_SCENARIOS[code]),
        "-i", found.dial_host, "-p", str(found.dial_port), "-m", "1",
        *sipp._common(trunk, workdir),
    ], workdir).start()


def carrier_calls(stack: RunningStack, workdir: Path, did: str,
                  talk_ms: int = 1500) -> SippRun:
    """The inbound carrier calls `did` from CALLER, talks `talk_ms` once answered, hangs up."""
    return sipp.carrier_calls(workdir, proxy=stack.proxy, did=did, local_ip=CALLER_IP,
                              talk_ms=talk_ms, caller=CALLER, name=f"caller-{did}")


def received_invite(run: SippRun) -> TracedMessage:
    (invite,) = [m for m in run.traced_messages()
                 if m.is_request and not m.sent and m.first_line.startswith("INVITE ")]
    return invite


def call_through(stack: RunningStack, workdir: Path, did: str,
                 far_ends: list[SippRun]) -> list[dict[str, str]]:
    """The carrier calls `did`, the call is answered at the far end, the caller hangs up;
    the call's events once it ended."""
    since = now_id()
    try:
        caller = carrier_calls(stack, workdir, did)
        assert caller.run(timeout=60) == 0, caller.trace()
        for run in far_ends:
            assert run.wait(timeout=20) == 0, run.trace()
    finally:
        for run in far_ends:
            run.stop()
    assert final_status(caller) == 200
    return events_until(stack, since, "call_ended")


def test_a_did_to_an_external_number_leaves_by_the_route_with_the_trunks_caller_id(
        stack: RunningStack, sipp_dir: Path) -> None:
    carrier_a = far_end(stack, sipp_dir, "carrier-a")
    events = call_through(stack, sipp_dir, "5550700", [carrier_a])

    invite = received_invite(carrier_a)
    assert invite.first_line.startswith("INVITE sip:+15552220001@"), invite.first_line
    # carrier-a replaces a forwarded caller's number by its own and asks for PAI.
    assert "<sip:+15550001@" in invite.header("from"), invite.header("from")
    assert "<sip:+15550001@" in invite.header("p-asserted-identity"), invite.headers
    assert CALLER not in invite.header("from")
    assert invite.header("remote-party-id") == ""

    (routed,) = named(events, "call_routed")
    assert (routed["did"], routed["destination"], routed["forward"]) == (
        "5550700", "external", "external:+15552220001")
    (out,) = named(events, "outbound_routed")
    assert (out["route"], out["number"], out["agent"], out["forward"]) == (
        "us", "+15552220001", "", "external:+15552220001")
    (dialled,) = named(events, "outbound_trunk_dialled")
    assert (dialled["trunk"], dialled["caller_id"], dialled["caller_id_source"]) == (
        "carrier-a", "+15550001", "trunk")
    assert named(events, "call_ended")[0]["dialstatus"] == "ANSWER"


def test_a_forwarded_call_fails_over_from_503_with_the_next_trunks_caller_id(
        stack: RunningStack, sipp_dir: Path) -> None:
    refusing = far_end(stack, sipp_dir, "carrier-a", code=503)
    answering = far_end(stack, sipp_dir, "carrier-b")
    events = call_through(stack, sipp_dir, "5550700", [refusing, answering])

    first, second = received_invite(refusing), received_invite(answering)
    assert any(line.startswith("SIP/2.0 503") for line in refusing.first_lines())
    for invite in (first, second):
        assert invite.first_line.startswith("INVITE sip:+15552220001@"), invite.first_line
    assert "<sip:+15550001@" in first.header("from")
    assert "<sip:+15550001@" in first.header("p-asserted-identity")
    # carrier-b: its own number, and Remote-Party-ID instead of PAI.
    assert "<sip:+15550002@" in second.header("from"), second.header("from")
    assert "<sip:+15550002@" in second.header("remote-party-id"), second.headers
    assert second.header("p-asserted-identity") == ""

    (result,) = named(events, "outbound_dial_result")
    assert (result["trunk"], result["sip_code"], result["decision"], result["forward"]) == (
        "carrier-a", "503", "try_next_trunk", "external:+15552220001")
    assert [(e["trunk"], e["caller_id"]) for e in named(events, "outbound_trunk_dialled")] == [
        ("carrier-a", "+15550001"), ("carrier-b", "+15550002")]


def test_a_did_to_a_pbx_extension_reaches_the_pbx_with_the_callers_own_number(
        stack: RunningStack, sipp_dir: Path) -> None:
    pbx = far_end(stack, sipp_dir, "hq")
    events = call_through(stack, sipp_dir, "5550701", [pbx])

    invite = received_invite(pbx)
    assert invite.first_line.startswith("INVITE sip:2001@"), invite.first_line
    assert f"<sip:{CALLER}@" in invite.header("from"), invite.header("from")
    assert invite.header("p-asserted-identity") == ""
    (routed,) = named(events, "call_routed")
    assert (routed["destination"], routed["forward"]) == ("pbx", "pbx:2001@hq")
    (dialled,) = named(events, "outbound_trunk_dialled")
    assert (dialled["trunk"], dialled["number"], dialled["caller_id_source"]) == (
        "hq", "2001", "caller")


def test_a_time_condition_leads_out_to_an_external_number(
        stack: RunningStack, sipp_dir: Path) -> None:
    carrier_a = far_end(stack, sipp_dir, "carrier-a")
    events = call_through(stack, sipp_dir, "5550702", [carrier_a])

    assert received_invite(carrier_a).first_line.startswith("INVITE sip:+15552220002@")
    (condition,) = named(events, "time_condition")
    assert (condition["condition"], condition["matched"], condition["next"]) == (
        "open", "1", "external:+15552220002")
    assert named(events, "call_routed")[0]["destination"] == "external"


def test_a_queue_overflowing_to_an_external_number_presents_the_queues_caller_id(
        stack: RunningStack, sipp_dir: Path) -> None:
    carrier_a = far_end(stack, sipp_dir, "carrier-a")
    # The queue answers the caller (music on hold) before the call goes out again, so
    # the caller talks long enough for the far end to answer before it hangs up.
    since = now_id()
    try:
        caller = carrier_calls(stack, sipp_dir, "5550703", talk_ms=3000)
        assert caller.run(timeout=60) == 0, caller.trace()
        assert carrier_a.wait(timeout=20) == 0, carrier_a.trace()
    finally:
        carrier_a.stop()
    events = events_until(stack, since, "call_ended")

    invite = received_invite(carrier_a)
    assert invite.first_line.startswith("INVITE sip:+15552220003@"), invite.first_line
    assert "<sip:+15550999@" in invite.header("from"), invite.header("from")
    (dialled,) = named(events, "outbound_trunk_dialled")
    assert (dialled["caller_id"], dialled["caller_id_source"]) == ("+15550999", "queue")
    assert named(events, "outbound_routed")[0]["queue"] == "sales"
