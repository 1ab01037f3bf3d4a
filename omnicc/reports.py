"""Call summaries from the event stream. Pure: takes events, returns rows."""

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
class CallSummary:
    routed: int = 0          # calls the inbound router placed somewhere
    unrouted: int = 0        # calls that went to failover (no route, unknown tenant)
    ended: int = 0
    by_agent: dict[str, AgentCalls] = field(default_factory=dict)

    @property
    def offered(self) -> int:
        return sum(a.offered for a in self.by_agent.values())

    @property
    def answered(self) -> int:
        return sum(a.answered for a in self.by_agent.values())


def summarize_calls(events: Iterable[Mapping[str, str]]) -> CallSummary:
    summary = CallSummary()
    for ev in events:
        kind = ev.get("event")
        agent = ev.get("agent", "")
        if kind == "call_routed":
            summary.routed += 1
            if agent:
                summary.by_agent.setdefault(agent, AgentCalls(agent)).offered += 1
        elif kind == "call_unrouted":
            summary.unrouted += 1
        elif kind == "call_ended":
            summary.ended += 1
            if agent and ev.get("dialstatus") == "ANSWER":
                row = summary.by_agent.setdefault(agent, AgentCalls(agent))
                row.answered += 1
                row.talk_seconds += _seconds(ev.get("answered_seconds"))
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
    return (f"{table}\n\ncalls routed: {summary.routed}   sent to failover: {summary.unrouted}"
            f"   ended: {summary.ended}")
