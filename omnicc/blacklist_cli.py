"""`omnicc blacklist import FILE [--tenant T] [--replace]` and `omnicc blacklist check
NUMBER [--tenant T]`: the tenant's caller blacklist in the shared Redis (omnicc/blacklist.py).

An import is all or nothing: a file with a bad row imports nothing and every bad row is
listed with its line (exit 2). Without --replace the numbers are added to the list.
"""

from __future__ import annotations

import argparse
import sys

import redis

from omnicc.blacklist import (
    BlacklistError,
    BlacklistStore,
    decode_csv,
    normalise_number,
    parse_blacklist_csv,
)
from omnicc.config import Tenant, load_config


def add_blacklist_commands(subparsers: argparse._SubParsersAction) -> None:
    blacklist = subparsers.add_parser(
        "blacklist", help="callers refused on every inbound call: import from CSV, check")
    commands = blacklist.add_subparsers(dest="blacklist_command", required=True,
                                        metavar="SUBCOMMAND")
    load = commands.add_parser(
        "import", help="import a CSV file (number[,reason] a row); nothing is imported when "
                       "a row is bad")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--replace", action="store_true",
                      help="replace the tenant's whole list (default: add to it)")
    load.set_defaults(func=cmd_blacklist_import)
    check = commands.add_parser("check", help="whether a caller number is blacklisted")
    check.add_argument("number", metavar="NUMBER")
    check.set_defaults(func=cmd_blacklist_check)
    for sub in (load, check):
        sub.add_argument("--tenant", help="tenant name (default: the first tenant)")


def _fail(action: str, message: str, code: int) -> int:
    print(f"omnicc blacklist {action}: {message}", file=sys.stderr)
    return code


def _tenant(args: argparse.Namespace) -> tuple[Tenant | None, redis.Redis | None, str]:
    config = load_config(args.config)
    tenant = config.tenant(args.tenant) if args.tenant else config.tenants[0]
    if tenant is None:
        names = ", ".join(t.name for t in config.tenants)
        return None, None, f"no tenant named {args.tenant!r} (tenants: {names})"
    client = redis.Redis(host=config.services.listen, port=config.services.redis.port,
                         socket_timeout=5)
    return tenant, client, ""


def cmd_blacklist_import(args: argparse.Namespace) -> int:
    # The file first: a bad file is refused before anything is asked of Redis.
    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return _fail("import", f"cannot read {args.file}: {exc.strerror or exc}", 2)
    try:
        imported = parse_blacklist_csv(decode_csv(data))
    except BlacklistError as exc:
        return _fail("import", f"{args.file}: {exc}", 2)
    tenant, client, problem = _tenant(args)
    if tenant is None or client is None:
        return _fail("import", problem, 2)
    size = BlacklistStore(client).import_entries(tenant.name, imported, replace=args.replace)
    repeats = f", {imported.repeated} repeated row(s) skipped" if imported.repeated else ""
    verb = "replaced the list with" if args.replace else "added"
    print(f"tenant {tenant.name}: {verb} {len(imported.entries)} number(s){repeats}; "
          f"{size} on the blacklist now")
    return 0


def cmd_blacklist_check(args: argparse.Namespace) -> int:
    try:
        number = normalise_number(args.number)
    except ValueError as exc:
        return _fail("check", str(exc), 2)
    tenant, client, problem = _tenant(args)
    if tenant is None or client is None:
        return _fail("check", problem, 2)
    reason = BlacklistStore(client).reason(tenant.name, number)
    if reason is None:
        print(f"{number}: not blacklisted in tenant {tenant.name}")
        return 1
    print(f"{number}: blacklisted in tenant {tenant.name}" + (f" ({reason})" if reason else ""))
    return 0
