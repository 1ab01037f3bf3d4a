"""The number-list commands: `omnicc blacklist ...` (callers refused on every inbound call,
omnicc/blacklist.py) and `omnicc dnc ...` (numbers an agent's outbound call is never
dialled to, omnicc/do_not_call.py). Both lists take the same verbs, in the shared Redis:

    import FILE [--replace]   a CSV file (number[,reason] a row); all or nothing: a file
                              with a bad row imports nothing and every bad row is listed
                              with its line (exit 2). Without --replace the numbers are
                              added to the list.
    check NUMBER              exit 0 listed (with its reason), 1 not listed
    add NUMBER [--reason R]   one number
    remove NUMBER             exit 0 removed, 1 it was not listed
    count                     how many numbers the list holds

Each takes --tenant T (default: the first tenant of the config). A bad number or file and
an unknown tenant exit 2; Redis not answering exits 3, with what was asked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from omnicc import blacklist, do_not_call
from omnicc.config import Tenant, load_config
from omnicc.number_list import NumberImport, NumberListError, NumberListStore, normalise_number


@dataclass(frozen=True)
class NumberListKind:
    command: str                      # the CLI word: blacklist, dnc
    title: str                        # as messages name it: "the blacklist"
    listed: str                       # "blacklisted", "on the do-not-call list"
    help: str
    store: Callable[[Any], NumberListStore]
    decode: Callable[[bytes], str]
    parse: Callable[[str], NumberImport]
    error: type[NumberListError]


BLACKLIST = NumberListKind(
    "blacklist", "the blacklist", "blacklisted",
    "callers refused on every inbound call: import from CSV, check, add, remove, count",
    blacklist.BlacklistStore, blacklist.decode_csv, blacklist.parse_blacklist_csv,
    blacklist.BlacklistError)
DO_NOT_CALL = NumberListKind(
    "dnc", "the do-not-call list", "on the do-not-call list",
    "numbers agents' outbound calls are never dialled to (emergency numbers excepted): "
    "import from CSV, check, add, remove, count",
    do_not_call.DoNotCallStore, do_not_call.decode_csv, do_not_call.parse_do_not_call_csv,
    do_not_call.DoNotCallError)


def add_number_list_commands(subparsers: argparse._SubParsersAction,
                             kind: NumberListKind) -> None:
    top = subparsers.add_parser(kind.command, help=kind.help, description=kind.help)
    commands = top.add_subparsers(dest=f"{kind.command}_command", required=True,
                                  metavar="SUBCOMMAND")
    load = commands.add_parser(
        "import", help="import a CSV file (number[,reason] a row); nothing is imported when "
                       "a row is bad")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--replace", action="store_true",
                      help="replace the tenant's whole list (default: add to it)")
    check = commands.add_parser("check", help=f"whether a number is {kind.listed} "
                                              "(exit 0 listed, 1 not)")
    check.add_argument("number", metavar="NUMBER")
    add = commands.add_parser("add", help="list one number")
    add.add_argument("number", metavar="NUMBER")
    add.add_argument("--reason", default="", help="one line, at most 200 characters")
    remove = commands.add_parser("remove", help="take one number off the list "
                                                "(exit 1 when it was not on it)")
    remove.add_argument("number", metavar="NUMBER")
    count = commands.add_parser("count", help="how many numbers the list holds")
    for sub, func in ((load, _import), (check, _check), (add, _add), (remove, _remove),
                      (count, _count)):
        sub.add_argument("--tenant", help="tenant name (default: the first tenant)")
        sub.set_defaults(func=_command(kind, sub.prog.split()[-1], func))


def add_blacklist_commands(subparsers: argparse._SubParsersAction) -> None:
    add_number_list_commands(subparsers, BLACKLIST)


def add_do_not_call_commands(subparsers: argparse._SubParsersAction) -> None:
    add_number_list_commands(subparsers, DO_NOT_CALL)


class _Failed(Exception):
    def __init__(self, message: str, code: int):
        self.code = code
        super().__init__(message)


Action = Callable[[NumberListKind, argparse.Namespace, "_Target"], int]


@dataclass
class _Target:
    """The tenant and its list's store, opened only once the input was found good."""

    args: argparse.Namespace
    kind: NumberListKind
    _tenant: Tenant | None = None
    _store: NumberListStore | None = None
    where: str = ""

    def open(self) -> tuple[Tenant, NumberListStore]:
        if self._tenant is None or self._store is None:
            config = load_config(self.args.config)
            tenant = (config.tenant(self.args.tenant) if self.args.tenant
                      else config.tenants[0])
            if tenant is None:
                names = ", ".join(t.name for t in config.tenants)
                raise _Failed(f"no tenant named {self.args.tenant!r} (tenants: {names})", 2)
            host, port = config.services.listen, config.services.redis.port
            self.where = f"{host}:{port}"
            self._tenant = tenant
            self._store = self.kind.store(redis.Redis(host=host, port=port, socket_timeout=5))
        return self._tenant, self._store


def _command(kind: NumberListKind, verb: str,
             action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        target = _Target(args, kind)
        try:
            return action(kind, args, target)
        except _Failed as exc:
            message, code = str(exc), exc.code
        except redis.RedisError as exc:
            message, code = f"cannot reach Redis at {target.where}: {exc}", 3
        print(f"omnicc {kind.command} {verb}: {message}", file=sys.stderr)
        return code
    return run


def _number(args: argparse.Namespace) -> str:
    try:
        return normalise_number(args.number)
    except ValueError as exc:
        raise _Failed(str(exc), 2) from None


def _import(kind: NumberListKind, args: argparse.Namespace, target: _Target) -> int:
    # The file first: a bad file is refused before anything is asked of Redis.
    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise _Failed(f"cannot read {args.file}: {exc.strerror or exc}", 2) from None
    try:
        imported = kind.parse(kind.decode(data))
    except NumberListError as exc:
        raise _Failed(f"{args.file}: {exc}", 2) from None
    tenant, store = target.open()
    size = store.import_entries(tenant.name, imported, replace=args.replace)
    repeats = f", {imported.repeated} repeated row(s) skipped" if imported.repeated else ""
    verb = "replaced the list with" if args.replace else "added"
    print(f"tenant {tenant.name}: {verb} {len(imported.entries)} number(s){repeats}; "
          f"{size} on {kind.title} now")
    return 0


def _check(kind: NumberListKind, args: argparse.Namespace, target: _Target) -> int:
    number = _number(args)
    tenant, store = target.open()
    reason = store.reason(tenant.name, number)
    if reason is None:
        print(f"{number}: not {kind.listed} in tenant {tenant.name}")
        return 1
    print(f"{number}: {kind.listed} in tenant {tenant.name}" + (f" ({reason})" if reason else ""))
    return 0


def _add(kind: NumberListKind, args: argparse.Namespace, target: _Target) -> int:
    number = _number(args)
    tenant, store = target.open()
    try:
        new = store.add(tenant.name, number, args.reason)
    except ValueError as exc:
        raise _Failed(str(exc), 2) from None
    state = "added to" if new else "already on (reason updated)"
    print(f"{number}: {state} {kind.title} of tenant {tenant.name}; "
          f"{store.size(tenant.name)} on it now")
    return 0


def _remove(kind: NumberListKind, args: argparse.Namespace, target: _Target) -> int:
    number = _number(args)
    tenant, store = target.open()
    if not store.remove(tenant.name, number):
        print(f"{number}: not {kind.listed} in tenant {tenant.name}; nothing removed")
        return 1
    print(f"{number}: removed from {kind.title} of tenant {tenant.name}; "
          f"{store.size(tenant.name)} on it now")
    return 0


def _count(kind: NumberListKind, args: argparse.Namespace, target: _Target) -> int:
    tenant, store = target.open()
    print(f"tenant {tenant.name}: {store.size(tenant.name)} on {kind.title}")
    return 0
