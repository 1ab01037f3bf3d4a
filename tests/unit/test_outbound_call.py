"""Outbound calls on the call path: the config keys (errors with key and line), the pure
helpers of omnicc/outbound_call.py, the trunk endpoints in pjsip.conf, and the AGI steps
(agent_call -> outbound, outbound_result, outbound_end) over a real AGISession talking to
the fake Asterisk, with the channel limit counted in memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from agi.handlers.agent_call import AgentCall
from agi.handlers.outbound_call import (
    HeldTrunkChannels,
    OutboundCalls,
    OutboundEnd,
    OutboundResult,
)
from agi.testing import FakeCallRecord, Responder, drive_session, run_async
from omnicc.channel_limit import ChannelGrant, Renewal
from omnicc.config import ConfigError, OmniccConfig, parse_config
from omnicc.events import EventLog
from omnicc.outbound import FailoverDecision, NextStep, OutboundPlan, OutboundRefused
from omnicc.outbound_call import (
    dialled_trunk_channel,
    stop_cause,
    trunk_dial,
    trunks_after,
)
from omnicc.render import render_asterisk

CONFIG = """\
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
      - {extension: "1002", password: "acme-pass-1002"}
    trunks:
      - {name: carrier-a, address: 127.0.0.6, dial_host: 127.0.0.6, dial_port: 5071,
         max_channels: 1}
      - {name: carrier-b, address: 127.0.0.7, dial_host: sip.carrier-b.example}
      - {name: inbound-only, address: 127.0.0.8}
    emergency_numbers: ["112"]
    outbound_routes:
      - name: national
        patterns: [_9NXXXXXX, _0X.]
        strip: 1
        prepend: "+34"
        trunks: [carrier-a, carrier-b]
        caller_id: "+34910000000"
      - {name: emergency, patterns: ["112"], trunks: [carrier-a, carrier-b]}
      - {name: local, patterns: [_5XXX], trunks: [carrier-b]}
"""
UNIQUEID = "1700000000.1"  # what the fake Asterisk sends (agi/testing.py)


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


# ---------------------------------------------------------------------------- config


def test_routes_plan_by_pattern_with_strip_prepend_and_the_files_route_name(
    config: OmniccConfig,
) -> None:
    tenant = config.tenants[0]
    plan = tenant.plan_outbound("95551234")
    assert (plan.route, plan.number, plan.trunks, plan.caller_id, plan.emergency) == (
        "national", "+345551234", ("carrier-a", "carrier-b"), "+34910000000", False)
    assert tenant.plan_outbound("0123").route == "national"  # its second pattern
    assert tenant.plan_outbound("5123").route == "local"
    assert tenant.plan_outbound("112").emergency
    assert tenant.trunks[0].dial_uri == "sip:127.0.0.6:5071"
    assert tenant.trunks[1].dial_uri == "sip:sip.carrier-b.example:5060"
    assert tenant.trunks[2].dial_uri == ""


def test_unquoted_numbers_are_read_as_text() -> None:
    text = CONFIG.replace('emergency_numbers: ["112"]', "emergency_numbers: [112]").replace(
        'patterns: ["112"]', "patterns: [112]")
    tenant = parse_config(text).tenants[0]
    assert tenant.emergency_numbers == ["112"]
    assert tenant.plan_outbound("112").route == "emergency"


def problem_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert len(caught.value.problems) == 1, caught.value.problems
    return caught.value.problems[0]


def line_of(text: str, marker: str) -> int:
    found = [n for n, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(found) == 1, (marker, found)
    return found[0]


@pytest.mark.parametrize(("old", "new", "key", "message", "marker"), [
    ("trunks: [carrier-b]}", "trunks: [carrier-x]}",
     "tenants[0].outbound_routes[2].trunks[0]",
     "uses trunk carrier-x, which is not among this tenant's trunks", "carrier-x"),
    ("trunks: [carrier-b]}", "trunks: [inbound-only]}",
     "tenants[0].outbound_routes[2].trunks[0]",
     "uses trunk inbound-only, which has no dial_host", "trunks: [inbound-only]"),
    ("patterns: [_5XXX]", "patterns: ['_5[XX']",
     "tenants[0].outbound_routes[2].patterns[0]", "is never closed", "_5[XX"),
    ("strip: 1", "strip: 3", "tenants[0].outbound_routes[0].strip",
     "strip 3 removes every character of a number matching _0X.", "strip: 3"),
    ('prepend: "+34"', 'prepend: "34&"', "tenants[0].outbound_routes[0].prepend",
     "prepend: dialled number '34&': character '&'", "34&"),
    ('caller_id: "+34910000000"', 'caller_id: "+349,1"',
     "tenants[0].outbound_routes[0].caller_id", "character ','", "+349,1"),
    ('emergency_numbers: ["112"]', 'emergency_numbers: ["112", "911"]',
     "tenants[0].emergency_numbers[1]", "emergency number 911 matches no outbound route",
     "emergency_numbers"),
    ('emergency_numbers: ["112"]', 'emergency_numbers: ["11)"]',
     "tenants[0].emergency_numbers[0]", "character ')'", "emergency_numbers"),
    ("{name: local,", "{name: national,", "tenants[0].outbound_routes[2].name",
     "duplicate outbound route name 'national'", "{name: national,"),
    ("dial_host: sip.carrier-b.example", "dial_host: 'evil.example;transport=tcp'",
     "tenants[0].trunks[1].dial_host", "dial_host is an IP address or a host name",
     "evil.example"),
    ("max_channels: 1", "max_channels: 0", "tenants[0].trunks[0].max_channels",
     "greater than or equal to 1", "max_channels: 0"),
    ("trunks: [carrier-a, carrier-b]}", "trunks: [carrier-a, carrier-a]}",
     "tenants[0].outbound_routes[1].trunks[1]", "duplicate trunk 'carrier-a'",
     "trunks: [carrier-a, carrier-a]}"),
])
def test_outbound_config_mistakes_name_key_and_line(
    old: str, new: str, key: str, message: str, marker: str
) -> None:
    assert CONFIG.count(old) == 1, old
    text = CONFIG.replace(old, new)
    problem = problem_of(text)
    assert problem.startswith(f"omnicc.yaml:{line_of(text, marker)}: {key}: "), problem
    assert message in problem, problem


# ---------------------------------------------------------------------------- pure helpers


def test_the_dial_string_is_the_trunk_endpoint_and_a_checked_number() -> None:
    assert trunk_dial("acme", "carrier-a", "+345551234") == (
        "PJSIP/+345551234@trunk.acme.carrier-a")
    for bad in ("555&PJSIP/x@evil", "1,2", "5551)", "1" * 300, ""):
        with pytest.raises(OutboundRefused):
            trunk_dial("acme", "carrier-a", bad)


def test_trunks_after_one_follow_the_route_order() -> None:
    plan = OutboundPlan(route="r", dialled="1", number="1", trunks=("a", "b", "c"),
                        caller_id="")
    assert trunks_after(plan, "a") == ("b", "c")
    assert trunks_after(plan, "c") == ()
    with pytest.raises(ValueError, match="not a trunk of route r"):
        trunks_after(plan, "x")


def test_the_trunk_channel_is_found_among_the_dialled_channels() -> None:
    keys = "PJSIP/trunk.acme.carrier-a-00000002,PJSIP/trunk.acme.carrier-b-00000004"
    assert dialled_trunk_channel(keys, "acme", "carrier-b") == (
        "PJSIP/trunk.acme.carrier-b-00000004")
    # A trunk whose name starts like another's is not confused with it.
    assert dialled_trunk_channel(keys, "acme", "carrier") is None
    assert dialled_trunk_channel("", "acme", "carrier-a") is None


@pytest.mark.parametrize(("step", "reason", "cause", "expected"), [
    (NextStep.STOP, "busy", 17, 17),
    (NextStep.STOP, "busy", None, 17),
    (NextStep.STOP, "no_answer", None, 19),
    (NextStep.STOP, "number_invalid", None, 1),
    (NextStep.STOP, "rejected_sip_420", None, 21),
    # No trunk left: 503 to the agent, with 42, which Kamailio does not take to another
    # Asterisk node (34 it would: omnicc/node_failover.py).
    (NextStep.TRY_NEXT_TRUNK, "sip_503", 34, 42),
    (NextStep.TRY_NEXT_TRUNK, "sip_500", 38, 42),
    (NextStep.STOP, "busy", 34, 42),  # a trunk's own 34 is never passed on either
    (NextStep.ANSWERED, "answered", None, 16),
])
def test_the_cause_a_stopped_call_ends_with(step: NextStep, reason: str, cause: int | None,
                                            expected: int) -> None:
    assert stop_cause(FailoverDecision(step, reason), cause) == expected


# ---------------------------------------------------------------------------- pjsip.conf


def test_each_dialling_trunk_gets_an_endpoint_and_no_identify(
    config: OmniccConfig, tmp_path: Path
) -> None:
    render_asterisk(config, tmp_path)
    pjsip = (tmp_path / "pjsip.conf").read_text()
    assert "[trunk.acme.carrier-a]\ntype = endpoint" in pjsip
    assert "[trunk.acme.carrier-a]\ntype = aor\ncontact = sip:127.0.0.6:5071\n" in pjsip
    assert "contact = sip:sip.carrier-b.example:5060" in pjsip
    assert "inbound-only" not in pjsip
    # Carriers reach Asterisk only through Kamailio: the one identify is Kamailio's.
    assert pjsip.count("type = identify") == 1
    assert "context = omnicc-trunk-endpoint" in pjsip


# ---------------------------------------------------------------------------- AGI steps


class MemoryEventLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def append(self, tenant: str, event: str, **fields: Any) -> str:
        self.events.append((tenant, event, fields))
        return f"{len(self.events)}-0"

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for _, event, fields in self.events if event == name]

    def names(self) -> list[str]:
        return [event for _, event, _ in self.events]


class MemoryChannels:
    """omnicc.channel_limit.AsyncChannelLimits in memory (the Lua is tested against a real
    Redis in tests/integration/test_channel_limit.py)."""

    lease_ms = 90_000

    def __init__(self) -> None:
        self.in_use: dict[tuple[str, str], set[str]] = {}
        self.renewed: list[tuple[str, str, list[str]]] = []

    async def acquire(self, tenant: str, trunk: str, channel: str, limit: int,
                      force: bool = False) -> ChannelGrant:
        held = self.in_use.setdefault((tenant, trunk), set())
        if channel not in held and limit and len(held) >= limit and not force:
            return ChannelGrant(False, len(held), limit, 0)
        held.add(channel)
        return ChannelGrant(True, len(held), limit, 1, forced=len(held) > limit)

    async def release(self, tenant: str, trunk: str, channel: str) -> bool:
        held = self.in_use.get((tenant, trunk), set())
        found = channel in held
        held.discard(channel)
        return found

    async def renew_many(self, tenant: str, trunk: str, channels: list[str]) -> Renewal:
        self.renewed.append((tenant, trunk, list(channels)))
        return Renewal(len(self.in_use.get((tenant, trunk), ())), ())


class Harness:
    def __init__(self, config: OmniccConfig):
        self.events = MemoryEventLog()
        self.store = MemoryChannels()
        self.held = HeldTrunkChannels(self.store)
        self.calls = OutboundCalls(config, cast(EventLog, self.events), self.held)
        self.agent_call = AgentCall(config, cast(EventLog, self.events), self.calls)
        self.result = OutboundResult(self.calls)
        self.end = OutboundEnd(self.calls)

    def run(self, handler: Any, script: str, params: dict[str, str],
            variables: dict[str, str] | None = None,
            responder: Responder | None = None) -> FakeCallRecord:
        return run_async(drive_session(handler, script=script, params=params,
                                       variables=variables or {}, responder=responder,
                                       command_timeout=0.5))

    def dial(self, dialled: str, agent: str = "1001") -> FakeCallRecord:
        return self.run(self.agent_call, "agent_call",
                        {"tenant": "acme", "agent": agent, "dialled": dialled})

    def after(self, dialled: str, trunk: str, dialstatus: str, tech: str = "",
              ast: str = "") -> FakeCallRecord:
        channel = f"PJSIP/trunk.acme.{trunk}-00000007"
        variables = {"HANGUPCAUSE_KEYS()": channel} if tech or ast else {}
        if tech:
            variables[f"HANGUPCAUSE({channel},tech)"] = tech
        if ast:
            variables[f"HANGUPCAUSE({channel},ast)"] = ast
        return self.run(self.result, "outbound_result",
                        {"tenant": "acme", "agent": "1001", "dialled": dialled,
                         "trunk": trunk, "dialstatus": dialstatus}, variables)

    def hangup(self, trunk: str) -> FakeCallRecord:
        return self.run(self.end, "outbound_end", {"tenant": "acme", "trunk": trunk})

    def channels(self, trunk: str) -> set[str]:
        return self.store.in_use.get(("acme", trunk), set())


@pytest.fixture
def harness(config: OmniccConfig) -> Harness:
    return Harness(config)


def test_a_number_goes_out_on_the_first_trunk_holding_a_channel(harness: Harness) -> None:
    record = harness.dial("95551234")
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DEST"] == "outbound"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+345551234@trunk.acme.carrier-a"
    assert record.variables["OMNICC_OUTBOUND_TRUNK"] == "carrier-a"
    assert record.variables["CALLERID(num)"] == "+34910000000"
    assert record.commands[-1] == ("SET", "VARIABLE", "OMNICC_STATUS", "OK")
    assert harness.channels("carrier-a") == {UNIQUEID}
    assert harness.held.held("acme", "carrier-a") == {UNIQUEID}
    assert harness.events.names() == ["outbound_routed", "outbound_trunk_dialled"]
    routed = harness.events.named("outbound_routed")[0]
    assert (routed["route"], routed["number"], routed["trunks"], routed["agent"]) == (
        "national", "+345551234", "carrier-a,carrier-b", "1001")


def test_a_call_to_an_agent_still_rings_the_agent(harness: Harness) -> None:
    record = harness.dial("1002")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1002@acme.example"
    assert harness.events.names() == ["agent_call_routed"]


@pytest.mark.parametrize("dialled", ["555&PJSIP/x@evil", "1,2", "5551)", "1" * 300,
                                     "555 1", "٥٥٥", "9555)1234"])
def test_an_injected_number_is_refused_with_484_and_nothing_dialled(
    harness: Harness, dialled: str
) -> None:
    record = harness.dial(dialled)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_CAUSE"] == "28"  # Asterisk answers 484
    assert "OMNICC_DIAL" not in record.variables
    assert "OMNICC_DEST" not in record.variables
    assert harness.store.in_use == {}
    (refused,) = harness.events.named("outbound_refused")
    assert refused["refusal"] == "invalid_number"
    assert len(refused["dialled"]) <= 64
    assert harness.events.names() == ["outbound_refused"]


def test_a_number_without_a_route_is_refused_with_404(harness: Harness) -> None:
    record = harness.dial("77777")
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == (
        "ERROR", "1")
    assert "OMNICC_DIAL" not in record.variables
    assert harness.events.named("outbound_refused")[0]["refusal"] == "no_route"


def test_a_full_trunk_is_skipped_for_the_next_one(harness: Harness) -> None:
    harness.store.in_use[("acme", "carrier-a")] = {"other-call"}
    record = harness.dial("95551234")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+345551234@trunk.acme.carrier-b"
    assert record.variables["OMNICC_STATUS"] == "OK"
    full = harness.events.named("outbound_trunk_full")
    assert [(f["trunk"], f["in_use"], f["limit"]) for f in full] == [("carrier-a", "1", "1")]


def test_every_trunk_full_is_503_and_nothing_dialled(harness: Harness) -> None:
    harness.store.in_use[("acme", "carrier-a")] = {"other-call"}
    record = harness.dial("95551234")  # carrier-b has no limit: dialled
    assert record.variables["OMNICC_OUTBOUND_TRUNK"] == "carrier-b"
    # A route with only the full trunk.
    text = CONFIG.replace("trunks: [carrier-b]}", "trunks: [carrier-a]}")
    other = Harness(parse_config(text))
    other.store.in_use[("acme", "carrier-a")] = {"other-call"}
    record = other.dial("5123")
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == (
        "ERROR", "42")  # final: the other Asterisk nodes share the count
    assert "OMNICC_DIAL" not in record.variables
    assert other.events.names()[-1] == "outbound_failed"


def test_an_emergency_call_goes_over_the_limit(harness: Harness) -> None:
    harness.store.in_use[("acme", "carrier-a")] = {"other-call"}
    record = harness.dial("112")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/112@trunk.acme.carrier-a"
    assert harness.channels("carrier-a") == {"other-call", UNIQUEID}


def test_a_503_fails_over_to_the_next_trunk_and_gives_back_the_channel(
    harness: Harness,
) -> None:
    harness.dial("95551234")
    record = harness.after("95551234", "carrier-a", "CHANUNAVAIL",
                           tech="SIP 503 Service Unavailable", ast="34")
    assert record.variables["OMNICC_OUTBOUND_NEXT"] == "dial"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+345551234@trunk.acme.carrier-b"
    assert record.variables["OMNICC_OUTBOUND_TRUNK"] == "carrier-b"
    assert harness.channels("carrier-a") == set()
    assert harness.held.held("acme", "carrier-a") == frozenset()
    (result,) = harness.events.named("outbound_dial_result")
    assert (result["trunk"], result["sip_code"], result["decision"], result["reason"]) == (
        "carrier-a", "503", "try_next_trunk", "sip_503")


def test_busy_stops_there_with_486(harness: Harness) -> None:
    harness.dial("95551234")
    record = harness.after("95551234", "carrier-a", "BUSY", tech="SIP 486 Busy Here",
                           ast="17")
    assert "OMNICC_OUTBOUND_NEXT" not in record.variables
    assert "OMNICC_DIAL" not in record.variables
    assert record.variables["OMNICC_CAUSE"] == "17"
    assert harness.channels("carrier-a") == set()
    assert harness.events.named("outbound_dial_result")[0]["decision"] == "stop"


def test_the_last_trunk_failing_ends_the_call_with_503(harness: Harness) -> None:
    record = harness.after("95551234", "carrier-b", "CONGESTION",
                           tech="SIP 503 Service Unavailable", ast="34")
    assert "OMNICC_OUTBOUND_NEXT" not in record.variables
    assert record.variables["OMNICC_CAUSE"] == "42"  # 503, not tried on another node
    assert harness.events.names()[-1] == "outbound_failed"
    assert harness.events.named("outbound_failed")[0]["reason"] == "all_trunks_failed"


def test_without_a_sip_code_congestion_still_fails_over(harness: Harness) -> None:
    record = harness.after("95551234", "carrier-a", "CONGESTION")
    assert record.variables["OMNICC_OUTBOUND_NEXT"] == "dial"


@pytest.mark.parametrize("params", [
    {"trunk": "carrier-x"},                 # not a trunk of the route
    {"dialled": "1,2"},                     # not a number
    {"dialstatus": "WHATEVER"},             # not a DIALSTATUS
    {"tenant": "nobody"},
])
def test_an_outbound_result_that_makes_no_sense_ends_the_call(
    harness: Harness, params: dict[str, str]
) -> None:
    base = {"tenant": "acme", "agent": "1001", "dialled": "95551234", "trunk": "carrier-a",
            "dialstatus": "CHANUNAVAIL"}
    record = harness.run(harness.result, "outbound_result", {**base, **params})
    assert record.variables["OMNICC_CAUSE"] == "42"  # a trunk was dialled: final
    assert "OMNICC_DIAL" not in record.variables
    assert "OMNICC_OUTBOUND_NEXT" not in record.variables


def test_the_hangup_handler_releases_the_channel_once_and_twice_is_harmless(
    harness: Harness,
) -> None:
    harness.dial("95551234")
    assert harness.channels("carrier-a") == {UNIQUEID}
    harness.hangup("carrier-a")
    harness.hangup("carrier-a")
    harness.hangup("")
    assert harness.channels("carrier-a") == set()
    assert harness.held.held("acme", "carrier-a") == frozenset()


def test_held_channels_are_renewed_together_per_trunk(harness: Harness) -> None:
    async def scenario() -> int:
        await harness.held.acquire("acme", "carrier-a", "c1", 5)
        await harness.held.acquire("acme", "carrier-a", "c2", 5)
        await harness.held.acquire("acme", "carrier-b", "c3", 5)
        await harness.held.release("acme", "carrier-b", "c3")
        return await harness.held.renew_all()

    assert asyncio.run(scenario()) == 2
    assert harness.store.renewed == [("acme", "carrier-a", ["c1", "c2"])]
    assert harness.held.renew_interval == 30.0


def test_a_tenant_without_outbound_routes_keeps_the_agent_only_answer() -> None:
    text = CONFIG.split("    emergency_numbers:")[0]
    harness = Harness(parse_config(text))
    record = harness.dial("95551234")
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == (
        "ERROR", "1")
    assert harness.events.names() == ["agent_call_unrouted"]


def test_the_server_answers_the_outbound_scripts_when_it_counts_channels(
    config: OmniccConfig,
) -> None:
    from agi.app import build_routes

    events = cast(EventLog, MemoryEventLog())
    routes = build_routes(config, events, channels=HeldTrunkChannels(MemoryChannels()))
    assert isinstance(routes["outbound_result"], OutboundResult)
    assert isinstance(routes["outbound_end"], OutboundEnd)
    assert isinstance(routes["agent_call"], AgentCall)


# ------------------------------------------------------- who gives a counted channel back


def set_command(record: FakeCallRecord, name: str) -> int:
    """The index of the first SET VARIABLE `name` the AGI sent."""
    return next(i for i, words in enumerate(record.commands)
                if words[:3] == ("SET", "VARIABLE", name))


def hangs_up_at(name: str, value: str | None = None):
    """A fake Asterisk whose caller hangs up just as SET VARIABLE `name` (`value`) arrives:
    the HANGUP line, then the command's reply, as Asterisk writes them."""
    def responder(words: tuple[str, ...]) -> str | None:
        if words[:3] == ("SET", "VARIABLE", name) and value in (None, words[3]):
            return "HANGUP\n200 result=1"
        return None
    return responder


def test_the_hangup_handler_is_pushed_before_a_channel_is_counted(harness: Harness) -> None:
    record = harness.dial("95551234")
    assert record.variables["CHANNEL(hangup_handler_push)"] == "omnicc-outbound-hangup,s,1"
    assert record.variables["OMNICC_OUTBOUND_HELD"] == "carrier-a"
    assert (set_command(record, "CHANNEL(hangup_handler_push)")
            < set_command(record, "OMNICC_OUTBOUND_HELD")
            < set_command(record, "OMNICC_DIAL"))
    assert harness.channels("carrier-a") == {UNIQUEID}


def test_a_route_without_counted_trunks_pushes_no_handler_and_holds_nothing(
    harness: Harness,
) -> None:
    record = harness.dial("5123")  # route local: carrier-b, no max_channels
    assert record.variables["OMNICC_DIAL"] == "PJSIP/5123@trunk.acme.carrier-b"
    assert "CHANNEL(hangup_handler_push)" not in record.variables
    assert "OMNICC_OUTBOUND_HELD" not in record.variables


@pytest.mark.parametrize("hung_up_at", [
    "OMNICC_OUTBOUND_HELD", "OMNICC_OUTBOUND_TRUNK", "CALLERID(num)", "OMNICC_DIAL",
    "OMNICC_DEST", "OMNICC_STATUS",
])
def test_a_caller_hanging_up_after_the_acquire_gives_the_channel_back(
    harness: Harness, hung_up_at: str
) -> None:
    from agi.protocol import AGIHangup

    with pytest.raises(AGIHangup):
        harness.run(harness.agent_call, "agent_call",
                    {"tenant": "acme", "agent": "1001", "dialled": "95551234"},
                    responder=hangs_up_at(hung_up_at))
    assert harness.channels("carrier-a") == set()
    # Not renewed for ever by this node either.
    assert harness.held.held("acme", "carrier-a") == frozenset()


def test_an_event_log_failure_after_the_acquire_gives_the_channel_back(
    harness: Harness,
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def failing_append(tenant: str, event: str, **fields: Any) -> str:
        if event == "outbound_trunk_dialled":
            raise RedisConnectionError("Connection reset by peer")
        return "1-0"

    harness.events.append = failing_append  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError):
        harness.dial("95551234")
    assert harness.channels("carrier-a") == set()
    assert harness.held.held("acme", "carrier-a") == frozenset()


def test_a_hangup_while_the_next_trunk_is_chosen_gives_that_channel_back(
    config: OmniccConfig,
) -> None:
    from agi.protocol import AGIHangup

    # Both trunks counted: the failover's acquire of carrier-b is the one at stake.
    text = CONFIG.replace("dial_host: sip.carrier-b.example}",
                          "dial_host: sip.carrier-b.example, max_channels: 5}")
    harness = Harness(parse_config(text))
    harness.dial("95551234")
    channel = "PJSIP/trunk.acme.carrier-a-00000007"
    with pytest.raises(AGIHangup):
        harness.run(harness.result, "outbound_result",
                    {"tenant": "acme", "agent": "1001", "dialled": "95551234",
                     "trunk": "carrier-a", "dialstatus": "CHANUNAVAIL"},
                    {"HANGUPCAUSE_KEYS()": channel,
                     f"HANGUPCAUSE({channel},tech)": "SIP 503 Service Unavailable"},
                    responder=hangs_up_at("OMNICC_OUTBOUND_NEXT"))
    assert harness.channels("carrier-a") == set()
    assert harness.channels("carrier-b") == set()
    assert harness.held.held("acme", "carrier-b") == frozenset()


def test_outbound_result_gives_the_channel_back_and_clears_what_the_handler_reads(
    harness: Harness,
) -> None:
    harness.dial("95551234")
    record = harness.after("95551234", "carrier-a", "ANSWER")
    assert record.variables["OMNICC_OUTBOUND_HELD"] == ""  # the hang-up handler: no AGI
    assert harness.channels("carrier-a") == set()
    # A failover to a counted trunk names that one instead (set after the clearing).
    harness.dial("95551234")
    record = harness.after("95551234", "carrier-a", "CHANUNAVAIL",
                           tech="SIP 503 Service Unavailable")
    assert record.variables["OMNICC_OUTBOUND_HELD"] == ""  # carrier-b is not counted
    assert record.variables["OMNICC_OUTBOUND_NEXT"] == "dial"


def test_every_trunk_full_sets_no_destination(harness: Harness) -> None:
    text = CONFIG.replace("trunks: [carrier-b]}", "trunks: [carrier-a]}")
    other = Harness(parse_config(text))
    other.store.in_use[("acme", "carrier-a")] = {"other-call"}
    record = other.dial("5123")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert "OMNICC_DEST" not in record.variables
    assert "OMNICC_OUTBOUND_HELD" not in record.variables
    assert other.channels("carrier-a") == {"other-call"}


def test_the_trunk_leg_and_the_calling_channel_both_releasing_count_it_once(
    harness: Harness,
) -> None:
    """The trunk leg's handler names the calling channel (outbound_end channel=); the
    calling channel's handler may run before or after it: the channel is gone either way
    and a second release changes nothing (nor another call's channel)."""
    harness.store.in_use[("acme", "carrier-a")] = set()
    harness.dial("95551234")
    harness.run(harness.end, "outbound_end",
                {"tenant": "acme", "trunk": "carrier-a", "channel": UNIQUEID})
    assert harness.channels("carrier-a") == set()
    harness.store.in_use[("acme", "carrier-a")].add("another-call")
    harness.hangup("carrier-a")
    assert harness.channels("carrier-a") == {"another-call"}


def test_a_channel_released_during_its_renewal_is_not_left_counted(harness: Harness) -> None:
    """The renewal (one connection) may reach Redis after the release (another) and count
    the channel again; renew_all removes it once more."""
    store = harness.store

    async def renew_many_racing_a_release(tenant: str, trunk: str,
                                          channels: list[str]) -> Renewal:
        await harness.held.release(tenant, trunk, "c1")  # the call ended meanwhile
        store.in_use.setdefault((tenant, trunk), set()).update(channels)  # then renewed
        return Renewal(len(store.in_use[(tenant, trunk)]), ())

    async def scenario() -> None:
        await harness.held.acquire("acme", "carrier-a", "c1", 5)
        await harness.held.acquire("acme", "carrier-a", "c2", 5)
        store.renew_many = renew_many_racing_a_release  # type: ignore[method-assign]
        await harness.held.renew_all()

    asyncio.run(scenario())
    assert harness.channels("carrier-a") == {"c2"}
    assert harness.held.held("acme", "carrier-a") == {"c2"}
