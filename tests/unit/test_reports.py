"""omnicc/reports.py: call summaries from hand-made event lists."""

from __future__ import annotations

import pytest

from omnicc.reports import AgentCalls, CallSummary, format_call_summary, summarize_calls


def routed(agent: str = "", destination: str = "agent") -> dict[str, str]:
    return {"event": "call_routed", "destination": destination, "agent": agent}


def ended(agent: str = "", dialstatus: str = "ANSWER", seconds: str = "0") -> dict[str, str]:
    return {"event": "call_ended", "agent": agent, "dialstatus": dialstatus,
            "answered_seconds": seconds}


def test_no_events_is_an_empty_summary() -> None:
    summary = summarize_calls([])
    assert summary == CallSummary()
    assert (summary.offered, summary.answered) == (0, 0)


def test_offered_and_answered_are_counted_per_agent() -> None:
    events = [
        routed("1001"), ended("1001", "ANSWER", "30"),
        routed("1001"), ended("1001", "NOANSWER"),
        routed("1002"), ended("1002", "ANSWER", "12.5"),
        routed("1001"), ended("1001", "BUSY"),
    ]
    summary = summarize_calls(events)
    assert summary.by_agent == {
        "1001": AgentCalls("1001", offered=3, answered=1, talk_seconds=30.0),
        "1002": AgentCalls("1002", offered=1, answered=1, talk_seconds=12.5),
    }
    assert (summary.routed, summary.unrouted, summary.ended) == (4, 0, 4)
    assert (summary.offered, summary.answered) == (4, 2)


def test_calls_sent_to_failover_are_counted() -> None:
    events = [
        {"event": "call_unrouted", "reason": "no inbound route"},
        {"event": "call_unrouted", "reason": "no inbound route"},
        routed("1001"),
        ended(dialstatus=""),  # the unrouted calls still end
        ended(dialstatus=""),
        ended("1001", "ANSWER", "5"),
    ]
    summary = summarize_calls(events)
    assert (summary.routed, summary.unrouted, summary.ended) == (1, 2, 3)
    assert summary.answered == 1


def test_hangup_destinations_are_routed_but_offered_to_no_agent() -> None:
    summary = summarize_calls([routed(destination="hangup"), ended(dialstatus="")])
    assert (summary.routed, summary.offered, summary.by_agent) == (1, 0, {})


def test_talk_time_adds_up_across_calls() -> None:
    summary = summarize_calls([ended("1001", "ANSWER", s) for s in ("10", "20.25", "0.75")])
    assert summary.by_agent["1001"].talk_seconds == pytest.approx(31.0)


@pytest.mark.parametrize("garbage", ["", "abc", "12s", "nan", "inf", "-inf", "-30", "1e999"])
def test_garbage_answered_seconds_counts_the_call_but_no_talk_time(garbage: str) -> None:
    summary = summarize_calls([ended("1001", "ANSWER", "10"), ended("1001", "ANSWER", garbage)])
    assert summary.by_agent["1001"].answered == 2
    assert summary.by_agent["1001"].talk_seconds == 10.0


def test_missing_fields_are_tolerated() -> None:
    summary = summarize_calls([{"event": "call_ended", "agent": "1001", "dialstatus": "ANSWER"},
                               {"event": "call_routed"}, {}, {"event": "something_new"}])
    assert summary.by_agent["1001"] == AgentCalls("1001", offered=0, answered=1)
    assert (summary.routed, summary.ended) == (1, 1)


def test_formatted_summary_lists_agents_in_order_then_totals() -> None:
    events = [routed("1002"), ended("1002", "ANSWER", "12.5"),
              routed("1001"), ended("1001", "ANSWER", "30"), routed("1001"),
              {"event": "call_unrouted"}]
    lines = format_call_summary(summarize_calls(events)).splitlines()
    assert lines[0].split() == ["agent", "offered", "answered", "talk", "s"]
    assert set(lines[1]) <= {"-", " "}
    assert [line.split() for line in lines[2:5]] == [
        ["1001", "2", "1", "30.0"],
        ["1002", "1", "1", "12.5"],
        ["total", "3", "2", "42.5"],
    ]
    assert lines[5] == ""
    assert lines[6].split() == ["calls", "routed:", "3", "sent", "to", "failover:", "1",
                                "ended:", "2"]


def test_formatted_columns_line_up() -> None:
    text = format_call_summary(summarize_calls([routed("123456789012")]))
    header, rule, *rows = text.splitlines()[:4]
    # Each column starts where its dashes start.
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    for line in (header, *rows):
        assert all(line[s] != " " for s in starts), line


def test_formatted_empty_summary_still_has_a_total_row() -> None:
    lines = format_call_summary(CallSummary()).splitlines()
    assert lines[2].split() == ["total", "0", "0", "0.0"]


# ---------------------------------------------------------------------------- queued calls


def queued_call(call: str, agent: str, *, wait_ms: str = "1500", talk_ms: str = "4000",
                queue: str = "support") -> list[dict[str, str]]:
    """A queued call as the stream has it: the channel's events and the ACD's."""
    return [
        routed(destination="queue") | {"queue": queue},
        {"event": "call_enqueued", "call": call, "queue": queue},
        {"event": "call_reserved", "call": call, "queue": queue, "agent": agent},
        {"event": "call_answered", "call": call, "queue": queue, "agent": agent,
         "wait_ms": wait_ms},
        {"event": "call_ended", "call": call, "queue": queue, "agent": agent,
         "talk_ms": talk_ms},
        # The channel's end: with ringall its agent may be another than the ACD's.
        {"event": "call_ended", "uniqueid": call, "destination": "queue_agent",
         "agent": "1001", "dialstatus": "ANSWER", "answered_seconds": "5"},
    ]


def test_queued_calls_count_for_the_agent_the_acd_connected_and_for_their_queue() -> None:
    events = [
        *queued_call("c1", "1001", wait_ms="1000", talk_ms="4000"),
        *queued_call("c2", "1002", wait_ms="3000", talk_ms="2500"),
        {"event": "call_recording", "call": "c2", "queue": "support", "agent": "1002",
         "recording": "default/support/2026-11-26/c2.wav"},
        {"event": "call_enqueued", "call": "c3", "queue": "support"},
        {"event": "call_reserved", "call": "c3", "queue": "support", "agent": "1002"},
        {"event": "call_abandoned", "call": "c3", "queue": "support"},
        {"event": "call_overflowed", "call": "c4", "queue": "sales"},
        {"event": "call_failed_over", "call": "c5", "queue": "sales"},
    ]
    summary = summarize_calls(events)
    assert summary.by_agent == {
        "1001": AgentCalls("1001", offered=1, answered=1, talk_seconds=4.0),
        "1002": AgentCalls("1002", offered=2, answered=1, talk_seconds=2.5),
    }
    assert (summary.routed, summary.ended) == (2, 2)
    support, sales = summary.by_queue["support"], summary.by_queue["sales"]
    assert (support.entered, support.answered, support.abandoned) == (3, 2, 1)
    assert support.average_wait_seconds == pytest.approx(2.0)
    assert support.recordings == ["default/support/2026-11-26/c2.wav"]
    assert (sales.entered, sales.overflowed, sales.failed_over) == (0, 1, 1)
    assert sales.average_wait_seconds is None

    text = format_call_summary(summary)
    queue_lines = text.split("\n\n")[-1].splitlines()
    assert queue_lines[0].split() == ["queue", "entered", "answered", "abandoned", "failed",
                                      "over", "overflowed", "avg", "wait", "s", "recorded"]
    assert [line.split() for line in queue_lines[2:]] == [
        ["sales", "0", "0", "0", "1", "1", "-", "0"],
        ["support", "3", "2", "1", "0", "0", "2.0", "1"],
    ]


def test_without_queued_calls_there_is_no_queue_table() -> None:
    text = format_call_summary(summarize_calls([routed("1001"), ended("1001")]))
    assert "queue" not in text
