"""`omnicc agent ...`: administer agents on the shared Redis (every node sees it at once)."""

from __future__ import annotations

import argparse
import sys
import time

import redis

from omnicc.acd import AgentStatus
from omnicc.agent_state import AgentState
from omnicc.config import load_config
from omnicc.revocation import (
    NOT_CONFIRMED,
    disable_agent,
    enable_agent,
    is_agent_disabled,
)


def add_agent_commands(subparsers: argparse._SubParsersAction) -> None:
    agent = subparsers.add_parser("agent", help="agents: log in and out, pause, disable")
    commands = agent.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND")
    for name, helptext in (
        ("login", "READY for calls (only with a registered phone)"),
        ("logout", "OFFLINE (refused on a call unless --force)"),
        ("pause", "PAUSED with a reason (--reason)"),
        ("unpause", "READY again"),
        ("disable", "refuse every credential of an agent from now on, on every node"),
        ("enable", "let a disabled agent in again"),
        ("show", "the agent's state now, its call, phone and queues"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("extension", metavar="EXT")
        sub.add_argument("--tenant", help="tenant name (default: the first tenant)")
        if name == "pause":
            sub.add_argument("--reason", default="break", help="why (default: break)")
        if name == "logout":
            sub.add_argument("--force", action="store_true",
                             help="a supervisor's logout of an agent on a call: the ACD closes "
                                  "the call's record (Asterisk's call itself goes on)")
        sub.set_defaults(func=cmd_agent, action=name)


def cmd_agent(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tenant = config.tenant(args.tenant) if args.tenant else config.tenants[0]
    if tenant is None:
        print(f"omnicc agent: no tenant named {args.tenant!r}", file=sys.stderr)
        return 2
    if tenant.agent(args.extension) is None:
        print(f"omnicc agent: {args.extension} is not an agent of tenant {tenant.name}",
              file=sys.stderr)
        return 2
    client = redis.Redis(host=config.services.listen, port=config.services.redis.port,
                         socket_timeout=5)
    where = f"agent {args.extension} of tenant {tenant.name}"
    if args.action in ("login", "logout", "pause", "unpause"):
        return _state_change(client, config.node, tenant.name, args, where)
    if args.action == "disable":
        told = disable_agent(client, tenant.name, args.extension, node=config.node)
        print(f"{where} disabled")
        if not told:
            print(NOT_CONFIRMED, file=sys.stderr)
    elif args.action == "enable":
        enable_agent(client, tenant.name, args.extension)
        print(f"{where} enabled")
    else:
        from omnicc.acd import AcdSync

        enabled = "disabled" if is_agent_disabled(client, tenant.name, args.extension) \
            else "enabled"
        acd = AcdSync(client, config.node)
        # Settle what is due first (a wrap-up that is over, a lease that ran out), so the
        # state shown is the state now, not the one of the last ACD operation.
        acd.tick(tenant.name)
        status = acd.agent_status(tenant.name, args.extension)
        print(f"{where}: {enabled}, {describe_agent(status)}")
    return 0


def describe_agent(status: AgentStatus) -> str:
    """The agent's state in one line: state (reason), the call, the wrap-up's end, the
    phone and the queues."""
    parts = [str(status.state) + (f" ({status.reason})" if status.reason else "")]
    if status.call:
        parts.append(f"call {status.call}")
    if status.wrapup_until_ms is not None and status.state is AgentState.WRAPUP:
        parts.append(f"wrap-up until {_clock(status.wrapup_until_ms)}")
    if status.state is not AgentState.OFFLINE and status.since_ms is not None:
        parts.append(f"since {_clock(status.since_ms)}")
    parts.append("phone registered" if status.registered else "phone not registered")
    parts.append("queues " + (", ".join(status.queues) if status.queues else "none"))
    return "; ".join(parts)


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def _state_change(client: redis.Redis, node: str, tenant: str, args: argparse.Namespace,
                  where: str) -> int:
    from omnicc.acd import AcdSync

    acd = AcdSync(client, node)
    if args.action == "login":
        result = acd.login(tenant, args.extension)
    elif args.action == "logout":
        result = acd.logout(tenant, args.extension, force=args.force)
    elif args.action == "pause":
        result = acd.pause(tenant, args.extension, args.reason)
    else:
        result = acd.unpause(tenant, args.extension)
    if not result.ok:
        print(f"omnicc agent {args.action}: {where} refused: {result.code} "
              f"(state {result.state})", file=sys.stderr)
        return 1
    print(f"{where}: {result.state}")
    return 0
