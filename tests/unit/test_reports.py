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
