"""Recording policy (`record: always | never`, and `on_demand` for queues; YAML booleans
still read as always/never) for queues and inbound routes, the route recording's file
name, the inbound_route handler's answer and call_recording event, and the on-demand
queue recording (queue_answer offers it, queue_record starts and stops it) over the fake
Asterisk."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from agi.handlers.inbound_route import InboundRoute
from agi.handlers.queue_call import QueueAnswer, QueueRecord, recording_file
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.config import ConfigError, OmniccConfig, parse_config
from omnicc.events import EventLog
from omnicc.recording import route_recording_file

from .test_queue_call import FakeStore

CONFIG = """\
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", name: Alice, password: "pass-1001-long"}
    inbound_routes:
      - {did: "+5550100", destination: "agent:1001", record: always}
      - {did: "5550101", destination: "agent:1001", record: never}
      - {did: "5550102", destination: "queue:sales", record: true}
      - {did: "5550103", destination: "queue:sales"}
    queues:
      - {name: sales, members: [{agent: "1001"}], record: false}
      - {name: support, members: [{agent: "1001"}], record: always}
      - {name: desk, members: [{agent: "1001"}], record: on_demand}
"""

NOON_2026_11_26 = 1795694400.0


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


def test_policies_and_the_booleans_of_the_first_form(config: OmniccConfig) -> None:
    tenant = config.tenants[0]
    assert [r.record for r in tenant.inbound_routes] == ["always", "never", "always", "never"]
    assert [q.record for q in tenant.queues] == ["never", "always", "on_demand"]


# on_demand is a queue's: an agent route's call has no agent leg omnicc answers on.
@pytest.mark.parametrize("value", ["sometimes", "on_demand", "1", "[always]"])
def test_an_unknown_policy_is_refused_with_its_key(value: str) -> None:
    text = CONFIG.replace("record: never}", f"record: {value}}}")
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any("inbound_routes[1].record: Input should be 'always' or 'never'" in p
               for p in caught.value.problems), caught.value.problems


def test_the_route_file_scheme() -> None:
    assert (route_recording_file("acme", "+5550100", "1764158400.7", NOON_2026_11_26)
            == "acme/route-5550100/2026-11-26/1764158400.7.wav")


@pytest.mark.parametrize(("did", "uniqueid"), [
    ("5550100", "../../etc/x"), ("5550100", ".."), ("5550100", ""), ("5550100", "a/b"),
    ("555/0100", "1.2"), ("", "1.2"), ("+", "1.2"), ("1" * 21, "1.2"),
])
def test_no_file_name_from_anything_else(did: str, uniqueid: str) -> None:
    assert route_recording_file("acme", did, uniqueid, NOON_2026_11_26) is None


class MemoryEventLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def append(self, tenant: str, event: str, **fields: Any) -> str:
        self.events.append((tenant, event, fields))
        return f"{len(self.events)}-0"


def route(config: OmniccConfig, did: str) -> tuple[FakeCallRecord, MemoryEventLog]:
    log = MemoryEventLog()
    record = run_async(drive_session(InboundRoute(config, cast(EventLog, log)),
                                     script="inbound_route",
                                     params={"tenant": "acme", "did": did},
                                     command_timeout=0.5))
    return record, log


def test_a_recording_route_names_the_file_and_indexes_it_with_its_call(
        config: OmniccConfig) -> None:
    record, log = route(config, "+5550100")
    assert record.variables["OMNICC_DEST"] == "agent"
    assert record.variables["OMNICC_STATUS"] == "OK"
    recording = record.variables["OMNICC_ROUTE_RECORDING"]
    assert re.fullmatch(r"acme/route-5550100/\d{4}-\d{2}-\d{2}/1700000000\.1\.wav", recording)
    events = [e for e in log.events if e[1] == "call_recording"]
    assert len(events) == 1
    fields = events[0][2]
    assert (fields["call"], fields["uniqueid"], fields["route"], fields["agent"],
            fields["recording"]) == ("1700000000.1", "1700000000.1", "+5550100", "1001",
                                     recording)


def test_a_route_to_a_queue_records_too(config: OmniccConfig) -> None:
    record, log = route(config, "5550102")
    assert record.variables["OMNICC_ROUTE_RECORDING"].startswith("acme/route-5550102/")
    (event,) = [e[2] for e in log.events if e[1] == "call_recording"]
    assert (event["queue"], event["agent"]) == ("sales", "")


@pytest.mark.parametrize("did", ["5550101", "5550103"])
def test_a_route_that_does_not_record_sets_nothing(config: OmniccConfig, did: str) -> None:
    record, log = route(config, did)
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert "OMNICC_ROUTE_RECORDING" not in record.variables
    assert "call_recording" not in [e[1] for e in log.events]


# ---------------------------------------------------------------------------- on demand

CALL = "1700000000.1-desk"


def answered(config: OmniccConfig, queue: str, call: str) -> tuple[FakeCallRecord,
                                                                   MemoryEventLog, str]:
    log = MemoryEventLog()
    name = recording_file("acme", queue, call, NOON_2026_11_26)
    handler = QueueAnswer(config, FakeStore(), cast(EventLog, log))
    record = run_async(drive_session(handler, script="queue_answer", params={
        "tenant": "acme", "call": call, "offers": "1001:5", "agent": "1001",
        "recording": name}, command_timeout=0.5))
    return record, log, name


def test_an_on_demand_queue_offers_the_file_and_records_nothing_yet(
        config: OmniccConfig) -> None:
    record, log, name = answered(config, "desk", CALL)
    assert record.variables == {"OMNICC_RECORD_ON_DEMAND": name, "OMNICC_STATUS": "OK"}
    assert log.events == []


def test_an_always_queue_records_at_the_answer(config: OmniccConfig) -> None:
    record, log, name = answered(config, "support", "1700000000.1-support")
    assert record.variables == {"OMNICC_RECORD": name, "OMNICC_STATUS": "OK"}
    assert [(e[1], e[2]["mode"]) for e in log.events] == [("call_recording", "always")]


def record_key(config: OmniccConfig, **params: str) -> tuple[FakeCallRecord, MemoryEventLog]:
    log = MemoryEventLog()
    record = run_async(drive_session(QueueRecord(config, FakeStore(), cast(EventLog, log)),
                                     script="queue_record", params=params,
                                     command_timeout=0.5))
    return record, log


def test_the_agent_starts_then_stops_an_on_demand_recording(config: OmniccConfig) -> None:
    name = recording_file("acme", "desk", CALL, NOON_2026_11_26)
    record, log = record_key(config, recording=name, agent="1001", action="start")
    assert record.variables == {"OMNICC_RECORD": name, "OMNICC_STATUS": "OK"}
    (event,) = log.events
    assert (event[0], event[1]) == ("acme", "call_recording")
    assert event[2] == {"call": CALL, "queue": "desk", "agent": "1001", "recording": name,
                        "mode": "on_demand"}
    record, log = record_key(config, recording=name, agent="1001", action="stop")
    assert record.variables == {"OMNICC_STATUS": "OK"}
    assert [(e[1], e[2]["call"]) for e in log.events] == [("call_recording_stopped", CALL)]


@pytest.mark.parametrize(("recording", "agent", "action"), [
    ("acme/support/2026-11-26/1700000000.1-support.wav", "1001", "start"),  # always queue
    ("acme/sales/2026-11-26/1700000000.1-sales.wav", "1001", "start"),      # never queue
    ("acme/nosuch/2026-11-26/1700000000.1-nosuch.wav", "1001", "start"),
    ("globex/desk/2026-11-26/1700000000.1-desk.wav", "1001", "start"),      # no tenant
    ("../../etc/passwd", "1001", "start"),
    ("acme/desk/2026-11-26/1700000000.1-desk.wav", "1001", "toggle"),
    ("acme/desk/2026-11-26/1700000000.1-desk.wav", "10x1", "start"),
    ("", "1001", "start"),
])
def test_anything_but_an_on_demand_queue_calls_file_is_refused(
        config: OmniccConfig, recording: str, agent: str, action: str) -> None:
    record, log = record_key(config, recording=recording, agent=agent, action=action)
    assert record.variables == {"OMNICC_STATUS": "REFUSED"}
    assert log.events == []
