"""The ACD's pure parts: the state tables, and the decoding and arithmetic of omnicc.acd."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnicc.acd import (
    AcdResult,
    Offer,
    QueueSettings,
    Strategy,
    decode_result,
    enqueued_at_from_score,
    parse_offer_message,
    summarize_queue,
    tenant_of_offers_channel,
    waiting_score,
)
from omnicc.acd_lua import MAX_PRIORITY, PRELUDE, SCRIPTS
from omnicc.agent_state import (
    AGENT_TRANSITIONS,
    FINAL_CALL_STATES,
    AgentEvent,
    AgentState,
    CallEvent,
    CallState,
    Refusal,
    effective_state,
    next_call_state,
    next_state,
)
from omnicc.keys import node_offers

A, E = AgentState, AgentEvent


def test_every_state_and_event_has_an_answer() -> None:
    for state in AgentState:
        for event in AgentEvent:
            for registered in (True, False):
                for auto_pause in (True, False):
                    step = next_state(state, event, registered=registered, auto_pause=auto_pause)
                    assert step.allowed or step.state is state
    for call_state in CallState:
        for call_event in CallEvent:
            step = next_call_state(call_state, call_event)
            assert step.allowed or step.state is call_state


@pytest.mark.parametrize("state", list(AgentState))
@pytest.mark.parametrize("event", list(AgentEvent))
def test_no_unregistered_agent_ever_becomes_ready(state: AgentState, event: AgentEvent) -> None:
    for auto_pause in (True, False):
        step = next_state(state, event, registered=False, auto_pause=auto_pause)
        assert step.state is not A.READY or state is A.READY


def test_requests_refused_for_an_unregistered_phone_automatic_returns_go_offline() -> None:
    assert next_state(A.OFFLINE, E.LOGIN, registered=False).refusal is Refusal.NOT_REGISTERED
    assert next_state(A.PAUSED, E.UNPAUSE, registered=False).refusal is Refusal.NOT_REGISTERED
    assert next_state(A.WRAPUP, E.WRAPUP_END, registered=False).state is A.OFFLINE
    assert next_state(A.RESERVED, E.RELEASE, registered=False).state is A.OFFLINE
    assert next_state(A.RESERVED, E.NO_ANSWER, registered=False).state is A.OFFLINE
    # A paused agent needs no registration: auto-pause still pauses.
    assert next_state(A.RESERVED, E.NO_ANSWER, registered=False,
                      auto_pause=True).state is A.PAUSED


def test_the_lifecycle_of_an_agent() -> None:
    path = [(E.LOGIN, A.READY), (E.RESERVE, A.RESERVED), (E.ANSWER, A.ONCALL),
            (E.HANGUP, A.WRAPUP), (E.WRAPUP_END, A.READY), (E.PAUSE, A.PAUSED),
            (E.UNPAUSE, A.READY), (E.RESERVE, A.RESERVED), (E.NO_ANSWER, A.READY),
            (E.LOGOUT, A.OFFLINE)]
    state = A.OFFLINE
    for event, expected in path:
        state = next_state(state, event).state
        assert state is expected, event


def test_an_agent_on_a_call_cannot_pause_or_leave_unless_forced() -> None:
    assert next_state(A.ONCALL, E.PAUSE).refusal is Refusal.ON_CALL
    assert next_state(A.ONCALL, E.LOGOUT).refusal is Refusal.ON_CALL
    assert next_state(A.ONCALL, E.FORCE_LOGOUT).state is A.OFFLINE
    assert next_state(A.ONCALL, E.UNREGISTER).state is A.ONCALL


def test_only_a_ready_agent_can_be_reserved() -> None:
    for state in AgentState:
        assert next_state(state, E.RESERVE).allowed == (state is A.READY)
    assert all(E.RESERVE not in events or state is A.READY
               for state, events in AGENT_TRANSITIONS.items())


def test_final_call_states_are_final() -> None:
    for state in FINAL_CALL_STATES:
        for event in CallEvent:
            assert next_call_state(state, event).refusal is Refusal.CALL_OVER
    assert next_call_state(CallState.CONNECTED, CallEvent.ABANDON).refusal is Refusal.CONNECTED
    assert next_call_state(CallState.RESERVED, CallEvent.UNRESERVE).state is CallState.WAITING


def test_effective_state_ends_a_wrapup_that_is_over() -> None:
    assert effective_state(A.WRAPUP, 1000, 999) is A.WRAPUP
    assert effective_state(A.WRAPUP, 1000, 1000) is A.READY
    assert effective_state(A.WRAPUP, 1000, 1000, registered=False) is A.OFFLINE
    assert effective_state(A.PAUSED, 1000, 5000) is A.PAUSED


def test_the_lua_tables_are_generated_from_next_state() -> None:
    step = next_state(A.PAUSED, E.UNPAUSE, registered=False)
    assert f"['PAUSED|unpause|0|0'] = {{'PAUSED', '{step.refusal}'}}," in PRELUDE
    assert "['RESERVED|no_answer|1|1'] = {'PAUSED', ''}," in PRELUDE
    assert "['CONNECTED|abandon'] = {'CONNECTED', 'connected'}," in PRELUDE
    assert all(script.startswith(PRELUDE) for script in SCRIPTS.values())


@given(st.integers(0, MAX_PRIORITY), st.integers(0, 4_000_000_000_000),
       st.integers(0, MAX_PRIORITY), st.integers(0, 4_000_000_000_000))
def test_waiting_order_is_priority_then_longest_wait(p1: int, t1: int, p2: int, t2: int) -> None:
    first = waiting_score(p1, t1) < waiting_score(p2, t2)
    assert first == ((p1 > p2) or (p1 == p2 and t1 < t2))
    assert enqueued_at_from_score(float(waiting_score(p1, t1))) == t1


def test_decode_result() -> None:
    raw = [b"ok", b"RESERVED", [[b"c1", b"1001", b"sales", b"n1", b"1700000030000"]],
           [b"position", b"0"]]
    assert decode_result(raw) == AcdResult(
        "ok", "RESERVED", (Offer("c1", "1001", "sales", "n1", 1_700_000_030_000),),
        {"position": "0"})
    assert not decode_result(["not_registered", "OFFLINE", [], []]).ok


def test_offer_messages_and_channels() -> None:
    assert parse_offer_message("c1 1001,1002 help 1700000030000") == [
        Offer("c1", "1001", "help", "", 1_700_000_030_000),
        Offer("c1", "1002", "help", "", 1_700_000_030_000)]
    assert tenant_of_offers_channel(node_offers("acme", "n1")) == "acme"
    with pytest.raises(ValueError):
        parse_offer_message("garbage")


def test_queue_settings_are_checked_and_written_whole() -> None:
    fields = QueueSettings(strategy=Strategy.RINGALL, overflow_when_no_agents=True).redis_fields()
    assert fields["strategy"] == "ringall" and fields["overflow_when_no_agents"] == "1"
    with pytest.raises(ValueError, match="wrapup_ms"):
        QueueSettings(wrapup_ms=-1)
    with pytest.raises(ValueError, match="lease"):
        QueueSettings(call_lease_ms=0)


def test_summarize_queue() -> None:
    now = 1_700_000_100_000
    waiting = [("a", float(waiting_score(2, now - 5_000))),
               ("b", float(waiting_score(0, now - 9_000)))]
    stats = summarize_queue(
        "sales", waiting, {"READY": "2", "PAUSED": "1", "OFFLINE": "4", "ONCALL": "0"},
        {"calls_answered": "3", "calls_answered_within_service_level": "2",
         "calls_abandoned": "1", "wait_ms_answered_total": "6000", "calls_ended": "2",
         "talk_ms_total": "120000"}, now)
    assert stats.calls_waiting == 2 and stats.longest_wait_seconds == 9.0
    assert (stats.agents_logged_in, stats.agents_ready, stats.agents_paused) == (3, 2, 1)
    assert stats.service_level_percent == 50.0
    assert stats.average_speed_of_answer_seconds == 2.0
    assert stats.average_talk_seconds == 60.0
    empty = summarize_queue("q", [], {}, {}, now)
    assert empty.service_level_percent is None and empty.longest_wait_seconds == 0.0
