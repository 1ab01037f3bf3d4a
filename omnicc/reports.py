"""Call summaries from the event stream. Pure: takes events, returns rows.

Two sources make one picture. The FastAGI handlers record each channel (call_routed,
call_unrouted, and the hang-up handler's call_ended, which has no `call` field); the ACD
records each queued call (call_enqueued, call_reserved, call_answered, its own call_ended
with `call` and `talk_ms`, call_abandoned, call_failed_over, call_overflowed) and the
queue handlers add call_recording. A queued call's agent is the ACD's (with ringall the
channel only knows the first agent rung), so an agent's queue calls are counted from the
ACD's events and the channel's end of a call answered in a queue only counts as ended.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class AgentCalls:
    agent: str
    offered: int = 0
    answered: int = 0
    talk_seconds: float = 0.0


@dataclass
class QueueCalls:
    queue: str
    entered: int = 0       # call_enqueued
    answered: int = 0
    abandoned: int = 0
    failed_over: int = 0   # max wait, or the call's lease ran out
    overflowed: int = 0    # refused at entry: queue full, no agent logged in
    wait_seconds_answered: float = 0.0
    recordings: list[str] = field(default_factory=list)

    @property
    def average_wait_seconds(self) -> float | None:
        return self.wait_seconds_answered / self.answered if self.answered else None


@dataclass
class CallSummary:
    routed: int = 0          # calls the inbound router placed somewhere
    unrouted: int = 0        # calls that went to failover (no route, unknown tenant)
    ended: int = 0           # channels that ended
    by_agent: dict[str, AgentCalls] = field(default_factory=dict)
    by_queue: dict[str, QueueCalls] = field(default_factory=dict)

    @property
    def offered(self) -> int:
        return sum(a.offered for a in self.by_agent.values())

    @property
    def answered(self) -> int:
        return sum(a.answered for a in self.by_agent.values())


# The dialplan's OMNICC_DEST while a queued call rings or talks to its agent.
QUEUE_AGENT_DESTINATION = "queue_agent"
_QUEUE_COUNTERS = {"call_enqueued": "entered", "call_answered": "answered",
                   "call_abandoned": "abandoned", "call_failed_over": "failed_over",
                   "call_overflowed": "overflowed"}


def summarize_calls(events: Iterable[Mapping[str, str]]) -> CallSummary:
    summary = CallSummary()

    def agent_row(agent: str) -> AgentCalls:
        return summary.by_agent.setdefault(agent, AgentCalls(agent))

    for ev in events:
        kind = ev.get("event")
        agent = ev.get("agent", "")
        queue = ev.get("queue", "")
        if kind == "call_routed":
            summary.routed += 1
            if agent:
                agent_row(agent).offered += 1
        elif kind == "call_unrouted":
            summary.unrouted += 1
        elif kind == "call_ended" and "call" in ev:  # the ACD's: a queued call's talk
            if agent:
                agent_row(agent).talk_seconds += _seconds(ev.get("talk_ms")) / 1000
        elif kind == "call_ended":
            summary.ended += 1
            if (agent and ev.get("dialstatus") == "ANSWER"
                    and ev.get("destination") != QUEUE_AGENT_DESTINATION):
                row = agent_row(agent)
                row.answered += 1
                row.talk_seconds += _seconds(ev.get("answered_seconds"))
        elif kind == "call_reserved" and agent:
            agent_row(agent).offered += 1
        if queue and kind in _QUEUE_COUNTERS:
            row_q = summary.by_queue.setdefault(queue, QueueCalls(queue))
            setattr(row_q, _QUEUE_COUNTERS[kind], getattr(row_q, _QUEUE_COUNTERS[kind]) + 1)
            if kind == "call_answered":
                row_q.wait_seconds_answered += _seconds(ev.get("wait_ms")) / 1000
                if agent:
                    agent_row(agent).answered += 1
        elif queue and kind == "call_recording" and ev.get("recording"):
            summary.by_queue.setdefault(queue, QueueCalls(queue)).recordings.append(
                ev["recording"])
    return summary


def _seconds(text: str | None) -> float:
    """A duration from an event field; garbage counts as 0 rather than spoiling the total
    (float() also accepts "nan", "inf" and negatives, which no call lasts)."""
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, row)) for row in rows]
    return "\n".join(s.rstrip() for s in out)


def format_call_summary(summary: CallSummary) -> str:
    rows = [
        [a.agent, str(a.offered), str(a.answered), f"{a.talk_seconds:.1f}"]
        for a in sorted(summary.by_agent.values(), key=lambda a: a.agent)
    ]
    rows.append(["total", str(summary.offered), str(summary.answered),
                 f"{sum(a.talk_seconds for a in summary.by_agent.values()):.1f}"])
    table = format_table(["agent", "offered", "answered", "talk s"], rows)
    text = (f"{table}\n\ncalls routed: {summary.routed}   sent to failover: {summary.unrouted}"
            f"   ended: {summary.ended}")
    if summary.by_queue:
        text += "\n\n" + format_queue_summary(summary)
    return text


def format_queue_summary(summary: CallSummary) -> str:
    rows = [
        [q.queue, str(q.entered), str(q.answered), str(q.abandoned), str(q.failed_over),
         str(q.overflowed),
         "-" if q.average_wait_seconds is None else f"{q.average_wait_seconds:.1f}",
         str(len(q.recordings))]
        for q in sorted(summary.by_queue.values(), key=lambda q: q.queue)
    ]
    return format_table(["queue", "entered", "answered", "abandoned", "failed over",
                         "overflowed", "avg wait s", "recorded"], rows)
