"""Blind transfers of queue calls: the transferring agent is the one the ACD connected the
call to (omnicc/transfer.py transferring_agent), never what the phone or the dialplan's
first offer says; a routed transfer ends the ACD call (wrap-up) and the channel forgets it.
The transfer AGI over the fake Asterisk, the ACD in memory."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agi.handlers.outbound_call import OutboundCalls
from agi.handlers.transfer import Transfer
from omnicc.acd import AcdResult, CallStatus
from omnicc.agent_state import CallState
from omnicc.config import OmniccConfig, parse_config
from omnicc.transfer import transferring_agent

from .test_agi_handlers import MemoryEventLog, as_event_log, run_handler
from .test_transfer import CONFIG

CALL = "1700000000.5-support"


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


def status(agent: str = "1002", state: CallState = CallState.CONNECTED,
           call: str = CALL) -> CallStatus:
    return CallStatus(call=call, queue="support", state=state, priority=0, enqueued_at_ms=0,
                      caller="5551234", did="5550103", node="n1", agent=agent, ringing=(),
                      lease_until_ms=None, position=None)


@pytest.mark.parametrize(("routed", "call", "record", "expected"), [
    ("1001", "", None, "1001"),                        # no queue: the routed agent
    ("1001", CALL, status("1002"), "1002"),             # the ACD's, not the first offered
    ("", CALL, status("1002"), "1002"),
    ("1001", CALL, None, ""),                           # the ACD knows no such call
    ("1001", CALL, status(state=CallState.RESERVED), ""),  # ringing, not answered
    ("1001", CALL, status(state=CallState.ENDED), ""),
    ("1001", CALL, status("2001"), ""),                 # not an agent of this tenant
    ("1001", CALL, status(call="other-call"), ""),
])
def test_the_transferring_agent(config: OmniccConfig, routed: str, call: str,
                                record: CallStatus | None, expected: str) -> None:
    assert transferring_agent(config.tenants[0], routed, call, record) == expected


class MemoryAcd:
    def __init__(self, record: CallStatus | None = None, down: bool = False):
        self.record = record
        self.down = down
        self.ended: list[tuple[str, str, str]] = []

    async def call_status(self, tenant: str, call: str) -> CallStatus | None:
        if self.down:
            raise RedisConnectionError("Connection refused")
        return self.record if self.record and self.record.call == call else None

    async def hangup(self, tenant: str, call: str, reason: str = "caller") -> AcdResult:
        self.ended.append((tenant, call, reason))
        return AcdResult(True, "ok")


def transfer(config: OmniccConfig, acd: MemoryAcd, target: str, agent: str = "1001",
             call: str = CALL) -> tuple[dict[str, str], MemoryEventLog]:
    events = MemoryEventLog()
    handler = Transfer(config, as_event_log(events),
                       OutboundCalls(config, as_event_log(events), None), acd)
    record = run_handler(handler, "transfer", {"tenant": "acme", "target": target,
                                               "agent": agent, "call": call})
    return record.variables, events


def transferred(events: MemoryEventLog) -> list[dict[str, str]]:
    return [e.fields for e in events.events if e.event == "call_transferred"]


def test_a_queue_call_goes_out_as_the_answering_agents_call(config: OmniccConfig) -> None:
    acd = MemoryAcd(status("1002"))
    variables, events = transfer(config, acd, "95551234", agent="1001")
    assert variables["OMNICC_DIAL"] == "PJSIP/+345551234@trunk.acme.carrier"
    assert variables["OMNICC_AGENT_FROM"] == "1002"
    assert variables["OMNICC_QCALL"] == ""
    (event,) = transferred(events)
    assert (event["from_agent"], event["from_queue"], event["outcome"]) == (
        "1002", "support", "routed")
    routed = [e.fields for e in events.events if e.event == "outbound_routed"]
    assert (routed[0]["agent"], routed[0]["queue"]) == ("1002", "support")
    assert acd.ended == [("acme", CALL, "transferred")]  # 1002 goes into wrap-up


def test_a_queue_call_to_another_agent_ends_the_acd_call(config: OmniccConfig) -> None:
    acd = MemoryAcd(status("1002"))
    variables, events = transfer(config, acd, "1001", agent="")
    assert variables["OMNICC_DEST"] == "agent"
    assert variables["OMNICC_QCALL"] == ""
    assert transferred(events)[0]["from_agent"] == "1002"
    assert acd.ended == [("acme", CALL, "transferred")]


@pytest.mark.parametrize("acd", [MemoryAcd(None), MemoryAcd(status(state=CallState.RESERVED)),
                                 MemoryAcd(down=True)])
def test_without_the_acds_answer_an_outside_number_is_not_dialled(
    config: OmniccConfig, acd: MemoryAcd
) -> None:
    """The dialplan's OMNICC_AGENT (here 1001) is not trusted for a queue call."""
    variables, events = transfer(config, acd, "95551234", agent="1001")
    assert variables["OMNICC_STATUS"] == "ERROR"
    assert "OMNICC_DIAL" not in variables
    (event,) = transferred(events)
    assert (event["from_agent"], event["outcome"]) == ("", "refused")
    assert acd.ended == []


def test_a_call_that_did_not_come_through_a_queue_keeps_its_routed_agent(
    config: OmniccConfig,
) -> None:
    acd = MemoryAcd(status("1002"))
    variables, events = transfer(config, acd, "95551234", agent="1001", call="")
    assert variables["OMNICC_AGENT_FROM"] == "1001"
    assert "OMNICC_QCALL" not in variables
    assert acd.ended == []


def test_a_transfer_to_a_do_not_call_number_is_refused_and_returns_to_the_agent(
    config: OmniccConfig,
) -> None:
    async def listed(tenant: str, numbers: tuple[str, ...]) -> frozenset[str]:
        return frozenset(n for n in numbers if n == "+345551234")

    events = MemoryEventLog()
    handler = Transfer(config, as_event_log(events),
                       OutboundCalls(config, as_event_log(events), None, listed),
                       MemoryAcd(status("1002")))
    variables = run_handler(handler, "transfer", {"tenant": "acme", "target": "95551234",
                                                  "agent": "", "call": CALL}).variables
    assert (variables["OMNICC_STATUS"], variables["OMNICC_CAUSE"]) == ("ERROR", "21")
    assert (variables["OMNICC_DEST"], variables["OMNICC_DIAL"]) == (
        "agent", "PJSIP/kamailio/sip:1002@acme.example")
    assert "OMNICC_OUTBOUND_TRUNK" not in variables
    (event,) = transferred(events)
    assert (event["outcome"], event["returned_to"]) == ("refused", "1002")
    (refused,) = [e.fields for e in events.events if e.event == "outbound_refused"]
    assert (refused["refusal"], refused["agent"]) == ("do_not_call", "1002")


def test_a_queue_call_whose_trunks_are_full_stays_the_agents_call(config: OmniccConfig) -> None:
    """No trunk can take the transfer: the caller goes back to 1002, whose ACD call it
    still is (not ended: 1002 does not go into wrap-up while it talks with the caller)."""
    from agi.handlers.outbound_call import HeldTrunkChannels

    from .test_outbound_call import MemoryChannels

    counted = parse_config(CONFIG.replace("dial_host: 192.0.2.1}",
                                          "dial_host: 192.0.2.1, max_channels: 1}"))
    store = MemoryChannels()
    store.in_use[("acme", "carrier")] = {"another-call"}
    acd = MemoryAcd(status("1002"))
    events = MemoryEventLog()
    handler = Transfer(counted, as_event_log(events),
                       OutboundCalls(counted, as_event_log(events),
                                     HeldTrunkChannels(store)), acd)
    variables = run_handler(handler, "transfer", {"tenant": "acme", "target": "95551234",
                                                  "agent": "", "call": CALL}).variables
    assert (variables["OMNICC_STATUS"], variables["OMNICC_DEST"]) == ("ERROR", "agent")
    assert variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1002@acme.example"
    assert acd.ended == []
    assert "OMNICC_QCALL" not in variables
    (event,) = transferred(events)
    assert (event["outcome"], event["returned_to"]) == ("refused", "1002")
