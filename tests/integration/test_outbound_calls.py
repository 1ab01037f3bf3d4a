"""Outbound calls end to end, through real Kamailio, Asterisk, the FastAGI server, Redis and
SIPp playing an agent's phone and two carriers.

agent (SIPp, digest) -> Kamailio -> Asterisk -> AGI agent_call (number checked, route
chosen, first trunk with a free channel) -> Dial PJSIP/<number>@trunk.default.carrier-a
-> carrier A (SIPp UAS) answers 503 -> AGI outbound_result: next trunk -> carrier B
answers 200 -> the agent hangs up -> hang-up handler AGI outbound_end releases the channel.

Its own stack: the config below gives the tenant two carriers that outbound routes dial
(dial_host/dial_port: the SIPp carriers' addresses) and a channel limit on carrier A. The
last test starts a second stack with two Asterisk nodes (and two FastAGI servers) on one
Redis, to show the limit holding across nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.events import read_events
from omnicc.keys import trunk_channels
from omnicc.sipp import SippRun

from .conftest import DOMAIN, SERVICES_TEMPLATE, RunningStack, free_ports, stack_up
from .test_first_call import PASSWORDS, now_id
from .test_queue_two_nodes import NodeB

pytestmark = pytest.mark.integration

CARRIER_A_IP = "127.0.0.6"
CARRIER_B_IP = "127.0.0.7"
ROUTED = "95551234"           # route national: strip 1, prepend +34
SENT = "+345551234"           # what the carriers receive
CALLER_ID = "+34910000000"    # the route's caller_id

OUTBOUND_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: carrier-a, address: 127.0.0.6, dial_host: 127.0.0.6, dial_port: {carrier_a},
          max_channels: 1}}
      - {{name: carrier-b, address: 127.0.0.7, dial_host: 127.0.0.7, dial_port: {carrier_b}}}
    emergency_numbers: ["112"]
    outbound_routes:
      - name: national
        patterns: [_9NXXXXXX]
        strip: 1
        prepend: "+34"
        trunks: [carrier-a, carrier-b]
        caller_id: "+34910000000"
      - {{name: emergency, patterns: ["112"], trunks: [carrier-a, carrier-b]}}
"""


@pytest.fixture(scope="module")
def outbound_stack() -> Iterator[RunningStack]:
    carrier_a, carrier_b = free_ports(2)
    with stack_up("omnicc-it-outbound-", "outbound", OUTBOUND_CONFIG,
                  carrier_a=carrier_a, carrier_b=carrier_b) as running:
        yield running


def carrier_port(stack: RunningStack, name: str) -> int:
    trunk = stack.config.tenants[0].trunk(name)
    assert trunk is not None
    return trunk.dial_port


CARRIER_SCENARIOS = {200: "carrier_answers.xml", 503: "carrier_unavailable.xml",
                     486: "carrier_busy.xml"}


def carrier(stack: RunningStack, workdir: Path, name: str, *, calls: int = 1,
            code: int = 200) -> SippRun:
    """A carrier (SIPp UAS) listening where the trunk `name` dials: answers each call with
    `code` (200, 503 or 486)."""
    ip = {"carrier-a": CARRIER_A_IP, "carrier-b": CARRIER_B_IP}[name]
    run = SippRun(name, [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / CARRIER_SCENARIOS[code]), "-i", ip,
        "-p", str(carrier_port(stack, name)),
        "-m", str(calls), *sipp._common(name, workdir),
    ], workdir).start()
    return run


def agent_dials(stack: RunningStack, workdir: Path, dialled: str, *, extension: str = "1001",
                talk_ms: int = 1000, name: str = "agent") -> SippRun:
    """The agent's phone places a call to `dialled` (written into the request URI as is)
    with digest credentials."""
    return SippRun(name, [
        sipp.sipp_binary(), stack.proxy, "-sf", str(sipp.SCENARIOS / "agent_dials.xml"),
        "-m", "1", "-i", "127.0.0.1", "-p", "0", "-s", dialled, "-au", extension,
        "-ap", PASSWORDS[extension], "-key", "from", extension, "-key", "domain", DOMAIN,
        "-d", str(talk_ms), "-timeout", "40s", *sipp._common(name, workdir),
    ], workdir)


def final_status(run: SippRun) -> int:
    """The final status the agent got for its last INVITE (the authenticated one)."""
    lines = run.first_lines()
    last_invite = max(i for i, line in enumerate(lines) if line.startswith("INVITE "))
    finals = [int(line.split()[1]) for line in lines[last_invite:]
              if line.startswith("SIP/2.0 ") and int(line.split()[1]) >= 200]
    assert finals, lines
    return finals[0]


def invites(run: SippRun) -> list[str]:
    return [m.first_line for m in run.traced_messages()
            if m.is_request and m.method == "INVITE" and not m.sent]


def events_until(stack: RunningStack, since: str, name: str,
                 timeout: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(stack.redis(), "default", since=since)
        if name in {e["event"] for e in events} or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def named(events: list[dict[str, str]], name: str) -> list[dict[str, str]]:
    return [e for e in events if e["event"] == name]


def channels_in_use(stack: RunningStack, trunk: str) -> int:
    return stack.redis().zcard(trunk_channels("default", trunk))


def test_a_carrier_answering_503_fails_over_to_the_next_one(
    outbound_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    refusing = carrier(outbound_stack, sipp_dir, "carrier-a", code=503)
    answering = carrier(outbound_stack, sipp_dir, "carrier-b")
    try:
        time.sleep(0.3)
        agent = agent_dials(outbound_stack, sipp_dir, ROUTED, talk_ms=1000)
        assert agent.run(timeout=60) == 0, agent.trace()
        assert refusing.wait(timeout=15) == 0, refusing.trace()
        assert answering.wait(timeout=15) == 0, answering.trace()
    finally:
        refusing.stop()
        answering.stop()

    assert final_status(agent) == 200
    # Each carrier got the number as the route rewrites it, with the route's caller ID.
    for run in (refusing, answering):
        (invite,) = invites(run)
        assert invite.startswith(f"INVITE sip:{SENT}@"), invite
        (message,) = [m for m in run.traced_messages() if m.method == "INVITE" and m.is_request]
        assert CALLER_ID in message.header("from"), message.header("from")
    assert any(line.startswith("SIP/2.0 503") for line in refusing.first_lines())
    assert any(line.startswith("BYE ") for line in answering.first_lines())

    events = events_until(outbound_stack, since, "call_ended")
    (routed,) = named(events, "outbound_routed")
    assert (routed["route"], routed["number"], routed["agent"], routed["trunks"]) == (
        "national", SENT, "1001", "carrier-a,carrier-b")
    assert [e["trunk"] for e in named(events, "outbound_trunk_dialled")] == [
        "carrier-a", "carrier-b"]
    (result,) = named(events, "outbound_dial_result")
    assert (result["trunk"], result["sip_code"], result["decision"]) == (
        "carrier-a", "503", "try_next_trunk")
    # The channel carrier A held for the failed attempt is given back.
    assert channels_in_use(outbound_stack, "carrier-a") == 0


def test_busy_at_the_first_carrier_is_not_tried_on_the_next(
    outbound_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    busy = carrier(outbound_stack, sipp_dir, "carrier-a", code=486)
    idle = carrier(outbound_stack, sipp_dir, "carrier-b")
    try:
        time.sleep(0.3)
        agent = agent_dials(outbound_stack, sipp_dir, ROUTED)
        assert agent.run(timeout=60) == 0, agent.trace()
        assert busy.wait(timeout=15) == 0, busy.trace()
        time.sleep(1.0)  # time enough for a wrong failover to reach carrier B
    finally:
        busy.stop()
        idle.stop()

    assert final_status(agent) == 486
    assert len(invites(busy)) == 1
    assert invites(idle) == []
    events = events_until(outbound_stack, since, "call_ended")
    (result,) = named(events, "outbound_dial_result")
    assert (result["sip_code"], result["decision"], result["reason"]) == (
        "486", "stop", "busy")
    assert [e["trunk"] for e in named(events, "outbound_trunk_dialled")] == ["carrier-a"]
    assert channels_in_use(outbound_stack, "carrier-a") == 0


@pytest.mark.parametrize(("dialled", "in_uri"), [
    ("555&PJSIP/x@evil", "555&PJSIP/x%40evil"),
    ("1,2", "1,2"),
    ("5551)", "5551)"),
    ("9" * 300, "9" * 300),
])
def test_an_injected_number_is_refused_and_nothing_is_dialled(
    outbound_stack: RunningStack, sipp_dir: Path, dialled: str, in_uri: str
) -> None:
    since = now_id()
    carriers = [carrier(outbound_stack, sipp_dir, "carrier-a"),
                carrier(outbound_stack, sipp_dir, "carrier-b")]
    try:
        time.sleep(0.3)
        agent = agent_dials(outbound_stack, sipp_dir, in_uri)
        assert agent.run(timeout=60) == 0, agent.trace()
        time.sleep(1.0)
    finally:
        for run in carriers:
            run.stop()

    # 484 Address Incomplete: the number is not one (docs/routing.md).
    assert final_status(agent) == 484, agent.first_lines()
    for run in carriers:
        assert invites(run) == [], run.first_lines()
    events = events_until(outbound_stack, since, "call_ended")
    (refused,) = named(events, "outbound_refused")
    assert refused["refusal"] == "invalid_number"
    assert refused["agent"] == "1001"
    assert named(events, "outbound_trunk_dialled") == []


def test_the_channel_limit_sends_a_second_call_to_the_next_trunk(
    outbound_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    carrier_a = carrier(outbound_stack, sipp_dir, "carrier-a")
    carrier_b = carrier(outbound_stack, sipp_dir, "carrier-b")
    try:
        time.sleep(0.3)
        first = agent_dials(outbound_stack, sipp_dir, ROUTED, extension="1001",
                            talk_ms=4000, name="first").start()
        deadline = time.monotonic() + 15
        while channels_in_use(outbound_stack, "carrier-a") < 1:
            assert time.monotonic() < deadline, first.trace()
            time.sleep(0.1)
        second = agent_dials(outbound_stack, sipp_dir, ROUTED, extension="1002",
                             talk_ms=500, name="second")
        assert second.run(timeout=60) == 0, second.trace()
        assert first.wait(timeout=60) == 0, first.trace()
        assert carrier_a.wait(timeout=15) == 0, carrier_a.trace()
        assert carrier_b.wait(timeout=15) == 0, carrier_b.trace()
    finally:
        carrier_a.stop()
        carrier_b.stop()

    assert final_status(first) == 200 and final_status(second) == 200
    assert len(invites(carrier_a)) == 1 and len(invites(carrier_b)) == 1
    events = events_until(outbound_stack, since, "call_ended")
    (full,) = named(events, "outbound_trunk_full")
    assert (full["trunk"], full["in_use"], full["limit"], full["agent"]) == (
        "carrier-a", "1", "1", "1002")
    # Both calls are over: the hang-up handler gave carrier A's channel back.
    deadline = time.monotonic() + 5
    while channels_in_use(outbound_stack, "carrier-a"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


# ---------------------------------------------------------------------------- two nodes

TWO_NODE_CONFIG = OUTBOUND_CONFIG.replace("""tenants:
""", """asterisk_nodes:
  - {{host: 127.0.0.1, port: {asterisk}}}
  - {{host: 127.0.0.1, port: {asterisk_b}}}
tenants:
""", 1)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[RunningStack, NodeB]]:
    """Node A (a whole stack whose Kamailio spreads calls over both Asterisk nodes) and
    node B (another Asterisk and FastAGI server on A's Redis), both dialling the carriers."""
    asterisk_b, carrier_a, carrier_b = free_ports(3)
    with stack_up("omnicc-it-outbound-a-", "a", TWO_NODE_CONFIG, asterisk_b=asterisk_b,
                  carrier_a=carrier_a, carrier_b=carrier_b) as a:
        b = NodeB(a, asterisk_b)
        try:
            b.start()
            yield a, b
        finally:
            b.stop()


def test_the_channel_limit_holds_across_two_asterisk_nodes(
    two_nodes: tuple[RunningStack, NodeB], sipp_dir: Path
) -> None:
    """Carrier A sells one channel. A call through one node holds it; a call that Kamailio
    sends to the other node finds carrier A full (the count is in Redis) and goes out on
    carrier B."""
    stack, _ = two_nodes
    since = now_id()
    carrier_a = carrier(stack, sipp_dir, "carrier-a")
    carrier_b = carrier(stack, sipp_dir, "carrier-b", calls=10)
    try:
        time.sleep(0.3)
        first = agent_dials(stack, sipp_dir, ROUTED, extension="1001", talk_ms=8000,
                            name="first").start()
        deadline = time.monotonic() + 15
        while channels_in_use(stack, "carrier-a") < 1:
            assert time.monotonic() < deadline, first.trace()
            time.sleep(0.1)
        (held,) = named(read_events(stack.redis(), "default", since=since),
                        "outbound_trunk_dialled")
        # Kamailio takes the nodes in turn: within a few calls one lands on the other node.
        other: list[dict[str, str]] = []
        for attempt in range(3):
            call = agent_dials(stack, sipp_dir, ROUTED, extension="1002", talk_ms=300,
                               name=f"other-{attempt}")
            assert call.run(timeout=60) == 0, call.trace()
            assert final_status(call) == 200
            other = [e for e in named(read_events(stack.redis(), "default", since=since),
                                      "outbound_trunk_full") if e["node"] != held["node"]]
            if other:
                break
        assert first.wait(timeout=60) == 0, first.trace()
        assert carrier_a.wait(timeout=15) == 0, carrier_a.trace()
    finally:
        carrier_a.stop()
        carrier_b.stop()

    assert held["trunk"] == "carrier-a"
    assert other, "no call reached the other node"
    assert (other[0]["trunk"], other[0]["in_use"], other[0]["limit"]) == ("carrier-a", "1", "1")
    assert {held["node"], other[0]["node"]} == {"it-a", "it-b"}
    assert len(invites(carrier_a)) == 1
    assert final_status(first) == 200
    deadline = time.monotonic() + 5
    while channels_in_use(stack, "carrier-a"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
