"""Inbound routing over the config: DID patterns, the destination kinds (busy, IVR, time
condition, custom context), the blacklist destination, and the config errors for them
(each naming its key and line); the inbound_route and ivr_entry handlers over the fake
Asterisk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agi.handlers.inbound_route import InboundRoute
from agi.handlers.ivr import IvrEntry
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.config import ConfigError, OmniccConfig, parse_config
from omnicc.events import EventLog
from omnicc.routing import (
    IvrOutcome,
    RoutingError,
    decide_inbound,
    decide_ivr_entry,
)

HEAD = """\
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
      - {extension: "1002", password: "acme-pass-1002"}
    queues:
      - {name: sales, members: [{agent: "1001"}]}
      - {name: support, members: [{agent: "1002"}]}
"""

ROUTING = HEAD + """\
    dialplan_contexts: [acme-fax]
    inbound_routes:
      - {did: "5550100", destination: "agent:1001"}
      - {pattern: "_55501XX", destination: "queue:sales"}
      - {pattern: "_5550[1-2]XX", destination: "queue:support"}
      - {pattern: "_X.", destination: "busy"}
      - {did: "5550200", destination: "time_condition:office"}
      - {did: "5550201", destination: "ivr:main"}
      - {did: "5550202", destination: "context:acme-fax,42"}
      - {did: "5550203", destination: "context:acme-fax"}
    time_groups:
      - name: weekdays
        timezone: Europe/Madrid
        rules: [{weekdays: mon-fri, times: "09:00-18:00"}]
        except_dates: ["12-25"]
    time_conditions:
      - name: office
        time_group: weekdays
        matched: "ivr:main"
        unmatched: "time_condition:closed"
      - {name: closed, time_group: weekdays, matched: "hangup", unmatched: "queue:support"}
    ivrs:
      - name: main
        prompt: acme/main-menu
        options: {"1": "queue:sales", "2": "queue:support", "3": "ivr:main", "9": "busy"}
        timeout_seconds: 4
        retries: 1
        default: "agent:1002"
    blacklist: {destination: busy}
"""

# Thursday 2026-11-26 11:00 in Madrid (10:00 UTC); Saturday 2026-11-28; Christmas.
OPEN = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
CLOSED = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
CHRISTMAS = datetime(2026, 12, 25, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(ROUTING)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def line(text: str, marker: str) -> int:
    found = [n for n, row in enumerate(text.splitlines(), 1) if marker in row]
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------- routes


@pytest.mark.parametrize(("did", "kind", "target"), [
    ("5550100", "agent", "1001"),      # exact beats every pattern
    ("5550150", "queue", "sales"),     # _55501XX beats _5550[1-2]XX: 1 before [1-2]
    ("5550250", "queue", "support"),
    ("5550350", "busy", ""),           # only _X. left
    ("123", "busy", ""),
])
def test_exact_did_beats_patterns_and_patterns_follow_asterisk_order(
        config: OmniccConfig, did: str, kind: str, target: str) -> None:
    decision = decide_inbound(config, "acme", did, clock=lambda: OPEN)
    assert decision.destination == kind
    assert (decision.agent or decision.queue) == target


def test_a_did_no_route_matches_is_unrouted() -> None:
    config = parse_config(HEAD + '    inbound_routes: [{pattern: "_555XXXX", '
                                 'destination: "hangup"}]\n')
    with pytest.raises(RoutingError, match="no inbound route"):
        decide_inbound(config, "acme", "55512345")


def test_a_time_condition_sends_the_call_by_the_clock(config: OmniccConfig) -> None:
    opened = decide_inbound(config, "acme", "5550200", clock=lambda: OPEN)
    assert opened.destination == "ivr" and opened.ivr == "main"
    assert opened.ivr_prompt == "acme/main-menu" and opened.ivr_timeout == 4
    assert [(s.condition, s.matched) for s in opened.steps] == [("office", True)]
    assert opened.steps[0].local_time == "2026-11-26T11:00:00+01:00"
    # Closed: office -> closed -> its unmatched destination, both steps recorded.
    for moment in (CLOSED, CHRISTMAS):
        closed = decide_inbound(config, "acme", "5550200", clock=lambda m=moment: m)
        assert closed.destination == "queue" and closed.queue == "support"
        assert [(s.condition, s.matched, s.destination) for s in closed.steps] == [
            ("office", False, "time_condition:closed"), ("closed", False, "queue:support")]


def test_a_context_destination_carries_the_declared_context(config: OmniccConfig) -> None:
    with_exten = decide_inbound(config, "acme", "5550202")
    assert (with_exten.destination, with_exten.context, with_exten.context_exten) == (
        "context", "acme-fax", "42")
    assert decide_inbound(config, "acme", "5550203").context_exten == "s"


# ---------------------------------------------------------------------------- IVR


@pytest.mark.parametrize(("entry", "kind", "queue"), [
    ("1", "queue", "sales"), ("2", "queue", "support"), ("9", "busy", ""),
])
def test_each_ivr_option_leads_to_its_destination(
        config: OmniccConfig, entry: str, kind: str, queue: str) -> None:
    step = decide_ivr_entry(config.tenant("acme"), "main", entry, 1, "5550201")
    assert step.outcome is IvrOutcome.OPTION and not step.retry
    assert step.decision is not None
    assert (step.decision.destination, step.decision.queue) == (kind, queue)


def test_an_option_back_to_the_same_ivr_starts_it_again(config: OmniccConfig) -> None:
    step = decide_ivr_entry(config.tenant("acme"), "main", "3", 2, "5550201")
    assert step.decision is not None and step.decision.ivr == "main"


def test_invalid_and_missing_entries_retry_then_go_to_the_default(
        config: OmniccConfig) -> None:
    tenant = config.tenant("acme")
    invalid = decide_ivr_entry(tenant, "main", "7", 1, "5550201")
    assert invalid.outcome is IvrOutcome.INVALID and invalid.retry
    assert invalid.notice == "pm-invalid-option"
    timeout = decide_ivr_entry(tenant, "main", "", 1, "5550201")
    assert timeout.outcome is IvrOutcome.TIMEOUT and timeout.retry and timeout.notice == ""
    # retries: 1 -> the second playing without a valid entry is the last.
    for entry, outcome in (("7", IvrOutcome.INVALID), ("", IvrOutcome.TIMEOUT)):
        last = decide_ivr_entry(tenant, "main", entry, 2, "5550201")
        assert last.outcome is outcome and not last.retry
        assert last.destination == "agent:1002"
        assert last.decision is not None and last.decision.agent == "1002"


@pytest.mark.parametrize("entry", ["1&PJSIP/x@evil", "1,2", "x", "12"])
def test_an_entry_that_is_no_option_is_only_invalid(config: OmniccConfig, entry: str) -> None:
    step = decide_ivr_entry(config.tenant("acme"), "main", entry, 1, "5550201")
    assert step.outcome is IvrOutcome.INVALID and step.decision is None


def test_an_ivr_attempt_below_one_is_refused(config: OmniccConfig) -> None:
    with pytest.raises(RoutingError, match="attempt 0"):
        decide_ivr_entry(config.tenant("acme"), "main", "1", 0, "5550201")


# ---------------------------------------------------------------------------- config errors


def test_the_routing_config_loads_with_its_parts(config: OmniccConfig) -> None:
    tenant = config.tenant("acme")
    assert tenant.blacklist.destination.kind == "busy"
    assert tenant.ivr("main").options["1"].target == "sales"
    assert tenant.time_group("weekdays").group.contains(OPEN)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('{pattern: "_X.", destination: "busy"}', '{pattern: "_X.Z", destination: "busy"}',
     "inbound_routes[3].pattern"),
    ('{pattern: "_X.", destination: "busy"}', '{pattern: "555", destination: "busy"}',
     "a pattern starts with '_'"),
    ('{pattern: "_X.", destination: "busy"}',
     '{did: "5551", pattern: "_X.", destination: "busy"}', "either a did or a pattern"),
    ('{pattern: "_X.", destination: "busy"}', '{pattern: "_55501XX", destination: "busy"}',
     "duplicate inbound route pattern '_55501XX'"),
    ('"ivr:main"}', '"ivr:nope"}', "goes to ivr nope, which is not among this tenant's IVRs"),
    ('unmatched: "time_condition:closed"', 'unmatched: "time_condition:shut"',
     "goes to time condition shut"),
    ('"context:acme-fax,42"', '"context:acme-sales"', "goes to context acme-sales"),
    ('"context:acme-fax,42"', '"context:acme-fax,4;2"', "context extension '4;2'"),
    ('"context:acme-fax,42"', '"context:omnicc-ivr"', "not omnicc's own"),
    ("time_group: weekdays\n        matched", "time_group: wkdays\n        matched",
     "uses time group wkdays"),
    ("timezone: Europe/Madrid", "timezone: Europe/Madird", "unknown timezone 'Europe/Madird'"),
    ('times: "09:00-18:00"', 'times: "09:00-25:00"', "hour 25"),
    ('except_dates: ["12-25"]', 'except_dates: ["02-30"]', "no such day"),
    ("prompt: acme/main-menu", "prompt: /etc/passwd", "not an Asterisk sound name"),
    ("prompt: acme/main-menu", "prompt: main&beep", "not an Asterisk sound name"),
    ("prompt: acme/main-menu", "prompt: ../main", "not an Asterisk sound name"),
    ('"9": "busy"}', '"#": "busy"}', "option '#': digits and '*' only"),
    ('"9": "busy"}', '"99": "busy"}', "longer than max_digits 1"),
    ('"9": "busy"}', '"9": "dial:123"}', "unknown destination 'dial:123'"),
    ('default: "agent:1002"', 'default: "agent:1009"', "goes to agent 1009"),
    ("blacklist: {destination: busy}", "blacklist: {destination: \"queue:nope\"}",
     "the blacklist destination goes to queue nope"),
])
def test_routing_config_errors_name_key_and_line(old: str, new: str, message: str) -> None:
    assert ROUTING.count(old) == 1, old
    text = ROUTING.replace(old, new)
    found = problems(text)
    assert any(message in p for p in found), found
    at = line(text, new.splitlines()[0])
    assert any(p.startswith(f"omnicc.yaml:{at}: ") for p in found), (at, found)


def test_a_cycle_without_caller_input_is_refused() -> None:
    text = ROUTING.replace('unmatched: "queue:support"}', 'unmatched: "time_condition:office"}')
    found = problems(text)
    assert any("time_condition:office -> time_condition:closed -> time_condition:office loops "
               "without the caller keying anything" in p for p in found), found
    # IVR default -> time condition -> back to the IVR: also without input.
    text = ROUTING.replace('default: "agent:1002"', 'default: "time_condition:office"').replace(
        'matched: "hangup"', 'matched: "ivr:main"')
    found = problems(text)
    assert any(p.startswith(f"omnicc.yaml:{line(text, '- name: main')}: tenants[0].ivrs[0].name: "
                            "ivr:main -> ") for p in found), found
    # Through a queue's failover.
    text = ROUTING.replace("{name: support, members",
                           '{name: support, failover: "time_condition:office", members')
    assert any("queue:support -> time_condition:office" in p for p in problems(text))


def test_loops_through_caller_input_are_menus() -> None:
    # Option 3 goes back to the IVR itself; office's matched leads to it: all fine.
    assert parse_config(ROUTING).tenant("acme").ivr("main").options["3"].target == "main"


# ---------------------------------------------------------------------------- handlers


class MemoryEventLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def append(self, tenant: str, event: str, **fields: Any) -> str:
        self.events.append((tenant, event, fields))
        return f"{len(self.events)}-0"


def run(handler: Any, script: str, **params: str) -> FakeCallRecord:
    return run_async(drive_session(handler, script=script, params=params,
                                   command_timeout=0.5))


def listed(numbers: dict[str, str]):
    async def check(tenant: str, caller: str) -> str | None:
        assert tenant == "acme"
        return numbers.get(caller)
    return check


def test_a_blacklisted_caller_goes_to_the_blacklist_destination(config: OmniccConfig) -> None:
    log = MemoryEventLog()
    handler = InboundRoute(config, cast(EventLog, log), listed({"5551234": "robocalls"}))
    record = run(handler, "inbound_route", tenant="acme", did="5550100")
    assert record.variables["OMNICC_DEST"] == "busy"
    assert record.variables["OMNICC_STATUS"] == "OK"
    kinds = [(e[1], e[2].get("reason"), e[2].get("route")) for e in log.events]
    assert kinds == [("call_blacklisted", "robocalls", None),
                     ("call_routed", None, "blacklist")]
    assert log.events[0][2]["caller"] == "5551234"


def test_a_caller_not_listed_is_routed(config: OmniccConfig) -> None:
    log = MemoryEventLog()
    handler = InboundRoute(config, cast(EventLog, log), listed({"5550000": ""}),
                           clock=lambda: CLOSED)
    record = run(handler, "inbound_route", tenant="acme", did="5550200")
    assert record.variables["OMNICC_DEST"] == "queue"
    events = [(e[1], e[2].get("condition"), e[2].get("matched")) for e in log.events]
    assert events == [("time_condition", "office", "0"), ("time_condition", "closed", "0"),
                      ("call_routed", None, None)]
    assert log.events[-1][2]["route"] == "5550200"


def test_a_redis_error_on_the_blacklist_fails_over_with_503(config: OmniccConfig) -> None:
    async def broken(tenant: str, caller: str) -> str | None:
        raise RedisConnectionError("down")

    record = run(InboundRoute(config, cast(EventLog, MemoryEventLog()), broken),
                 "inbound_route", tenant="acme", did="5550100")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_CAUSE"] == "34"


@pytest.mark.parametrize("did", [
    "5550100)U(omnicc-evil^s^1",  # would close Dial's b() and add options of its own
    "5550100,1", "5550100&PJSIP/x@evil", "555 0100", "", "1" * 40, "５５５",
])
def test_a_did_that_is_not_a_number_is_refused_before_any_route(
    config: OmniccConfig, did: str
) -> None:
    # A pattern route (_X.) would match it; the dialplan passes OMNICC_DID in Dial option
    # strings, so it must never get past the AGI.
    log = MemoryEventLog()
    blacklist_asked: list[str] = []

    async def blacklist(tenant: str, caller: str) -> str | None:
        blacklist_asked.append(caller)
        return None

    record = run(InboundRoute(config, cast(EventLog, log), blacklist), "inbound_route",
                 tenant="acme", did=did)
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_CAUSE"] == "28"  # 484 Address Incomplete
    assert "OMNICC_DEST" not in record.variables and "OMNICC_DIAL" not in record.variables
    assert blacklist_asked == []
    ((_, event, fields),) = log.events
    assert event == "call_unrouted" and fields["reason"].startswith("invalid DID")


def test_an_ivr_route_sets_what_read_needs(config: OmniccConfig) -> None:
    record = run(InboundRoute(config, cast(EventLog, MemoryEventLog())), "inbound_route",
                 tenant="acme", did="5550201")
    assert {k: record.variables[k] for k in (
        "OMNICC_DEST", "OMNICC_IVR", "OMNICC_IVR_PROMPT", "OMNICC_IVR_DIGITS",
        "OMNICC_IVR_TIMEOUT", "OMNICC_IVR_ATTEMPT")} == {
        "OMNICC_DEST": "ivr", "OMNICC_IVR": "main", "OMNICC_IVR_PROMPT": "acme/main-menu",
        "OMNICC_IVR_DIGITS": "1", "OMNICC_IVR_TIMEOUT": "4", "OMNICC_IVR_ATTEMPT": "1"}


def test_the_ivr_entry_handler_retries_then_routes(config: OmniccConfig) -> None:
    log = MemoryEventLog()
    handler = IvrEntry(config, cast(EventLog, log))
    retry = run(handler, "ivr_entry", tenant="acme", ivr="main", entry="7", attempt="1",
                did="5550201")
    assert retry.variables["OMNICC_DEST"] == "ivr_retry"
    assert retry.variables["OMNICC_IVR_NOTICE"] == "pm-invalid-option"
    assert retry.variables["OMNICC_IVR_ATTEMPT"] == "2"
    chosen = run(handler, "ivr_entry", tenant="acme", ivr="main", entry="2", attempt="2",
                 did="5550201")
    assert chosen.variables["OMNICC_DEST"] == "queue"
    assert chosen.variables["OMNICC_QUEUE"] == "support"
    entries = [(e[1], e[2].get("entry"), e[2].get("outcome")) for e in log.events]
    assert entries == [("ivr_entry", "7", "invalid"), ("ivr_entry", "2", "option"),
                       ("call_routed", None, None)]
    assert log.events[-1][2]["route"] == "ivr:main"


def test_the_ivr_entry_handler_refuses_a_bad_attempt(config: OmniccConfig) -> None:
    record = run(IvrEntry(config, cast(EventLog, MemoryEventLog())), "ivr_entry",
                 tenant="acme", ivr="main", entry="1", attempt="one", did="5550201")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert "not a number" in record.variables["OMNICC_ERROR"]


def test_unquoted_yaml_dates_are_read_as_written() -> None:
    config = parse_config(ROUTING.replace('except_dates: ["12-25"]',
                                          "except_dates: [2026-11-26]"))
    group = config.tenant("acme").time_group("weekdays")
    assert group.except_dates == ["2026-11-26"]
    assert not group.group.contains(OPEN)  # Thursday 2026-11-26 is now a holiday


def test_a_queue_failover_may_go_to_an_ivr_or_a_time_condition() -> None:
    from omnicc.routing import decide_destination

    config = parse_config(ROUTING.replace(
        "{name: support, members", '{name: support, failover: "time_condition:office", members'
    ).replace('unmatched: "queue:support"}', 'unmatched: "busy"}'))
    tenant = config.tenant("acme")
    failover = tenant.queue("support").failover
    assert decide_destination(tenant, "5550250", failover, clock=lambda: OPEN).ivr == "main"
    assert decide_destination(tenant, "5550250", failover,
                              clock=lambda: CLOSED).destination == "busy"
