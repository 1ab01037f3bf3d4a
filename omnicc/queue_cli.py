"""`omnicc queue stats [QUEUE]` and `omnicc queue show QUEUE`: what a supervisor asks of the
queues, read from the shared Redis (every node's calls and agents).

Both settle what is due first (the ACD's tick), so a wrap-up that is over or a lease that
ran out shows as ended. The formatting below `cmd_queue` is pure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict

import redis

from omnicc.acd import MemberStatus, QueueStats, WaitingCall
from omnicc.config import Queue, Tenant, load_config


def add_queue_commands(subparsers: argparse._SubParsersAction) -> None:
    queue = subparsers.add_parser("queue", help="queues: live statistics, members, waiting calls")
    commands = queue.add_subparsers(dest="queue_command", required=True, metavar="SUBCOMMAND")
    stats = commands.add_parser(
        "stats", help="per queue: calls waiting, longest wait, agents by state, answered, "
                      "abandoned, service level, average wait")
    stats.add_argument("queue", nargs="?", metavar="QUEUE",
                       help="one queue (default: every queue of the tenant)")
    show = commands.add_parser("show", help="one queue: its numbers, members and waiting calls")
    show.add_argument("queue", metavar="QUEUE")
    for sub, action in ((stats, "stats"), (show, "show")):
        sub.add_argument("--tenant", help="tenant name (default: the first tenant)")
        sub.add_argument("--json", action="store_true", help="JSON instead of tables")
        sub.set_defaults(func=cmd_queue, action=action)


def _fail(action: str, message: str, code: int) -> int:
    print(f"omnicc queue {action}: {message}", file=sys.stderr)
    return code


def cmd_queue(args: argparse.Namespace) -> int:
    from omnicc.acd import AcdSync

    config = load_config(args.config)
    tenant = config.tenant(args.tenant) if args.tenant else config.tenants[0]
    if tenant is None:
        names = ", ".join(t.name for t in config.tenants)
        return _fail(args.action, f"no tenant named {args.tenant!r} (tenants: {names})", 2)
    if args.queue is not None:
        queue = tenant.queue(args.queue)
        if queue is None:
            return _fail(args.action, f"no queue named {args.queue!r} in tenant {tenant.name} "
                                      f"({_queue_names(tenant)})", 2)
        queues = [queue]
    else:
        queues = list(tenant.queues)
        if not queues:
            return _fail(args.action, f"tenant {tenant.name} has no queues", 2)
    client = redis.Redis(host=config.services.listen, port=config.services.redis.port,
                         socket_timeout=5)
    acd = AcdSync(client, config.node)
    acd.tick(tenant.name)
    known = [q for q in queues if acd.queue_known(tenant.name, q.name)]
    for missing in (q for q in queues if q not in known):
        print(f"omnicc queue {args.action}: queue {missing.name} of tenant {tenant.name} is "
              "not in the ACD yet: a FastAGI server pushes the config's queues when it starts "
              "(omnicc up)", file=sys.stderr)
    if not known:
        return 1
    if args.action == "stats":
        stats = [acd.queue_stats(tenant.name, q.name) for q in known]
        print(stats_json(tenant.name, known, stats) if args.json
              else format_stats_table(known, stats))
    else:
        [queue] = known
        stats = acd.queue_stats(tenant.name, queue.name)
        members = acd.queue_members(tenant.name, queue.name)
        waiting = acd.waiting_calls(tenant.name, queue.name)
        print(show_json(tenant.name, queue, stats, members, waiting) if args.json
              else format_show(queue, stats, members, waiting))
    return 0 if len(known) == len(queues) else 1


def _queue_names(tenant: Tenant) -> str:
    names = [q.name for q in tenant.queues]
    return "queues: " + ", ".join(names) if names else "it has no queues"


# ---------------------------------------------------------------------------- pure


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned: the first (a name) and text left, numbers and durations right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows,
                                                                        strict=True)]

    def numeric(column: int) -> bool:
        return all(_numberlike(row[column]) for row in rows) if rows else False

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i > 0 and numeric(i) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


_NUMBERLIKE = re.compile(r"^(-|[0-9]+(\.[0-9]+)?%?|([0-9]+[hms])+)$")


def _numberlike(cell: str) -> bool:
    return bool(_NUMBERLIKE.match(cell))


def seconds(value: float | None) -> str:
    """A duration as a supervisor reads it: 7s, 2m05s, 1h02m; '-' when there is none."""
    if value is None:
        return "-"
    total = int(round(value))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


STATS_HEADER = ("QUEUE", "WAITING", "LONGEST WAIT", "READY", "RINGING", "ON CALL", "WRAP-UP",
                "PAUSED", "OFFLINE", "ANSWERED", "ABANDONED", "SERVICE LEVEL", "AVG WAIT")


def stats_row(stats: QueueStats) -> list[str]:
    return [stats.queue, str(stats.calls_waiting),
            seconds(stats.longest_wait_seconds) if stats.calls_waiting else "-",
            str(stats.agents_ready), str(stats.agents_ringing), str(stats.agents_on_call),
            str(stats.agents_in_wrapup), str(stats.agents_paused), str(stats.agents_offline),
            str(stats.calls_answered), str(stats.calls_abandoned),
            percent(stats.service_level_percent),
            seconds(stats.average_speed_of_answer_seconds)]


def format_stats_table(queues: Sequence[Queue], stats: Sequence[QueueStats]) -> str:
    thresholds = sorted({q.service_level_seconds for q in queues})
    within = (f"{thresholds[0]}s" if len(thresholds) == 1
              else "each queue's service_level_seconds")
    return table(STATS_HEADER, [stats_row(s) for s in stats]) + (
        f"\nSERVICE LEVEL: calls answered within {within}, of the calls answered or abandoned."
        "\nAVG WAIT: how long answered calls waited (average speed of answer).")


def _stats_dict(queue: Queue, stats: QueueStats) -> dict[str, object]:
    return {**asdict(stats), "service_level_seconds": queue.service_level_seconds,
            "strategy": queue.strategy}


def stats_json(tenant: str, queues: Sequence[Queue], stats: Sequence[QueueStats]) -> str:
    return json.dumps({"tenant": tenant, "queues": [
        _stats_dict(q, s) for q, s in zip(queues, stats, strict=True)]}, indent=2)


def format_show(queue: Queue, stats: QueueStats, members: Sequence[MemberStatus],
                waiting: Sequence[WaitingCall]) -> str:
    lines = [
        f"queue {queue.name}: strategy {queue.strategy}, ring {queue.ring_timeout_seconds}s, "
        f"max wait {queue.max_wait_seconds}s, wrap-up {queue.wrapup_seconds}s, "
        f"service level {queue.service_level_seconds}s",
        f"calls: {stats.calls_offered} offered, {stats.calls_answered} answered "
        f"({percent(stats.service_level_percent)} within the service level, average wait "
        f"{seconds(stats.average_speed_of_answer_seconds)}, average talk "
        f"{seconds(stats.average_talk_seconds)}), {stats.calls_abandoned} abandoned "
        f"(after {seconds(stats.average_abandon_seconds)} on average), "
        f"{stats.calls_failed_over} failed over, {stats.calls_overflowed} overflowed",
        "",
        f"members ({len(members)}):",
    ]
    if members:
        lines.append(table(("AGENT", "PENALTY", "SKILL", "STATE", "REASON", "CALL", "PHONE"), [
            [m.extension, str(m.penalty), str(m.skill), str(m.state), m.reason or "-",
             m.call or "-", "registered" if m.registered else "not registered"]
            for m in members]))
    lines += ["", f"waiting calls ({len(waiting)}):"]
    if waiting:
        lines.append(table(("POS", "CALL", "WAITED", "PRIORITY", "CALLER", "DID"), [
            [str(w.position), w.call, seconds(w.waited_seconds), str(w.priority),
             w.caller or "-", w.did or "-"] for w in waiting]))
    return "\n".join(lines)


def show_json(tenant: str, queue: Queue, stats: QueueStats, members: Sequence[MemberStatus],
              waiting: Sequence[WaitingCall]) -> str:
    return json.dumps({
        "tenant": tenant, "queue": queue.name, "stats": _stats_dict(queue, stats),
        "members": [asdict(m) for m in members], "waiting": [asdict(w) for w in waiting],
    }, indent=2)
