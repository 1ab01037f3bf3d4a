"""`omnicc` — the command line: up, down, status, render, migrate, demo, report, check."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from omnicc.config import ConfigError, OmniccConfig, load_config


def _program() -> str:
    """How the user can run this same omnicc again (e.g. .venv/bin/omnicc)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "omnicc" and os.sep in argv0:
        return os.path.relpath(argv0)
    return "omnicc"


def _config(args: argparse.Namespace) -> OmniccConfig:
    return load_config(args.config)


def _stack(args: argparse.Namespace):
    from omnicc.stack import Stack

    return Stack(_config(args), Path(args.config), Path(args.var))


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    agents = sum(len(t.agents) for t in config.tenants)
    print(f"{args.config}: valid — node {config.node}, {len(config.tenants)} tenant(s), "
          f"{agents} agent(s)")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    print(f"omnicc up: node {stack.config.node}, var {stack.var}")
    stack.up(progress=lambda line: print(line, flush=True))
    print("omnicc is up; `omnicc status` shows it, `omnicc down` stops it.")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.down(progress=lambda line: print(line, flush=True))
    print("omnicc is down.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from omnicc.reports import format_table

    stack = _stack(args)
    rows = []
    for st in stack.status():
        health = "ok" if st.healthy else ("NOT ANSWERING" if st.pid else "stopped")
        rows.append([st.name, str(st.pid or "-"), st.ports, health])
    print(format_table(["service", "pid", "ports", "health"], rows))
    healthy = all(st.healthy for st in stack.status())
    registrations = _registrations_table(stack)
    if registrations:
        print()
        print(registrations)
    redis_status = next(st for st in stack.status() if st.name == "redis")
    if redis_status.healthy:
        print()
        print(_bans_table(stack))
    return 0 if healthy else 3


def _registrations_table(stack) -> str:
    """Each registration trunk's state, as the running Asterisk reports it; "" when the
    config has none."""
    from omnicc.reports import format_table
    from omnicc.stack import AsteriskService, StackError
    from omnicc.trunk_registration import parse_registrations

    names = [f"trunk.{t.name}.{k.name}" for t in stack.config.tenants for k in t.trunks
             if k.registration is not None and k.dial_host is not None]
    if not names:
        return ""
    asterisk = next(s for s in stack.services if isinstance(s, AsteriskService))
    if asterisk.pid() is None:
        return "trunk registrations: asterisk is not running"
    try:
        states = {r.name: r for r in parse_registrations(
            asterisk.cli("pjsip show registrations"))}
    except StackError as exc:
        return f"trunk registrations: unknown ({exc})"
    rows = [[name, states[name].server if name in states else "-",
             states[name].status if name in states else "not loaded"] for name in names]
    return "trunk registrations:\n" + format_table(["registration", "registrar", "state"], rows)


def _ban_list(stack):
    import redis

    from omnicc.sip_security import BanList

    return BanList(redis.Redis.from_url(stack.redis_url, socket_timeout=5))


def _bans_table(stack) -> str:
    from omnicc.reports import format_table

    bans = _ban_list(stack).list()
    if not bans:
        return "bans: none"
    rows = [[b.ip, b.reason, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.since)),
             f"{b.expires_in} s"] for b in bans]
    return "bans:\n" + format_table(["ip", "reason", "since", "expires in"], rows)


def _visible(path: Path) -> bool:
    """Whether `path` exists, False when this user may not even look (/run/kamailio is
    mode 0770): the RPC call then says it cannot reach Kamailio."""
    try:
        return path.exists()
    except OSError:
        return False


def cmd_unban(args: argparse.Namespace) -> int:
    import ipaddress

    import redis

    from omnicc import kamailio_rpc
    from omnicc.sip_security import BANS_TABLE, EDGE_TABLES

    try:
        ip = str(ipaddress.ip_address(args.ip))
    except ValueError:
        print(f"omnicc unban: not an IP address: {args.ip!r}", file=sys.stderr)
        return 2
    stack = _stack(args)
    try:
        recorded = _ban_list(stack).unban(ip)
    except redis.RedisError as exc:
        # The ban is enforced by Kamailio, not Redis: lift it there all the same.
        print(f"omnicc unban: cannot reach Redis ({exc}): the ban's record stays until it "
              "expires", file=sys.stderr)
        recorded = None
    # The ban is enforced in Kamailio's memory: lift it there too (and with it the
    # address's counters). This node passes the deletion on to its DMQ peers.
    fifo = Path(args.rpc_fifo) if args.rpc_fifo else kamailio_rpc.fifo_path(stack.run_dir)
    if not args.rpc_fifo and not fifo.exists() and _visible(kamailio_rpc.PACKAGED_FIFO):
        fifo = kamailio_rpc.PACKAGED_FIFO  # a Kamailio deployed by its package
    enforced = False
    try:
        try:
            kamailio_rpc.call(fifo, "htable.get", BANS_TABLE, ip)
            enforced = True
        except kamailio_rpc.KamailioRpcError as exc:
            if not kamailio_rpc.is_missing_key(exc):
                raise
        for table in EDGE_TABLES:
            try:
                kamailio_rpc.call(fifo, "htable.delete", table, ip)
            except kamailio_rpc.KamailioRpcError as exc:
                if not kamailio_rpc.is_missing_key(exc):
                    raise
    except kamailio_rpc.KamailioRpcError as exc:
        print(f"omnicc unban: cannot reach the local Kamailio ({exc}): its ban of {ip} "
              "lasts until it expires", file=sys.stderr)
        if recorded:
            print(f"{ip}: ban record removed")
        return 1
    if recorded is None:
        print(f"{ip}: ban lifted on Kamailio" if enforced else f"{ip}: not banned on Kamailio")
        return 1
    if recorded or enforced:
        print(f"{ip}: ban lifted")
        return 0
    print(f"{ip}: not banned")
    return 1


def cmd_render(args: argparse.Namespace) -> int:
    from omnicc.auth_secrets import SecretsError, nonce_secret, resolve_secret_files
    from omnicc.render import KEMI_SCRIPT, SECRETS_CFG_NAME, render_asterisk, render_kamailio

    config = _config(args)
    out = Path(args.out)
    kamailio_dir = Path(args.kamailio_dir)
    try:
        secret: str | None = nonce_secret(resolve_secret_files(config, args.config, args.var))
    except SecretsError as exc:
        if config.kamailio_peers:  # each node would make nonces the others refuse
            print(f"omnicc render: {exc}; the Kamailio nodes need it for a shared nonce "
                  "secret", file=sys.stderr)
            return 1
        print(f"omnicc render: {exc}; kamailio-secrets.cfg not written (one node makes "
              "nonces under a random secret of its own)", file=sys.stderr)
        secret = None
    written = render_kamailio(
        config, out / "kamailio",
        kemi_script=Path(args.kemi_script) if args.kemi_script else KEMI_SCRIPT,
        dispatcher_list=kamailio_dir / "dispatcher.list",
        nonce_secret=secret, secrets_cfg=kamailio_dir / SECRETS_CFG_NAME,
    )
    written += render_asterisk(config, out / "asterisk")
    for path in written:
        print(path)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from omnicc.migrate import apply_migrations

    dsn = args.dsn or os.environ.get("OMNICC_DATABASE_URL") or _stack(args).postgres_dsn()
    applied = apply_migrations(dsn)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import redis

    from omnicc.events import read_events
    from omnicc.reports import format_call_summary, summarize_calls

    stack = _stack(args)
    client = redis.Redis.from_url(args.redis or stack.redis_url, socket_timeout=5)
    for tenant in stack.config.tenants:
        print(f"tenant {tenant.name} ({tenant.domain})")
        print(format_call_summary(summarize_calls(read_events(client, tenant.name))))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from omnicc.demo import run_demo

    stack = _stack(args)
    down = f"{_program()} -c {args.config} down"
    if not all(st.healthy for st in stack.status()):
        print("omnicc demo: the stack is not up; start it with `omnicc up`", file=sys.stderr)
        return 1
    print(f"omnicc demo: {args.calls} call(s) per DID, {args.talk_ms} ms talk each")
    result = run_demo(stack, calls_per_did=args.calls, talk_ms=args.talk_ms,
                      progress=lambda line: print(line, flush=True))
    print()
    print(result.report)
    print()
    ok = result.placed > 0 and result.answered_by_sipp == result.placed \
        and result.answered_by_omnicc == result.placed
    print(f"{result.answered_by_omnicc} of {result.placed} demo calls answered by an agent. "
          f"The stack stays up: `{down}` stops it.")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnicc", description="Contact-center features for Kamailio and Asterisk."
    )
    parser.add_argument("-c", "--config", default=os.environ.get("OMNICC_CONFIG", "omnicc.yaml"),
                        help="the omnicc config file (default: ./omnicc.yaml or $OMNICC_CONFIG)")
    parser.add_argument("--var", default=os.environ.get("OMNICC_VAR", "var"),
                        help="where the local stack keeps data, logs, pids (default: ./var)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("check", help="validate the config file").set_defaults(func=cmd_check)
    sub.add_parser("up", help="start the local stack; returns when all of it answers"
                   ).set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="each service: pid, ports, health; current bans"
                   ).set_defaults(func=cmd_status)
    unban = sub.add_parser("unban", help="lift the ban on an IP address")
    unban.add_argument("ip")
    unban.add_argument("--rpc-fifo", metavar="PATH",
                       help="Kamailio's jsonrpcs FIFO (default: the local stack's, else "
                            "/run/kamailio/kamailio_rpc.fifo)")
    unban.set_defaults(func=cmd_unban)
    render = sub.add_parser("render", help="write kamailio.cfg and the Asterisk configs")
    render.add_argument("--out", required=True, help="directory to write into")
    render.add_argument("--kamailio-dir", default="/etc/kamailio",
                        help="where kamailio.cfg will find dispatcher.list (default /etc/kamailio)")
    render.add_argument("--kemi-script", help="path of omnicc_kemi.py on the Kamailio host")
    render.set_defaults(func=cmd_render)
    migrate = sub.add_parser("migrate", help="apply sql/ migrations to PostgreSQL")
    migrate.add_argument("--dsn", help="PostgreSQL URL (default: $OMNICC_DATABASE_URL or the "
                         "local stack's)")
    migrate.set_defaults(func=cmd_migrate)
    demo = sub.add_parser("demo", help="drive demo calls through the running stack with SIPp")
    demo.add_argument("--calls", type=int, default=2, help="calls per DID (default 2)")
    demo.add_argument("--talk-ms", type=int, default=2000, help="talk time per call")
    demo.set_defaults(func=cmd_demo)
    from omnicc.agent_cli import add_agent_commands
    from omnicc.blacklist_cli import add_blacklist_commands, add_do_not_call_commands
    from omnicc.queue_cli import add_queue_commands
    from omnicc.token_cli import add_token_commands

    add_token_commands(sub)
    add_agent_commands(sub)
    add_queue_commands(sub)
    add_blacklist_commands(sub)
    add_do_not_call_commands(sub)
    report = sub.add_parser("report", help="calls offered and answered, by agent")
    report.add_argument("--redis", help="Redis URL (default: the local stack's)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import redis

    from omnicc.demo import DemoError
    from omnicc.migrate import MigrationError
    from omnicc.sipp import SippError
    from omnicc.stack import StackError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"omnicc: config error:\n{exc}", file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:
        print(f"omnicc: error: Redis is not reachable ({exc}); is the stack up?",
              file=sys.stderr)
        return 1
    except (StackError, MigrationError, SippError, DemoError) as exc:
        print(f"omnicc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
