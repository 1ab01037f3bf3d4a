"""The pure parts of `omnicc queue ...` and `omnicc agent show`: durations, tables, JSON."""

from __future__ import annotations

import json

from omnicc.acd import AgentStatus, MemberStatus, QueueStats, WaitingCall, summarize_queue
from omnicc.agent_cli import describe_agent
from omnicc.agent_state import AgentState
from omnicc.config import Queue
from omnicc.queue_cli import (
    format_show,
    format_stats_table,
    percent,
    seconds,
    show_json,
    stats_json,
    table,
)

NOW = 1_700_000_100_000


def sales_stats() -> QueueStats:
    return summarize_queue(
        "sales", [("c9", float(NOW - 75_000))],
        {"READY": "2", "PAUSED": "1", "ONCALL": "3", "WRAPUP": "1", "OFFLINE": "4",
         "RESERVED": "0"},
        {"calls_offered": "12", "calls_answered": "8",
         "calls_answered_within_service_level": "6", "calls_abandoned": "2",
         "wait_ms_answered_total": "96000", "wait_ms_abandoned_total": "50000",
         "calls_ended": "5", "talk_ms_total": "600000"}, NOW)


def test_durations_and_percentages_read_as_a_supervisor_says_them() -> None:
    assert [seconds(v) for v in (None, 0, 7.4, 59.6, 125, 3720)] == \
        ["-", "0s", "7s", "1m00s", "2m05s", "1h02m"]
    assert percent(None) == "-" and percent(200 / 3) == "66.7%"


def test_summaries_count_offline_members_and_the_wait_of_abandoned_calls() -> None:
    stats = sales_stats()
    assert (stats.agents_offline, stats.agents_logged_in) == (4, 7)
    assert stats.average_abandon_seconds == 25.0
    assert stats.service_level_percent == 60.0  # 6 of 8 answered + 2 abandoned


def test_the_stats_table_has_one_aligned_row_per_queue() -> None:
    stats = sales_stats()
    idle = summarize_queue("support", [], {}, {}, NOW)
    queues = [Queue(name="sales", service_level_seconds=30), Queue(name="support")]
    text = format_stats_table(queues, [stats, idle])
    header, sales, support, *notes = text.splitlines()
    assert sales.split() == ["sales", "1", "1m15s", "2", "0", "3", "1", "1", "4", "8", "2",
                             "60.0%", "12s"]
    assert support.split() == ["support", "0", "-", "0", "0", "0", "0", "0", "0", "0", "0",
                               "-", "-"]
    # Numbers end under the end of their heading.
    assert header.index("ANSWERED") + len("ANSWERED") == sales.index(" 8 ") + 2
    assert "each queue's service_level_seconds" in notes[0]
    single = format_stats_table(queues[:1], [stats])
    assert "calls answered within 30s" in single


def test_tables_put_names_and_text_left_and_numbers_right() -> None:
    assert table(("NAME", "N", "NOTE"), [["1001", "5", "x"], ["10", "12", "long note"]]) == (
        "NAME   N  NOTE\n"
        "1001   5  x\n"
        "10    12  long note")


def test_stats_json_carries_every_figure_and_the_threshold() -> None:
    data = json.loads(stats_json("acme", [Queue(name="sales", strategy="ringall")],
                                 [sales_stats()]))
    [sales] = data["queues"]
    assert data["tenant"] == "acme"
    assert (sales["queue"], sales["calls_waiting"], sales["service_level_seconds"],
            sales["strategy"], sales["average_speed_of_answer_seconds"]) == \
        ("sales", 1, 20, "ringall", 12.0)


def test_queue_show_lists_members_and_waiting_calls() -> None:
    members = [MemberStatus("1001", 0, 80, AgentState.ONCALL, "", True, "c1"),
               MemberStatus("1002", 1, 50, AgentState.PAUSED, "lunch", False, "")]
    waiting = [WaitingCall(1, "c9", 2, 75.0, "+15550001", "5550100", "n1")]
    queue = Queue(name="sales", strategy="skills-weighted")
    text = format_show(queue, sales_stats(), members, waiting)
    assert text.startswith("queue sales: strategy skills-weighted, ring 20s")
    assert "2 abandoned (after 25s on average)" in text
    lines = text.splitlines()
    assert lines[lines.index("members (2):") + 2].split() == \
        ["1001", "0", "80", "ONCALL", "-", "c1", "registered"]
    assert lines[-1].split() == ["1", "c9", "1m15s", "2", "+15550001", "5550100"]
    data = json.loads(show_json("acme", queue, sales_stats(), members, waiting))
    assert data["members"][1] == {"extension": "1002", "penalty": 1, "skill": 50,
                                  "state": "PAUSED", "reason": "lunch", "registered": False,
                                  "call": ""}
    assert data["waiting"][0]["waited_seconds"] == 75.0
    empty = format_show(queue, sales_stats(), [], [])
    assert empty.endswith("members (0):\n\nwaiting calls (0):")


def test_agent_show_says_state_call_wrapup_phone_and_queues() -> None:
    status = AgentStatus(
        extension="1001", state=AgentState.WRAPUP, effective_state=AgentState.WRAPUP,
        registered=True, reason="", since_ms=NOW, call="", lease_until_ms=None,
        wrapup_until_ms=NOW + 10_000, calls_taken=3, queues=("sales", "support"))
    line = describe_agent(status)
    assert line.startswith("WRAPUP; wrap-up until ")
    assert line.endswith("; phone registered; queues sales, support")
    offline = AgentStatus(
        extension="1001", state=AgentState.OFFLINE, effective_state=AgentState.OFFLINE,
        registered=False, reason="", since_ms=NOW, call="", lease_until_ms=None,
        wrapup_until_ms=None, calls_taken=0, queues=())
    assert describe_agent(offline) == "OFFLINE; phone not registered; queues none"
