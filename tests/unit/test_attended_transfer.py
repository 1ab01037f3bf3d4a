"""Attended transfers to an outside number and to a queue, and of queue calls: what the
consultation reached (omnicc/transfer.py attended_target, queue_of_did), the
transfer_attended and queue_transferred AGIs over the fake Asterisk and an in-memory ACD,
and agent_call joining a queue by its DID."""

from __future__ import annotations

import pytest

from agi.handlers.agent_call import AgentCall
from agi.handlers.transfer import QueueCallTransferred, TransferAttended
from omnicc.agent_state import CallState
from omnicc.config import OmniccConfig, parse_config
from omnicc.routing import RoutingError
from omnicc.transfer import AttendedTarget, attended_target, queue_of_did

from .test_agi_handlers import MemoryEventLog, as_event_log, run_handler
from .test_outbound_call import CONFIG as OUTBOUND_CONFIG
from .test_outbound_call import UNIQUEID, Harness
from .test_queue_transfer import CALL, MemoryAcd, status

CONFIG = """
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
      - {extension: "1002", password: "acme-pass-1002"}
    inbound_routes:
      - {did: "5550100", destination: "agent:1001"}
      - {did: "5550103", destination: "queue:support", priority: 5}
      - {did: "5550199", destination: "hangup"}
      - {pattern: "_5551XXX", destination: "queue:support"}
    queues:
      - {name: support, members: [{agent: "1002"}]}
    trunks:
      - {name: carrier, address: 192.0.2.1, dial_host: 192.0.2.1}
    outbound_routes:
      - {name: national, patterns: [_9NXXXXXX, _5551XXX], strip: 1, prepend: "+34",
         trunks: [carrier]}
  - name: globex
    domain: globex.example
    agents: [{extension: "2001", password: "globex-pass-2001"}]
    inbound_routes: [{did: "5550200", destination: "queue:help"}]
    queues: [{name: help, members: [{agent: "2001"}]}]
"""


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


# ------------------------------------------------------------------ what an agent reaches


@pytest.mark.parametrize(("dialled", "queue"), [
    ("5550103", "support"),  # written exactly, to a queue
    ("5550100", ""),         # a DID, but to an agent: dialled as before
    ("5550199", ""),         # a DID to hangup
    ("5551234", ""),         # matches a pattern route only: could be an outside number
    ("5550200", ""),         # globex's queue DID
    ("1002", ""),
    ("95551234", ""),
])
def test_only_a_did_written_exactly_for_a_queue_reaches_it(
    config: OmniccConfig, dialled: str, queue: str
) -> None:
    assert queue_of_did(config.tenant("acme"), dialled) == queue


@pytest.mark.parametrize(("leg", "target", "queue", "answering", "expected"), [
    ("", "1002", "", "", AttendedTarget("agent", agent="1002")),
    ("agent", "1002", "", "", AttendedTarget("agent", agent="1002")),
    ("outbound", "95551234", "", "",
     AttendedTarget("outbound", route="national", number="+345551234")),
    ("queue", "5550103", "support", "1002", AttendedTarget("queue", agent="1002",
                                                           queue="support")),
    # an answering agent omnicc does not know is not named
    ("queue", "5550103", "support", "2001", AttendedTarget("queue", queue="support")),
])
def test_the_target_of_an_attended_transfer(config: OmniccConfig, leg: str, target: str,
                                            queue: str, answering: str,
                                            expected: AttendedTarget) -> None:
    assert attended_target(config.tenant("acme"), leg, target, queue=queue,
                           answering=answering) == expected


@pytest.mark.parametrize(("leg", "target", "queue", "reason"), [
    ("", "5550103", "", "not an agent"),
    ("agent", "2001", "", "not an agent"),                  # globex's agent
    ("outbound", "1234", "", "no outbound route"),
    ("outbound", "9555&PJSIP/x@evil", "", "not allowed"),
    ("queue", "5550103", "help", "not a queue DID"),        # globex's queue
    ("queue", "5550100", "support", "not a queue DID"),     # a DID to an agent
    ("queue", "5550103", "", "not a queue DID"),
    ("transfer", "1002", "", "unknown consultation leg"),
])
def test_values_that_do_not_hold_together_are_refused(
    config: OmniccConfig, leg: str, target: str, queue: str, reason: str
) -> None:
    with pytest.raises(RoutingError, match=reason):
        attended_target(config.tenant("acme"), leg, target, queue=queue)


# ------------------------------------------------------------------ transfer_attended


def attended(config: OmniccConfig, acd: MemoryAcd | None = None,
             **params: str) -> tuple[list[dict[str, str]], list[str]]:
    events = MemoryEventLog()
    record = run_handler(TransferAttended(config, as_event_log(events), acd),
                         "transfer_attended", {"tenant": "acme", "call": "node-1.0",
                                               "consultation": "node-1.2", **params})
    assert record.commands == []  # a hang-up handler: it only records
    return ([e.fields for e in events.events if e.event == "call_transferred"],
            [e.event for e in events.events])


def test_an_attended_transfer_to_an_outside_number_is_logged(config: OmniccConfig) -> None:
    (event,), _ = attended(config, agent="1001", target="95551234", leg="outbound")
    assert (event["kind"], event["outcome"], event["destination"]) == (
        "attended", "bridged", "outbound")
    assert (event["from_agent"], event["target"], event["agent"]) == ("1001", "95551234", "")
    assert (event["route"], event["number"]) == ("national", "+345551234")
    assert (event["uniqueid"], event["consultation"]) == ("node-1.0", "node-1.2")


def test_an_attended_transfer_to_a_queue_is_logged_and_its_acd_call_ends(
    config: OmniccConfig,
) -> None:
    acd = MemoryAcd(status("1002"))
    (event,), _ = attended(config, acd, agent="1001", target="5550103", leg="queue",
                           queue="support", answering="1002", queue_call=CALL)
    assert (event["destination"], event["queue"], event["agent"]) == (
        "queue", "support", "1002")
    assert (event["from_agent"], event["target"]) == ("1001", "5550103")
    # 1002 talked with the transferred caller until now: it goes into wrap-up.
    assert acd.ended == [("acme", CALL, "caller")]


@pytest.mark.parametrize("params", [
    {"agent": "", "target": "95551234", "leg": "outbound"},      # a forwarded call's trunk
    {"agent": "2001", "target": "95551234", "leg": "outbound"},  # globex's agent
    {"agent": "1001", "target": "1234", "leg": "outbound"},      # no route for it
    {"agent": "1001", "target": "5550103", "leg": "queue", "queue": "help"},
])
def test_an_attended_transfer_that_does_not_hold_together_is_not_logged(
    config: OmniccConfig, params: dict[str, str]
) -> None:
    transferred, _ = attended(config, **params)
    assert transferred == []


def test_the_consultations_acd_call_ends_even_when_nothing_is_logged(
    config: OmniccConfig,
) -> None:
    """Its agent is off the call whatever the event says: never left ONCALL."""
    acd = MemoryAcd(status("1002"))
    transferred, _ = attended(config, acd, agent="", target="5550103", leg="queue",
                              queue="support", answering="1002", queue_call=CALL)
    assert transferred == []
    assert acd.ended == [("acme", CALL, "caller")]


@pytest.mark.parametrize("acd", [
    MemoryAcd(None),                                    # the ACD does not know it
    MemoryAcd(status(state=CallState.ENDED)),           # already ended
    MemoryAcd(down=True),                               # Redis down: logged, not raised
])
def test_a_consultations_acd_call_not_connected_is_left_alone(
    config: OmniccConfig, acd: MemoryAcd
) -> None:
    (event,), _ = attended(config, acd, agent="1001", target="5550103", leg="queue",
                           queue="support", answering="1002", queue_call=CALL)
    assert event["destination"] == "queue"
    assert acd.ended == []


# ------------------------------------------------------------------ queue_transferred


def test_the_transferring_agents_queue_call_ends_as_transferred(config: OmniccConfig) -> None:
    acd = MemoryAcd(status("1002"))
    record = run_handler(QueueCallTransferred(config, acd), "queue_transferred",
                         {"tenant": "acme", "call": CALL})
    assert record.commands == []
    assert acd.ended == [("acme", CALL, "transferred")]


@pytest.mark.parametrize(("params", "acd"), [
    ({"tenant": "acme", "call": CALL}, MemoryAcd(status(state=CallState.ENDED))),
    ({"tenant": "acme", "call": CALL}, MemoryAcd(down=True)),
    ({"tenant": "initech", "call": CALL}, MemoryAcd(status("1002"))),
    ({"tenant": "acme", "call": ""}, MemoryAcd(status("1002"))),
])
def test_queue_transferred_ends_nothing_else(config: OmniccConfig, params: dict[str, str],
                                             acd: MemoryAcd) -> None:
    run_handler(QueueCallTransferred(config, acd), "queue_transferred", params)
    assert acd.ended == []


# ------------------------------------------------------------------ agent_call


def agent_call(config: OmniccConfig, dialled: str, agent: str = "1001"):
    events = MemoryEventLog()
    record = run_handler(AgentCall(config, as_event_log(events)), "agent_call",
                         {"tenant": "acme", "agent": agent, "dialled": dialled})
    return record.variables, events.events


def test_an_agent_dialling_a_queues_did_joins_the_queue(config: OmniccConfig) -> None:
    variables, events = agent_call(config, "5550103")
    assert variables["OMNICC_STATUS"] == "OK"
    assert (variables["OMNICC_DEST"], variables["OMNICC_QUEUE"], variables["OMNICC_DID"]) == (
        "queue", "support", "5550103")
    assert variables["OMNICC_PRIORITY"] == "5"  # the route's, as for an inbound call
    assert "OMNICC_DIAL" not in variables
    (event,) = events
    assert (event.event, event.fields["from_agent"], event.fields["queue"]) == (
        "agent_call_routed", "1001", "support")


@pytest.mark.parametrize(("dialled", "agent"), [
    ("5551234", "1001"),  # a pattern route's number: out by the outbound routes
    ("5550103", "2001"),  # not an agent of acme: never joins
])
def test_other_numbers_do_not_join_a_queue(config: OmniccConfig, dialled: str,
                                           agent: str) -> None:
    variables, _ = agent_call(config, dialled, agent)
    assert variables.get("OMNICC_DEST") != "queue"
    assert "OMNICC_QUEUE" not in variables


# ------------------------------------------------------------------ a trunk's channel count


def test_the_trunks_own_leg_gives_back_the_channel_of_the_agents_call() -> None:
    """After an attended transfer the trunk's leg outlives the agent's channel that holds
    its count: its hang-up handler names that channel (outbound_end channel=)."""
    harness = Harness(parse_config(OUTBOUND_CONFIG))
    harness.dial("95551234")
    assert harness.channels("carrier-a") == {UNIQUEID}
    # The trunk leg's own session: another uniqueid; only the named channel is released.
    harness.run(harness.end, "outbound_end",
                {"tenant": "acme", "trunk": "carrier-a", "channel": "someone-else"})
    assert harness.channels("carrier-a") == {UNIQUEID}
    harness.run(harness.end, "outbound_end",
                {"tenant": "acme", "trunk": "carrier-a", "channel": UNIQUEID})
    assert harness.channels("carrier-a") == set()
    assert harness.held.held("acme", "carrier-a") == frozenset()
