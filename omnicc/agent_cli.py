"""`omnicc agent ...`: administer agents on the shared Redis (every node sees it at once)."""

from __future__ import annotations

import argparse
import sys

import redis

from omnicc.config import load_config
from omnicc.revocation import disable_agent, enable_agent, is_agent_disabled


def add_agent_commands(subparsers: argparse._SubParsersAction) -> None:
    agent = subparsers.add_parser("agent", help="administer agents")
    commands = agent.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND")
    for name, helptext in (
        ("disable", "refuse every credential of an agent from now on, on every node"),
        ("enable", "let a disabled agent in again"),
        ("show", "whether an agent is enabled"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("extension", metavar="EXT")
        sub.add_argument("--tenant", help="tenant name (default: the first tenant)")
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
    if args.action == "disable":
        disable_agent(client, tenant.name, args.extension, node=config.node)
        print(f"{where} disabled")
    elif args.action == "enable":
        enable_agent(client, tenant.name, args.extension)
        print(f"{where} enabled")
    else:
        state = "disabled" if is_agent_disabled(client, tenant.name, args.extension) else "enabled"
        print(f"{where}: {state}")
    return 0
