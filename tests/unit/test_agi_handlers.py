"""The FastAGI handlers over a real AGISession, with the fake Asterisk peer and an in-memory
event log, and the route table agi/app.py builds from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from agi.app import build_routes
from agi.handlers.call_end import CallEnd
from agi.handlers.health import health
from agi.handlers.inbound_route import InboundRoute
from agi.server import Handler
from agi.testing import FakeCallRecord, default_environment, drive_session, run_async
from omnicc.config import OmniccConfig, load_config, parse_config
from omnicc.events import EventLog

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "omnicc.yaml"

# What the fake Asterisk sends in every environment (agi/testing.py default_environment).
FAKE_ENV = default_environment("127.0.0.1", 4573, "x")
UNIQUEID = FAKE_ENV["agi_uniqueid"]
CHANNEL = FAKE_ENV["agi_channel"]
CALLER = FAKE_ENV["agi_callerid"]

TWO_TENANTS = """
tenants:
  - name: acme
    domain: acme.example
    agents: [{extension: "1001", password: "acme-pass-1001"}]
    inbound_routes: [{did: "5550100", destination: "agent:1001"}]
  - name: globex
    domain: globex.example
    agents: [{extension: "2001", password: "globex-pass-2001"}]
    inbound_routes: [{did: "5550200", destination: "agent:2001"}]
"""


@dataclass
class RecordedEvent:
    tenant: str
    event: str
    fields: dict[str, Any]


class MemoryEventLog:
    """Stands in for EventLog (which appends to a Redis stream): keeps events in a list."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    async def append(self, tenant: str, event: str, **fields: Any) -> str:
        self.events.append(RecordedEvent(tenant, event, fields))
        return f"{len(self.events)}-0"


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture
def events() -> MemoryEventLog:
    return MemoryEventLog()


def as_event_log(log: MemoryEventLog) -> EventLog:
    # The handlers only call append(); the in-memory log has the same signature.
    return cast(EventLog, log)


def run_handler(handler: Handler, script: str, params: dict[str, str]) -> FakeCallRecord:
    """One call to `handler` over a real AGISession talking to the fake Asterisk."""
    return run_async(drive_session(handler, script=script, params=params, command_timeout=0.5))


def inbound(config: OmniccConfig, log: MemoryEventLog, **params: str) -> FakeCallRecord:
    return run_handler(InboundRoute(config, as_event_log(log)), "inbound_route", params)


def call_end(config: OmniccConfig, log: MemoryEventLog, **params: str) -> FakeCallRecord:
    return run_handler(CallEnd(config, as_event_log(log)), "call_end", params)


def assert_single_line(value: str) -> None:
    assert value and not any(ch in value for ch in "\r\n\0"), repr(value)


# ---------------------------------------------------------------------------- inbound_route


def test_a_routed_did_sets_the_agent_variables_and_records_call_routed(
    config: OmniccConfig, events: MemoryEventLog
) -> None:
    record = inbound(config, events, tenant="default", did="5550100", trunk="demo-carrier")
    assert record.variables["OMNICC_DEST"] == "agent"
    assert record.variables["OMNICC_AGENT"] == "1001"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1001@default.omnicc.test"
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert "OMNICC_ERROR" not in record.variables
    # STATUS comes last: a handler that fails half-way never leaves OK behind.
    assert record.commands[-1] == ("SET", "VARIABLE", "OMNICC_STATUS", "OK")
    assert events.events == [RecordedEvent("default", "call_routed", {
        "route": "5550100", "destination": "agent", "agent": "1001", "uniqueid": UNIQUEID,
        "did": "5550100",
        "trunk": "demo-carrier", "caller": CALLER, "channel": CHANNEL,
    })]


def test_a_hangup_destination_sets_no_agent(config: OmniccConfig, events: MemoryEventLog) -> None:
    record = inbound(config, events, tenant="default", did="5550199", trunk="demo-carrier")
    assert record.variables["OMNICC_DEST"] == "hangup"
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert "OMNICC_AGENT" not in record.variables
    assert "OMNICC_DIAL" not in record.variables
    (event,) = events.events
    assert (event.event, event.fields["destination"], event.fields["agent"]) == (
        "call_routed", "hangup", "",
    )


def test_an_unknown_did_is_an_error_recorded_as_call_unrouted(
    config: OmniccConfig, events: MemoryEventLog
) -> None:
    record = inbound(config, events, tenant="default", did="5559999", trunk="demo-carrier")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert "5559999" in record.variables["OMNICC_ERROR"]
    assert_single_line(record.variables["OMNICC_ERROR"])
    assert "OMNICC_DEST" not in record.variables
    assert "OMNICC_DIAL" not in record.variables
    assert record.commands[-1] == ("SET", "VARIABLE", "OMNICC_STATUS", "ERROR")
    (event,) = events.events
    assert (event.tenant, event.event) == ("default", "call_unrouted")
    assert "5559999" in event.fields["reason"]
    assert (event.fields["did"], event.fields["trunk"], event.fields["uniqueid"]) == (
        "5559999", "demo-carrier", UNIQUEID,
    )


@pytest.mark.parametrize("params", [
    {"tenant": "nobody", "did": "5550100"},
    {"did": "5550100"},  # Kamailio tagged nothing: the call did not come from a trunk
    {},
], ids=["unknown-tenant", "no-tenant", "no-params"])
def test_an_unknown_tenant_is_an_error_with_no_event(
    config: OmniccConfig, events: MemoryEventLog, params: dict[str, str]
) -> None:
    record = inbound(config, events, **params)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert_single_line(record.variables["OMNICC_ERROR"])
    assert "OMNICC_DIAL" not in record.variables
    # There is no tenant stream to write to, and no other tenant may see the call.
    assert events.events == []


@pytest.mark.parametrize("did", ["555\n0100", "5550100\r\nSET VARIABLE OMNICC_STATUS OK",
                                 'say "hi" \\ there', "5550100\u2028x"])
def test_the_error_message_is_one_line_whatever_the_did(
    config: OmniccConfig, events: MemoryEventLog, did: str
) -> None:
    # A channel variable set over AGI cannot hold a line break (and a line break in a
    # command would start another command).
    record = inbound(config, events, tenant="default", did=did)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert_single_line(record.variables["OMNICC_ERROR"])
    assert all(command[:3] != ("SET", "VARIABLE", "OMNICC_DIAL") for command in record.commands)


def test_a_tenant_cannot_route_to_another_tenants_did(events: MemoryEventLog) -> None:
    config = parse_config(TWO_TENANTS)
    record = inbound(config, events, tenant="acme", did="5550200")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert "OMNICC_DIAL" not in record.variables
    # The failure is acme's to see; nothing is written to globex's stream.
    assert [(e.tenant, e.event) for e in events.events] == [("acme", "call_unrouted")]


def test_each_tenant_dials_its_own_domain(events: MemoryEventLog) -> None:
    config = parse_config(TWO_TENANTS)
    record = inbound(config, events, tenant="globex", did="5550200")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:2001@globex.example"
    assert [(e.tenant, e.event) for e in events.events] == [("globex", "call_routed")]


# ---------------------------------------------------------------------------- call_end


def test_call_end_records_how_the_call_ended(config: OmniccConfig, events: MemoryEventLog) -> None:
    record = call_end(config, events, tenant="default", did="5550100", dest="agent",
                      agent="1001", dialstatus="ANSWER", cause="16", answered="42")
    assert events.events == [RecordedEvent("default", "call_ended", {
        "uniqueid": UNIQUEID, "did": "5550100", "destination": "agent", "agent": "1001",
        "dialstatus": "ANSWER", "cause": "16", "answered_seconds": "42",
    })]
    # The channel is already gone: call_end only records, it sends no command.
    assert record.commands == []


def test_call_end_of_an_unanswered_call_records_zero_seconds(
    config: OmniccConfig, events: MemoryEventLog
) -> None:
    call_end(config, events, tenant="default", did="5550100", dest="agent", agent="1001",
             dialstatus="NOANSWER", cause="19", answered="")
    (event,) = events.events
    assert (event.fields["dialstatus"], event.fields["answered_seconds"]) == ("NOANSWER", "0")


def test_call_end_with_missing_fields_records_empty_ones(
    config: OmniccConfig, events: MemoryEventLog
) -> None:
    # A call that failed before inbound_route ran has no destination or agent.
    call_end(config, events, tenant="default")
    (event,) = events.events
    assert event.fields["agent"] == event.fields["dialstatus"] == ""
    assert event.fields["answered_seconds"] == "0"


@pytest.mark.parametrize("tenant", ["nobody", ""])
def test_call_end_for_an_unknown_tenant_records_nothing(
    config: OmniccConfig, events: MemoryEventLog, tenant: str
) -> None:
    record = call_end(config, events, tenant=tenant, did="5550100", dialstatus="ANSWER",
                      agent="1001", answered="10")
    assert events.events == []
    assert record.commands == []


# ---------------------------------------------------------------------------- the route table


def test_build_routes_answers_exactly_the_dialplans_scripts(
    config: OmniccConfig, events: MemoryEventLog
) -> None:
    routes = build_routes(config, as_event_log(events))
    assert set(routes) == {"health", "inbound_route", "ivr_entry", "call_end", "agent_call",
                           "transfer", "transfer_attended", "customer_entry",
                           "registered_call"}
    assert routes["health"] is health
    assert isinstance(routes["inbound_route"], InboundRoute)
    assert isinstance(routes["call_end"], CallEnd)


def test_health_answers_ok(config: OmniccConfig, events: MemoryEventLog) -> None:
    record = run_handler(build_routes(config, as_event_log(events))["health"], "health", {})
    assert record.variables == {"OMNICC_STATUS": "OK"}
    assert events.events == []


# ---------------------------------------------------------------------------- agent_call


def agent_call(config: OmniccConfig, events: MemoryEventLog, **params: str) -> FakeCallRecord:
    from agi.handlers.agent_call import AgentCall

    return run_handler(AgentCall(config, as_event_log(events)), "agent_call", params)


def test_agent_call_to_another_agent_dials_it(config: OmniccConfig,
                                              events: MemoryEventLog) -> None:
    record = agent_call(config, events, tenant="default", agent="1001", dialled="1002")
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1002@default.omnicc.test"
    assert [(e.event, e.fields["from_agent"], e.fields["agent"]) for e in events.events] == [
        ("agent_call_routed", "1001", "1002")]


@pytest.mark.parametrize(("caller", "dialled"), [
    ("1001", "0044123456789"),   # an outside number: no outbound routes yet
    ("1001", "1009"),            # no such agent
    ("1009", "1002"),            # the caller is not an agent of this tenant
])
def test_agent_call_without_a_route_is_refused_with_404(
    config: OmniccConfig, events: MemoryEventLog, caller: str, dialled: str
) -> None:
    record = agent_call(config, events, tenant="default", agent=caller, dialled=dialled)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_CAUSE"] == "1"
    assert "OMNICC_DIAL" not in record.variables
    assert [e.event for e in events.events] == ["agent_call_unrouted"]


def test_agent_call_of_another_tenant_is_not_routed(events: MemoryEventLog) -> None:
    two = parse_config(TWO_TENANTS)
    record = agent_call(two, events, tenant="acme", agent="1001", dialled="2001")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
