"""Blind transfers: where a Refer-To's target may send a call (omnicc/transfer.py), and the
transfer AGI's answer and event (agi/handlers/transfer.py) over the fake Asterisk."""

from __future__ import annotations

import pytest

from agi.handlers.outbound_call import OutboundCalls
from agi.handlers.transfer import Transfer, TransferAttended
from omnicc.config import OmniccConfig, parse_config
from omnicc.routing import RoutingError
from omnicc.transfer import OutsideTarget, decide_transfer

from .test_agi_handlers import MemoryEventLog, as_event_log, run_handler

CONFIG = """
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
      - {extension: "1002", password: "acme-pass-1002"}
    inbound_routes:
      - {did: "5550100", destination: "agent:1001"}
      - {did: "5550103", destination: "queue:support"}
      - {did: "5550199", destination: "hangup"}
    queues:
      - {name: support, members: [{agent: "1002"}]}
    trunks:
      - {name: carrier, address: 192.0.2.1, dial_host: 192.0.2.1}
    outbound_routes:
      - {name: national, patterns: [_9NXXXXXX], strip: 1, prepend: "+34", trunks: [carrier]}
  - name: globex
    domain: globex.example
    agents: [{extension: "2001", password: "globex-pass-2001"}]
    inbound_routes: [{did: "5550200", destination: "agent:2001"}]
"""


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


def test_an_agent_of_the_tenant_is_dialled_through_kamailio(config: OmniccConfig) -> None:
    decision = decide_transfer(config, "acme", "1002")
    assert (decision.destination, decision.agent, decision.did) == ("agent", "1002", "1002")
    assert decision.dial == "PJSIP/kamailio/sip:1002@acme.example"


def test_a_did_of_the_tenant_goes_where_its_inbound_route_says(config: OmniccConfig) -> None:
    decision = decide_transfer(config, "acme", "5550103")
    assert (decision.destination, decision.queue, decision.did) == ("queue", "support", "5550103")
    assert decide_transfer(config, "acme", "5550199").destination == "hangup"


@pytest.mark.parametrize(("tenant", "target", "reason"), [
    ("acme", "2001", "neither an agent nor a DID of tenant acme"),     # globex's agent
    ("acme", "5550200", "neither an agent nor a DID of tenant acme"),  # globex's DID
    ("acme", "1002&PJSIP/x@evil", "not allowed"),
    ("acme", "1,2", "not allowed"),
    ("acme", "5551)", "not allowed"),
    ("acme", "1" * 300, "more than"),
    ("acme", "", "empty"),
    ("globex", "1001", "neither an agent nor a DID of tenant globex"),
    ("", "1002", "unknown tenant"),
    ("initech", "1002", "unknown tenant"),
])
def test_refused_targets(config: OmniccConfig, tenant: str, target: str, reason: str) -> None:
    with pytest.raises(RoutingError, match=reason):
        decide_transfer(config, tenant, target)


def test_the_handler_answers_a_routed_transfer_and_logs_it(config: OmniccConfig) -> None:
    events = MemoryEventLog()
    record = run_handler(Transfer(config, as_event_log(events)), "transfer", {
        "tenant": "acme", "target": "1002", "agent": "1001",
        "transferer": "PJSIP/kamailio-00000001"})
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DEST"] == "agent"
    assert record.variables["OMNICC_DID"] == "1002"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1002@acme.example"
    (event,) = events.events
    assert (event.tenant, event.event) == ("acme", "call_transferred")
    assert event.fields["kind"] == "blind" and event.fields["outcome"] == "routed"
    assert event.fields["from_agent"] == "1001" and event.fields["target"] == "1002"
    assert event.fields["transferer"] == "PJSIP/kamailio-00000001"


def test_the_handler_refuses_an_injection_and_sets_nothing_to_dial(
    config: OmniccConfig,
) -> None:
    events = MemoryEventLog()
    record = run_handler(Transfer(config, as_event_log(events)), "transfer", {
        "tenant": "acme", "target": "1002&PJSIP/x@evil", "agent": "1001"})
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_CAUSE"] == "1"
    # Nothing of the target is dialled: the call goes back to the transferring agent,
    # whose Dial string and extension come from the config.
    assert (record.variables["OMNICC_DEST"], record.variables["OMNICC_DIAL"],
            record.variables["OMNICC_DID"]) == (
        "agent", "PJSIP/kamailio/sip:1001@acme.example", "1001")
    (event,) = events.events
    assert event.fields["outcome"] == "refused" and "not allowed" in event.fields["reason"]
    assert event.fields["returned_to"] == "1001"


def test_a_refused_transfer_without_a_known_agent_ends_the_call(config: OmniccConfig) -> None:
    events = MemoryEventLog()
    record = run_handler(Transfer(config, as_event_log(events)), "transfer", {
        "tenant": "acme", "target": "1,2", "agent": "9999"})
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert "OMNICC_DIAL" not in record.variables and "OMNICC_DEST" not in record.variables
    (event,) = events.events
    assert event.fields["returned_to"] == ""


def test_the_handler_logs_nothing_for_an_unknown_tenant(config: OmniccConfig) -> None:
    events = MemoryEventLog()
    record = run_handler(Transfer(config, as_event_log(events)), "transfer",
                         {"tenant": "", "target": "1002"})
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert events.events == []


def test_an_attended_transfer_is_logged_with_the_callers_call(config: OmniccConfig) -> None:
    events = MemoryEventLog()
    record = run_handler(TransferAttended(config, as_event_log(events)), "transfer_attended", {
        "tenant": "acme", "agent": "1001", "target": "1002", "call": "node-1.0",
        "consultation": "node-1.2"})
    assert record.commands == []  # a hang-up handler: it only records
    (event,) = events.events
    assert (event.tenant, event.event) == ("acme", "call_transferred")
    assert event.fields["kind"] == "attended" and event.fields["outcome"] == "bridged"
    assert (event.fields["uniqueid"], event.fields["consultation"]) == ("node-1.0", "node-1.2")
    assert (event.fields["from_agent"], event.fields["target"]) == ("1001", "1002")


@pytest.mark.parametrize("params", [
    {"tenant": "initech", "agent": "1001", "target": "1002"},
    {"tenant": "acme", "agent": "2001", "target": "1002"},   # globex's agent
    {"tenant": "acme", "agent": "1001", "target": "5550103"},
])
def test_an_attended_transfer_between_non_agents_is_not_logged(
    config: OmniccConfig, params: dict[str, str]
) -> None:
    events = MemoryEventLog()
    run_handler(TransferAttended(config, as_event_log(events)), "transfer_attended", params)
    assert events.events == []


def test_an_outside_number_is_told_apart(config: OmniccConfig) -> None:
    with pytest.raises(OutsideTarget):
        decide_transfer(config, "acme", "95551234")


def outbound_transfer(config: OmniccConfig, events: MemoryEventLog, target: str,
                      agent: str = "1001"):
    handler = Transfer(config, as_event_log(events), OutboundCalls(config, as_event_log(events),
                                                                   None))
    return run_handler(handler, "transfer", {"tenant": "acme", "target": target,
                                             "agent": agent})


def test_an_outside_number_goes_out_by_the_outbound_routes(config: OmniccConfig) -> None:
    events = MemoryEventLog()
    record = outbound_transfer(config, events, "95551234")
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DEST"] == "outbound"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+345551234@trunk.acme.carrier"
    assert record.variables["OMNICC_DID"] == "95551234"
    assert record.variables["OMNICC_AGENT_FROM"] == "1001"
    transferred = [e for e in events.events if e.event == "call_transferred"]
    assert [(e.fields["outcome"], e.fields["destination"]) for e in transferred] == \
        [("routed", "outbound")]


@pytest.mark.parametrize(("target", "agent"), [
    ("5551234", "1001"),   # no route matches
    ("95551234", ""),      # no agent known for the call (the queue case): not dialled out
])
def test_an_outside_number_without_route_or_agent_dials_nothing(
    config: OmniccConfig, target: str, agent: str
) -> None:
    events = MemoryEventLog()
    record = outbound_transfer(config, events, target, agent)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    # No trunk is dialled; a known agent gets the call back.
    assert record.variables.get("OMNICC_DIAL", "") == (
        "PJSIP/kamailio/sip:1001@acme.example" if agent else "")
    assert "OMNICC_OUTBOUND_TRUNK" not in record.variables
    transferred = [e for e in events.events if e.event == "call_transferred"]
    assert [(e.fields["outcome"], e.fields["returned_to"]) for e in transferred] == [
        ("refused", agent)]


def counted_transfer(store: object, events: MemoryEventLog, target: str = "95551234"):
    """A transfer to an outside number whose one trunk counts its channels in `store`."""
    from agi.handlers.outbound_call import HeldTrunkChannels

    config = parse_config(CONFIG.replace("dial_host: 192.0.2.1}",
                                         "dial_host: 192.0.2.1, max_channels: 1}"))
    outbound = OutboundCalls(config, as_event_log(events),
                             HeldTrunkChannels(store))  # type: ignore[arg-type]
    handler = Transfer(config, as_event_log(events), outbound)
    return run_handler(handler, "transfer", {"tenant": "acme", "target": target,
                                             "agent": "1001"})


def test_a_transfer_out_when_every_trunk_is_full_goes_back_to_the_agent() -> None:
    from .test_outbound_call import MemoryChannels

    store = MemoryChannels()
    store.in_use[("acme", "carrier")] = {"another-call"}
    events = MemoryEventLog()
    record = counted_transfer(store, events)
    # The dialplan's refused label: error beep, then the agent is dialled again; not
    # OMNICC_DEST=outbound, which would end the call with 42 instead.
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_DEST"] == "agent"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1001@acme.example"
    assert record.variables["OMNICC_DID"] == "1001"
    assert store.in_use[("acme", "carrier")] == {"another-call"}
    names = [e.event for e in events.events]
    assert "outbound_trunk_full" in names and "outbound_failed" in names
    transferred = [e.fields for e in events.events if e.event == "call_transferred"]
    assert [(e["outcome"], e["returned_to"]) for e in transferred] == [("refused", "1001")]


def test_a_transfer_out_when_redis_cannot_count_goes_back_to_the_agent() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from .test_outbound_call import MemoryChannels

    class DownChannels(MemoryChannels):
        async def acquire(self, *args: object, **kwargs: object):  # type: ignore[override]
            raise RedisConnectionError("Connection refused")

    events = MemoryEventLog()
    record = counted_transfer(DownChannels(), events)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_DEST"] == "agent"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1001@acme.example"
    transferred = [e.fields for e in events.events if e.event == "call_transferred"]
    assert [(e["outcome"], e["returned_to"]) for e in transferred] == [("refused", "1001")]


def test_a_transfer_out_with_a_free_channel_holds_it_for_the_call() -> None:
    from .test_outbound_call import MemoryChannels

    store = MemoryChannels()
    events = MemoryEventLog()
    record = counted_transfer(store, events)
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DEST"] == "outbound"
    assert record.variables["OMNICC_OUTBOUND_HELD"] == "carrier"
    assert store.in_use[("acme", "carrier")] == {"1700000000.1"}
    transferred = [e.fields for e in events.events if e.event == "call_transferred"]
    assert [(e["outcome"], e["destination"]) for e in transferred] == [("routed", "outbound")]
