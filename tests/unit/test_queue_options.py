"""A queue's waiting options and a route's caller priority: the config keys, the pure
expected-wait and announcement timing (omnicc/announcements.py), the plumbing through
inbound_route / queue_call / queue_answer (fake Asterisk peer, fake ACD), and the rendered
musiconhold.conf. End to end: tests/integration/test_queue_features.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agi.handlers.inbound_route import InboundRoute
from agi.handlers.queue_call import (
    QueueAnswer,
    QueueCall,
    parse_recording_file,
    recording_file,
)
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.acd import AcdResult, Offer, QueueStats
from omnicc.announcements import Announcement, expected_wait_seconds, next_announcement_ms
from omnicc.config import ConfigError, parse_config
from omnicc.render import AsteriskDirs, render_asterisk
from omnicc.routing import decide_destination, decide_inbound

from .test_agi_handlers import MemoryEventLog, as_event_log
from .test_queue_call import CALL, NODE, FakeStore, now_ms

CONFIG_TEXT = """\
tenants:
  - name: acme
    domain: acme.test
    agents:
      - {extension: "1001", password: "password-1001"}
    inbound_routes:
      - {did: "5550100", destination: "queue:sales"}
      - {did: "5550101", destination: "queue:sales", priority: 7}
      - {did: "5550102", destination: "agent:1001"}
    queues:
      - name: sales
        members: [{agent: "1001"}]
        moh_class: calm
        announce_position: true
        announce_expected_wait: true
        announce_frequency_seconds: 5
        call_lease_seconds: 10
        wrapup_seconds: 10
        record: true
        failover: "queue:plain"
      - name: plain
        members: [{agent: "1001"}]
"""
CONFIG = parse_config(CONFIG_TEXT)
TENANT = CONFIG.tenants[0]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


# ---------------------------------------------------------------------------- config


def test_the_options_and_their_defaults() -> None:
    sales, plain = TENANT.queues
    assert (sales.moh_class, sales.announce_position, sales.announce_expected_wait,
            sales.announce_frequency_seconds, sales.record) == ("calm", True, True, 5, "always")
    assert sales.announces
    assert (plain.moh_class, plain.announces, plain.announce_frequency_seconds,
            plain.record) == (None, False, 30, "never")
    assert [r.priority for r in TENANT.inbound_routes] == [0, 7, 0]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("moh_class: calm", "moh_class: Calm Music",
     "tenants[0].queues[0].moh_class: a music-on-hold class is lower-case letters"),
    ("announce_frequency_seconds: 5", "announce_frequency_seconds: 2",
     "tenants[0].queues[0].announce_frequency_seconds: Input should be greater than or "
     "equal to 5"),
    ("call_lease_seconds: 10", "call_lease_seconds: 5",
     "tenants[0].queues[0].call_lease_seconds: a queue with announcements needs "
     "call_lease_seconds of at least 10"),
    ("record: true", "record: sometimes", "tenants[0].queues[0].record: Input should be "
                                          "'always', 'never' or 'on_demand'"),
    ("priority: 7}", "priority: 100}", "tenants[0].inbound_routes[1].priority: Input should "
                                       "be less than or equal to 99"),
    ('destination: "agent:1001"}', 'destination: "agent:1001", priority: 3}',
     "tenants[0].inbound_routes[2].priority: a priority only applies to a queue destination"),
])
def test_bad_options_are_refused_with_their_key(old: str, new: str, message: str) -> None:
    assert CONFIG_TEXT.count(old) == 1
    found = problems(CONFIG_TEXT.replace(old, new))
    assert any(message in p for p in found), found


# ---------------------------------------------------------------------------- pure


def stats(**fields: object) -> QueueStats:
    base = QueueStats(
        queue="sales", calls_waiting=0, longest_wait_seconds=0.0, agents_logged_in=0,
        agents_ready=0, agents_ringing=0, agents_on_call=0, agents_in_wrapup=0,
        agents_paused=0, calls_offered=0, calls_answered=0,
        calls_answered_within_service_level=0, calls_abandoned=0,
        calls_abandoned_within_service_level=0, calls_failed_over=0, calls_overflowed=0,
        calls_ended=0, rings_unanswered=0, service_level_percent=None,
        average_speed_of_answer_seconds=None, average_talk_seconds=None)
    return replace(base, **fields)  # type: ignore[arg-type]


def test_expected_wait_is_the_callers_ahead_over_the_agents_serving() -> None:
    busy = stats(agents_logged_in=3, agents_paused=1, average_talk_seconds=50.0,
                 average_speed_of_answer_seconds=12.0)
    # Two agents serving, 50 s talk + 10 s wrap-up each: one call every 30 s.
    assert expected_wait_seconds(1, busy, wrapup_seconds=10) == 30
    assert expected_wait_seconds(4, busy, wrapup_seconds=10) == 120
    assert expected_wait_seconds(3, busy) == 75  # no wrap-up: 50 s each
    assert expected_wait_seconds(1, replace(busy, average_talk_seconds=0.3)) == 1  # rounded up


def test_expected_wait_without_history_or_without_agents() -> None:
    # No call ended yet: the average wait of answered calls stands in.
    assert expected_wait_seconds(5, stats(agents_logged_in=1,
                                          average_speed_of_answer_seconds=41.2)) == 42
    assert expected_wait_seconds(1, stats(agents_logged_in=2)) is None  # no history
    everyone_paused = stats(agents_logged_in=2, agents_paused=2, average_talk_seconds=30.0)
    assert expected_wait_seconds(1, everyone_paused) is None
    assert expected_wait_seconds(1, stats(average_talk_seconds=30.0)) is None  # nobody in
    with pytest.raises(ValueError):
        expected_wait_seconds(0, stats(agents_logged_in=1, average_talk_seconds=30.0))


def test_announcement_timing_and_minutes() -> None:
    assert next_announcement_ms(1_000, None, 30) == 31_000
    assert next_announcement_ms(1_000, 50_000, 30) == 80_000
    assert next_announcement_ms(60_000, 1_000, 30) == 90_000  # an older queue's, ignored
    assert Announcement(1, None).minutes is None
    assert Announcement(None, 59).minutes == 0  # "less than one minute"
    assert Announcement(None, 60).minutes == 1
    assert Announcement(None, 61).minutes == 2


def test_recording_file_names() -> None:
    name = recording_file("acme", "sales", CALL, 1_795_700_000.0)
    assert name == f"acme/sales/2026-11-26/{CALL}.wav"
    assert parse_recording_file(name) == ("acme", "sales", CALL)
    for bad in ["acme/sales/2026-11-26/../x.wav", "/etc/passwd", "acme/sales/x/c.wav",
                f"acme/sales/2026-11-26/{CALL}.wav/..", "acme/../2026-11-26/c.wav", ""]:
        assert parse_recording_file(bad) is None, bad


# ---------------------------------------------------------------------------- routing


def test_a_route_gives_its_queue_callers_a_priority_and_the_queues_music() -> None:
    vip = decide_inbound(CONFIG, "acme", "5550101")
    assert (vip.queue, vip.priority, vip.moh_class) == ("sales", 7, "calm")
    assert decide_inbound(CONFIG, "acme", "5550100").priority == 0
    # A failover to another queue keeps the call's priority (None: not set again).
    plain = decide_destination(TENANT, "5550101", TENANT.queues[0].failover)
    assert (plain.queue, plain.priority, plain.moh_class) == ("plain", None, "")


def route(did: str) -> tuple[FakeCallRecord, MemoryEventLog]:
    events = MemoryEventLog()
    record = run_async(drive_session(InboundRoute(CONFIG, as_event_log(events)),
                                     script="inbound_route", command_timeout=0.5,
                                     params={"tenant": "acme", "did": did, "trunk": ""}))
    return record, events


def test_inbound_route_sets_the_priority_and_music_class_for_the_dialplan() -> None:
    record, events = route("5550101")
    assert record.variables == {"OMNICC_DEST": "queue", "OMNICC_QUEUE": "sales",
                                "OMNICC_QUEUE_MOH": "calm", "OMNICC_PRIORITY": "7",
                                "OMNICC_STATUS": "OK"}
    (event,) = events.events
    assert (event.fields["queue"], event.fields["priority"]) == ("sales", "7")
    record, _ = route("5550102")  # an agent destination carries neither
    assert "OMNICC_PRIORITY" not in record.variables
    assert "OMNICC_QUEUE_MOH" not in record.variables


# ---------------------------------------------------------------------------- queue_call


class StatsStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.stats = stats()

    async def queue_stats(self, tenant: str, queue: str) -> QueueStats:
        self.ops.append(("queue_stats", queue))
        return self.stats


def queue_call(store: FakeStore, events: MemoryEventLog, timeout: float = 5.0,
               **extra: str) -> FakeCallRecord:
    params = {"tenant": "acme", "queue": "sales", "call": CALL, "did": "5550101",
              "priority": "7", **extra}
    return run_async(drive_session(QueueCall(CONFIG, store, as_event_log(events)),
                                   script="queue_call", params=params, command_timeout=1.0,
                                   timeout=timeout), timeout=timeout + 1)


def test_the_priority_reaches_the_acd() -> None:
    store = StatsStore()
    store.enqueue_result = AcdResult("ok", "RESERVED", (Offer(CALL, "1001", "sales", NODE, 5),))
    record = queue_call(store, MemoryEventLog())
    assert store.ops[0] == ("enqueue", "acme", CALL, "sales", "5551234", "5550101", 7)
    assert record.variables["OMNICC_QUEUE_RECORDING"].startswith("acme/sales/")
    assert record.variables["OMNICC_QUEUE_RECORDING"].endswith(f"/{CALL}.wav")


def test_a_due_announcement_returns_position_and_expected_wait_then_the_call_resumes() -> None:
    store, events = StatsStore(), MemoryEventLog()
    # Waiting 6 s already (announcements every 5 s): one is due at once; 2 ahead of it.
    store.status(enqueued_at_ms=now_ms() - 6_000, position=3)
    store.stats = stats(agents_logged_in=2, average_talk_seconds=50.0)
    before = now_ms()
    record = queue_call(store, events)
    assert store.op_names() == ["renew", "queue_stats"]  # kept its place: no enqueue
    announced = int(record.variables.pop("OMNICC_QUEUE_ANNOUNCED"))
    assert before <= announced <= now_ms()
    # 3 * (50 + 10) / 2 = 90 s: said as 2 minutes.
    assert record.variables == {"OMNICC_DEST": "queue_announce",
                                "OMNICC_ANNOUNCE_POSITION": "3",
                                "OMNICC_ANNOUNCE_MINUTES": "2", "OMNICC_STATUS": "OK"}
    (event,) = events.events
    assert event.event == "call_announced"
    assert event.fields == {"call": CALL, "queue": "sales", "position": "3",
                            "expected_wait_seconds": "90"}

    # Back from the announcement: it waits (for an offer) until the next one is due.
    store.ops.clear()
    store.offers = asyncio.Queue()
    store.offers.put_nowait([Offer(CALL, "1001", "sales", NODE, 9)])
    record = queue_call(store, events, announced=str(announced))
    assert store.op_names() == ["renew", "wait"]
    assert 3.0 <= store.ops[1][2] <= 10 / 3  # a third of the lease, not past the next one
    assert record.variables["OMNICC_DEST"] == "queue_agent"


def test_the_wait_is_cut_short_for_the_next_announcement() -> None:
    store, events = StatsStore(), MemoryEventLog()
    store.status(enqueued_at_ms=now_ms() - 10_000)
    store.offers = asyncio.Queue()
    record = queue_call(store, events, announced=str(now_ms() - 4_000))  # due in 1 s
    # The wait for an offer ends when the announcement is due, not a lease third later.
    assert store.op_names()[:2] == ["renew", "wait"]
    assert 0.5 < store.ops[1][2] <= 1.0
    assert record.variables["OMNICC_DEST"] == "queue_announce"
    # Nobody serving: the wait is not said.
    assert record.variables["OMNICC_ANNOUNCE_MINUTES"] == ""
    assert events.events[0].fields["expected_wait_seconds"] == ""


def test_a_call_reserved_when_its_announcement_falls_due_is_dialled_instead() -> None:
    store = StatsStore()
    store.status(enqueued_at_ms=now_ms() - 6_000)

    async def reserved(tenant: str, status: object) -> list[Offer]:
        return [Offer(CALL, "1001", "sales", NODE, 4)]

    real_status = store.call_status
    seen: list[int] = []

    async def call_status(tenant: str, call: str):  # type: ignore[no-untyped-def]
        seen.append(1)
        status = await real_status(tenant, call)
        # From the announcement's read on, an agent holds the call.
        if len(seen) >= 2 and status is not None:
            from omnicc.agent_state import CallState
            return replace(status, state=CallState.RESERVED, ringing=("1001",), position=None)
        return status

    store.call_status = call_status  # type: ignore[method-assign]
    store.current_offers = reserved  # type: ignore[method-assign,assignment]
    record = queue_call(store, MemoryEventLog())
    assert record.variables["OMNICC_DEST"] == "queue_agent"
    assert record.variables["OMNICC_QUEUE_OFFERS"] == "1001:4"


# ---------------------------------------------------------------------------- queue_answer


def answer(store: FakeStore, events: MemoryEventLog, recording: str) -> FakeCallRecord:
    params = {"tenant": "acme", "call": CALL, "offers": "1001:5", "agent": "1001",
              "recording": recording}
    return run_async(drive_session(QueueAnswer(CONFIG, store, as_event_log(events)),
                                   script="queue_answer", params=params, command_timeout=1.0))


def test_an_answered_recorded_call_names_its_file_in_the_stream() -> None:
    store, events = FakeStore(), MemoryEventLog()
    name = recording_file("acme", "sales", CALL, time.time())
    record = answer(store, events, name)
    assert record.variables == {"OMNICC_RECORD": name, "OMNICC_STATUS": "OK"}
    (event,) = events.events
    assert (event.tenant, event.event) == ("acme", "call_recording")
    assert event.fields == {"call": CALL, "queue": "sales", "agent": "1001",
                            "recording": name, "mode": "always"}


@pytest.mark.parametrize("recording", [
    "", "globex/sales/2026-11-26/" + CALL + ".wav",  # another tenant's
    "acme/sales/2026-11-26/other-call.wav",           # another call's
    "../../etc/x.wav"])
def test_no_recording_unless_it_is_this_calls(recording: str) -> None:
    store, events = FakeStore(), MemoryEventLog()
    record = answer(store, events, recording)
    assert record.variables == {"OMNICC_STATUS": "OK"}
    assert events.events == []


def test_a_refused_answer_records_nothing() -> None:
    store, events = FakeStore(), MemoryEventLog()
    store.answer_code = "not_reserved"
    record = answer(store, events, recording_file("acme", "sales", CALL, time.time()))
    assert record.variables == {"OMNICC_STATUS": "REFUSED"}
    assert events.events == []


# ---------------------------------------------------------------------------- render


def test_musiconhold_conf_has_a_class_per_queue_moh_class(tmp_path: Path) -> None:
    dirs = AsteriskDirs(etc="/s/etc", mod="/usr/lib/asterisk/modules", varlib="/v",
                        data="/d", db="/db", spool="/sp", run="/r", log="/l")
    render_asterisk(CONFIG, tmp_path, dirs=dirs)
    text = (tmp_path / "musiconhold.conf").read_text()
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[default]", "[calm]"]
    # A deployment's own Asterisk keeps its musiconhold.conf: not rendered without dirs.
    render_asterisk(CONFIG, tmp_path / "deploy")
    assert not (tmp_path / "deploy" / "musiconhold.conf").exists()
