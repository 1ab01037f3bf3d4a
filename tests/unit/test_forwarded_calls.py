"""Forwarded calls and caller-ID policy: external:NUMBER and pbx:EXT destinations (the
config keys and their load-time checks, the routing decision, the forward_call and
outbound_result AGI steps over a real AGISession talking to the fake Asterisk), the caller
ID precedence of omnicc/caller_id.py, and the trunk identity lines in pjsip.conf."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from agi.handlers.forward_call import ForwardCall
from agi.handlers.inbound_route import InboundRoute
from agi.handlers.outbound_call import HeldTrunkChannels, OutboundCalls, OutboundResult
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.caller_id import (
    CallerId,
    CallerIdSource,
    TrunkPolicy,
    choose_caller_id,
    passes_forwarded,
)
from omnicc.config import ConfigError, Destination, OmniccConfig, parse_config
from omnicc.events import EventLog
from omnicc.outbound_call import forward_plan
from omnicc.render import render_asterisk
from omnicc.routing import decide_destination, decide_inbound

from .test_outbound_call import MemoryChannels, MemoryEventLog

CONFIG = """\
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
    trunks:
      - name: carrier-a
        address: 127.0.0.100
        dial_host: 127.0.0.101
        max_channels: 1
        caller_id: {number: "+15550001", send_pai: true}
      - name: carrier-b
        address: 127.0.0.102
        dial_host: 127.0.0.102
        caller_id: {send_rpid: true, trust_id_outbound: true}
      - name: carrier-c
        address: 127.0.0.104
        dial_host: 127.0.0.104
        caller_id: {number: "+15550003", forwarded: pass}
      - {name: hq, kind: pbx, address: 127.0.0.103, dial_host: 127.0.0.103}
    outbound_routes:
      - {name: us, patterns: ["_+1NXXNXXXXXX"], trunks: [carrier-a, carrier-b]}
      - {name: branded, patterns: ["_+1555019XXXX"], trunks: [carrier-b, carrier-a],
         caller_id: "+15550100"}
      - {name: pass-then-replace, patterns: ["_+1555028XXXX"], trunks: [carrier-c, carrier-a]}
    queues:
      - {name: sales, caller_id: "+15550999", overflow: "external:+15552220000"}
      - {name: support, overflow: "external:+15552220000"}
    time_groups:
      - {name: always, timezone: UTC, rules: [{weekdays: mon-sun}]}
    time_conditions:
      - {name: open, time_group: always, matched: "external:+15553330000", unmatched: busy}
    ivrs:
      - {name: menu, prompt: beep, options: {"1": "pbx:2001", "2": "external:+15553330000"}}
    inbound_routes:
      - {did: "5550700", destination: "external:+15552220000"}
      - {did: "5550701", destination: "pbx:2001"}
      - {did: "5550702", destination: "time_condition:open"}
      - {did: "5550703", destination: "external:+15550190000"}
      - {did: "5550704", destination: "external:+15550280000"}
"""
UNIQUEID = "1700000000.1"   # what the fake Asterisk sends (agi/testing.py)
CALLER = "5551234"          # its agi_callerid


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


# ---------------------------------------------------------------------------- caller ID


CARRIER = TrunkPolicy(number="+15550001", pass_forwarded=False)
BARE_CARRIER = TrunkPolicy()
PBX = TrunkPolicy(pass_forwarded=True)


@pytest.mark.parametrize(("trunk", "forwarded", "queue", "route", "expected"), [
    # An agent's call: queue > route > trunk > the agent's own.
    (CARRIER, False, "+1q", "+1r", CallerId("+1q", CallerIdSource.QUEUE)),
    (CARRIER, False, "", "+1r", CallerId("+1r", CallerIdSource.ROUTE)),
    (CARRIER, False, "", "", CallerId("+15550001", CallerIdSource.TRUNK)),
    (BARE_CARRIER, False, "", "", CallerId("1001", CallerIdSource.CALLER)),
    # A forwarded call on a carrier that replaces: the same order.
    (CARRIER, True, "+1q", "+1r", CallerId("+1q", CallerIdSource.QUEUE)),
    (CARRIER, True, "", "", CallerId("+15550001", CallerIdSource.TRUNK)),
    (BARE_CARRIER, True, "", "", CallerId("1001", CallerIdSource.CALLER)),
    # A forwarded call on a trunk that passes it through (a PBX): the caller's own,
    # whatever the queue and route say.
    (PBX, True, "+1q", "+1r", CallerId("1001", CallerIdSource.CALLER)),
    # ...but an agent's call to the PBX still gets the configured numbers.
    (TrunkPolicy("+1pbx", True), False, "", "", CallerId("+1pbx", CallerIdSource.TRUNK)),
    (TrunkPolicy("+1pbx", True), False, "", "+1r", CallerId("+1r", CallerIdSource.ROUTE)),
])
def test_the_caller_id_precedence(trunk: TrunkPolicy, forwarded: bool, queue: str, route: str,
                                  expected: CallerId) -> None:
    assert choose_caller_id(trunk, caller="1001", forwarded=forwarded, queue=queue,
                            route=route) == expected


@pytest.mark.parametrize(("kind", "forwarded", "passes"), [
    ("carrier", None, False), ("pbx", None, True),
    ("carrier", "pass", True), ("pbx", "replace", False),
])
def test_a_trunk_passes_forwarded_callers_by_its_kind_unless_told(
        kind: str, forwarded: str | None, passes: bool) -> None:
    assert passes_forwarded(kind, forwarded) is passes


# ---------------------------------------------------------------------------- config


def test_forward_destinations_parse_and_name_their_pbx_trunk(config: OmniccConfig) -> None:
    tenant = config.tenants[0]
    assert str(Destination.parse("external:+15552220000")) == "external:+15552220000"
    assert Destination.parse("pbx:2001@hq") == Destination(kind="pbx", target="2001",
                                                           trunk="hq")
    assert tenant.trunk("hq") is not None and tenant.trunk("hq").kind == "pbx"
    assert tenant.trunks[0].kind == "carrier"
    assert tenant.queue("sales").caller_id == "+15550999"
    assert tenant.forward_destinations == {
        "external:+15552220000", "pbx:2001@hq", "external:+15553330000",
        "external:+15550190000", "external:+15550280000"}
    plan = forward_plan(tenant, Destination.parse("pbx:2001@hq"))
    assert (plan.route, plan.number, plan.trunks, plan.caller_id) == (
        "pbx:hq", "2001", ("hq",), "")
    plan = forward_plan(tenant, Destination.parse("external:+15550190000"))
    assert (plan.route, plan.trunks, plan.caller_id) == (
        "branded", ("carrier-b", "carrier-a"), "+15550100")


@pytest.mark.parametrize(("destination", "message"), [
    ("external:555&PJSIP/x@evil", "'external:': dialled number '555&PJSIP/x@evil': "
                                  "character '&' at position 4 is not allowed"),
    ("external:1,2", "character ',' at position 2 is not allowed"),
    ("external:", "'external:': dialled number is empty"),
    ("pbx:20)1", "'pbx:' extension: dialled number '20)1': character ')'"),
    ("pbx:2001@Bad.Trunk", "'pbx:EXT@TRUNK' needs a trunk name"),
    ("voicemail:1", "'external:NUMBER', 'pbx:EXT[@TRUNK]', 'hangup' or 'busy'"),
])
def test_a_bad_forward_destination_is_refused_where_it_is_written(
        destination: str, message: str) -> None:
    text = CONFIG.replace('destination: "external:+15552220000"',
                          f'destination: "{destination}"')
    error = config_error(text)
    assert "tenants[0].inbound_routes[0].destination" in error
    assert message in error


def test_an_external_number_without_a_route_is_a_config_error_at_load() -> None:
    text = CONFIG.replace('matched: "external:+15553330000"', 'matched: "external:+445550000"')
    error = config_error(text)
    assert ("tenants[0].time_conditions[0].matched: the matched destination of time "
            "condition open goes to external:+445550000: no outbound route matches "
            "'+445550000'") in error
    line = CONFIG.splitlines().index(
        next(x for x in CONFIG.splitlines() if "name: open" in x)) + 1
    assert f"omnicc.yaml:{line}:" in error


def test_a_pbx_destination_needs_exactly_one_pbx_trunk_or_a_name() -> None:
    no_pbx = CONFIG.replace("{name: hq, kind: pbx,", "{name: hq,")
    assert ("inbound route 5550701 goes to pbx:2001: this tenant has no PBX trunk "
            "(kind: pbx) with a dial_host") in config_error(no_pbx)
    two = CONFIG.replace(
        "      - {name: hq, kind: pbx,",
        "      - {name: branch, kind: pbx, address: 127.0.0.105, dial_host: 127.0.0.105}\n"
        "      - {name: hq, kind: pbx,")
    assert ("this tenant has 2 PBX trunks (branch, hq): name one, as pbx:EXT@TRUNK"
            in config_error(two))
    named = parse_config(two.replace('"pbx:2001"', '"pbx:2001@branch"'))
    assert "pbx:2001@branch" in named.tenants[0].forward_destinations
    not_pbx = CONFIG.replace('"pbx:2001"', '"pbx:2001@carrier-a"')
    assert "trunk carrier-a is not a PBX trunk (kind: pbx)" in config_error(not_pbx)
    unknown = CONFIG.replace('"pbx:2001"', '"pbx:2001@nope"')
    assert "trunk nope is not among this tenant's trunks" in config_error(unknown)


def test_caller_id_numbers_are_checked_as_dialled_numbers() -> None:
    error = config_error(CONFIG.replace('number: "+15550001"', 'number: "+1555;x"'))
    assert "tenants[0].trunks[0].caller_id.number: dialled number" in error
    error = config_error(CONFIG.replace('caller_id: "+15550999"', 'caller_id: "99 9"'))
    assert "tenants[0].queues[0].caller_id: dialled number '99 9'" in error
    error = config_error(CONFIG.replace("forwarded: pass", "forwarded: maybe"))
    assert "tenants[0].trunks[2].caller_id.forwarded" in error
    error = config_error(CONFIG.replace("kind: pbx", "kind: registrar"))
    assert "tenants[0].trunks[3].kind: Input should be 'carrier' or 'pbx'" in error


def test_the_trunk_endpoints_carry_the_identity_headers_asked_for(
        config: OmniccConfig, tmp_path: Path) -> None:
    render_asterisk(config, tmp_path)
    pjsip = (tmp_path / "pjsip.conf").read_text()

    def endpoint(name: str) -> str:
        return pjsip.split(f"[trunk.acme.{name}]\ntype = endpoint")[1].split("\n[")[0]

    assert "send_pai = yes\nsend_rpid = no\ntrust_id_outbound = no" in endpoint("carrier-a")
    assert "send_pai = no\nsend_rpid = yes\ntrust_id_outbound = yes" in endpoint("carrier-b")
    assert "send_pai = no\nsend_rpid = no\ntrust_id_outbound = no" in endpoint("hq")


# ---------------------------------------------------------------------------- routing


def test_routing_answers_forward_destinations_named_as_the_call_path_names_them(
        config: OmniccConfig) -> None:
    tenant = config.tenants[0]
    decision = decide_inbound(config, "acme", "5550701")
    assert (decision.destination, decision.forward) == ("pbx", "pbx:2001@hq")
    decision = decide_inbound(config, "acme", "5550702")  # through the time condition
    assert (decision.destination, decision.forward) == ("external", "external:+15553330000")
    assert [step.destination for step in decision.steps] == ["external:+15553330000"]
    overflow = tenant.queue("sales").overflow_destination
    assert decide_destination(tenant, "5550700", overflow).forward == "external:+15552220000"


# ---------------------------------------------------------------------------- AGI


class Harness:
    def __init__(self, config: OmniccConfig):
        self.events = MemoryEventLog()
        self.store = MemoryChannels()
        self.calls = OutboundCalls(config, cast(EventLog, self.events),
                                   HeldTrunkChannels(self.store))
        self.inbound = InboundRoute(config, cast(EventLog, self.events))
        self.forward_call = ForwardCall(config, self.calls)
        self.result = OutboundResult(self.calls)

    def run(self, handler: Any, script: str, params: dict[str, str],
            variables: dict[str, str] | None = None) -> FakeCallRecord:
        return run_async(drive_session(handler, script=script, params=params,
                                       variables=variables or {}, command_timeout=0.5))

    def forward(self, forward: str, queue: str = "") -> FakeCallRecord:
        return self.run(self.forward_call, "forward_call",
                        {"tenant": "acme", "forward": forward, "queue": queue})

    def after(self, forward: str, trunk: str, *, queue: str = "", caller: str = CALLER,
              tech: str = "SIP 503 Service Unavailable", ast: str = "34",
              dialstatus: str = "CHANUNAVAIL") -> FakeCallRecord:
        channel = f"PJSIP/trunk.acme.{trunk}-00000007"
        variables = {"HANGUPCAUSE_KEYS()": channel, f"HANGUPCAUSE({channel},tech)": tech,
                     f"HANGUPCAUSE({channel},ast)": ast}
        # The DID and no agent: what the dialplan's outbound label sends for a forward.
        return self.run(self.result, "outbound_result",
                        {"tenant": "acme", "agent": "", "dialled": "5550700", "trunk": trunk,
                         "dialstatus": dialstatus, "forward": forward, "queue": queue,
                         "caller": caller}, variables)


@pytest.fixture
def harness(config: OmniccConfig) -> Harness:
    return Harness(config)


def test_inbound_route_answers_external_with_the_destination(harness: Harness) -> None:
    record = harness.run(harness.inbound, "inbound_route",
                         {"tenant": "acme", "did": "5550700", "trunk": "carrier-a"})
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DEST"] == "external"
    assert record.variables["OMNICC_FORWARD"] == "external:+15552220000"
    assert "OMNICC_DIAL" not in record.variables  # forward_call dials, not the route
    (routed,) = harness.events.named("call_routed")
    assert (routed["destination"], routed["forward"]) == ("external", "external:+15552220000")


def test_an_ivr_option_answers_a_forward_destination(config: OmniccConfig,
                                                    harness: Harness) -> None:
    from agi.handlers.ivr import IvrEntry

    ivr = IvrEntry(config, cast(EventLog, harness.events))
    record = harness.run(ivr, "ivr_entry", {"tenant": "acme", "ivr": "menu", "entry": "1",
                                            "attempt": "1", "did": "5550700"})
    assert (record.variables["OMNICC_DEST"], record.variables["OMNICC_FORWARD"]) == (
        "pbx", "pbx:2001@hq")
    (routed,) = harness.events.named("call_routed")
    assert (routed["route"], routed["forward"]) == ("ivr:menu", "pbx:2001@hq")


def test_an_external_destination_goes_out_by_the_routes_with_the_trunks_number(
        harness: Harness) -> None:
    record = harness.forward("external:+15552220000")
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DEST"] == "outbound"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+15552220000@trunk.acme.carrier-a"
    assert record.variables["OMNICC_OUTBOUND_FOR"] == "external:+15552220000"
    # A carrier replaces a forwarded caller's number by its own; the original is kept.
    assert record.variables["CALLERID(num)"] == "+15550001"
    assert record.variables["OMNICC_CALLER_NUM"] == CALLER
    assert harness.store.in_use == {("acme", "carrier-a"): {UNIQUEID}}
    assert harness.events.names() == ["outbound_routed", "outbound_trunk_dialled"]
    routed = harness.events.named("outbound_routed")[0]
    assert (routed["route"], routed["agent"], routed["forward"]) == (
        "us", "", "external:+15552220000")
    dialled = harness.events.named("outbound_trunk_dialled")[0]
    assert (dialled["caller_id"], dialled["caller_id_source"]) == ("+15550001", "trunk")


def test_a_pbx_destination_dials_the_extension_and_passes_the_caller_through(
        harness: Harness) -> None:
    record = harness.forward("pbx:2001@hq")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/2001@trunk.acme.hq"
    assert "CALLERID(num)" not in record.variables  # the caller's own: left as it is
    dialled = harness.events.named("outbound_trunk_dialled")[0]
    assert (dialled["trunk"], dialled["caller_id"], dialled["caller_id_source"]) == (
        "hq", CALLER, "caller")


def test_the_queues_caller_id_comes_first(harness: Harness) -> None:
    record = harness.forward("external:+15552220000", queue="sales")
    assert record.variables["CALLERID(num)"] == "+15550999"
    assert record.variables["OMNICC_OUTBOUND_QUEUE"] == "sales"
    # A queue without one: the trunk's.
    record = harness.forward("external:+15552220000", queue="support")
    assert record.variables["CALLERID(num)"] == "+15550001"


@pytest.mark.parametrize("forward", ["external:+15559990000", "pbx:2002@hq", "agent:1001",
                                     "external:555&PJSIP/x@evil", ""])
def test_only_the_tenants_own_forward_destinations_go_out(harness: Harness,
                                                         forward: str) -> None:
    record = harness.forward(forward)
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == (
        "ERROR", "34")
    assert "OMNICC_DIAL" not in record.variables
    assert harness.events.events == []


def test_a_503_fails_a_forwarded_call_over_with_the_next_trunks_caller_id(
        harness: Harness) -> None:
    harness.forward("external:+15550190000")  # branded: carrier-b, then carrier-a
    record = harness.after("external:+15550190000", "carrier-b")
    assert record.variables["OMNICC_OUTBOUND_NEXT"] == "dial"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+15550190000@trunk.acme.carrier-a"
    # The route's number on both trunks: nothing to change.
    assert "CALLERID(num)" not in record.variables
    (result,) = harness.events.named("outbound_dial_result")
    assert (result["decision"], result["forward"], result["agent"]) == (
        "try_next_trunk", "external:+15550190000", "")


def test_the_next_trunk_puts_the_callers_own_number_back_or_its_own(
        harness: Harness) -> None:
    # carrier-c passes forwarded callers through, carrier-a replaces them.
    first = harness.forward("external:+15550280000")
    assert "CALLERID(num)" not in first.variables
    record = harness.after("external:+15550280000", "carrier-c")
    assert record.variables["CALLERID(num)"] == "+15550001"
    # The other way round (us: carrier-a, carrier-b): carrier-b has no number of its own,
    # so the caller's goes back.
    record = harness.after("external:+15552220000", "carrier-a")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+15552220000@trunk.acme.carrier-b"
    assert record.variables["CALLERID(num)"] == CALLER


def test_busy_stops_a_forwarded_call_there(harness: Harness) -> None:
    record = harness.after("external:+15552220000", "carrier-a", tech="SIP 486 Busy Here",
                           ast="17", dialstatus="BUSY")
    assert "OMNICC_OUTBOUND_NEXT" not in record.variables
    assert record.variables["OMNICC_CAUSE"] == "17"


@pytest.mark.parametrize("forward", ["external:+15559990000", "pbx:2002@hq", "nonsense"])
def test_an_outbound_result_for_a_forward_the_tenant_lacks_ends_the_call(
        harness: Harness, forward: str) -> None:
    record = harness.after(forward, "carrier-a")
    assert "OMNICC_DIAL" not in record.variables
    assert "OMNICC_OUTBOUND_NEXT" not in record.variables
    assert record.variables["OMNICC_CAUSE"] in ("34", "42")


def test_an_agents_call_gets_the_trunks_number_when_its_route_has_none(
        config: OmniccConfig) -> None:
    from agi.handlers.agent_call import AgentCall

    harness = Harness(config)
    agent_call = AgentCall(config, cast(EventLog, harness.events), harness.calls)
    record = harness.run(agent_call, "agent_call",
                         {"tenant": "acme", "agent": "1001", "dialled": "+15552220000"})
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+15552220000@trunk.acme.carrier-a"
    assert record.variables["CALLERID(num)"] == "+15550001"
    assert "OMNICC_OUTBOUND_FOR" not in record.variables
    routed = harness.events.named("outbound_routed")[0]
    assert (routed["agent"], routed.get("forward")) == ("1001", None)
