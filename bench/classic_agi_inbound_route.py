"""The inbound_route decision as a classic (process-per-call) AGI script.

This is the baseline bench/agi_throughput.py measures omnicc's FastAGI server against:
what a site without omnicc would write for ``AGI(inbound_route.py,...)``. Asterisk forks
and execs it once per call, talks AGI over its stdin/stdout, and the script exits when it
is done. It does the same work as agi/handlers/inbound_route.py, the way such a script
does it: it loads its config file on every run (it has no process to keep it in),
connects to Redis synchronously, appends one event, sets the channel variables and
reads Asterisk's reply to each command.

    python bench/classic_agi_inbound_route.py CONFIG REDIS_URL   (AGI on stdin/stdout)

The benchmark's load client sends the same environment to both servers, so the DID,
tenant and trunk come from the query string of ``agi_network_script`` here too.
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO
from urllib.parse import parse_qsl

import redis

from agi.protocol import format_command
from omnicc.config import load_config
from omnicc.events import STREAM_MAXLEN, event_fields
from omnicc.keys import events_stream
from omnicc.routing import RoutingError, decide_inbound

# Same Q.850 cause the FastAGI handler uses for a DID without a route.
Q850_UNALLOCATED_NUMBER = 1


class AGIChannel:
    """Asterisk's side of the pipe, as a classic AGI script sees it: stdin and stdout."""

    def __init__(self, from_asterisk: BinaryIO, to_asterisk: BinaryIO) -> None:
        self._in = from_asterisk
        self._out = to_asterisk

    def read_environment(self) -> dict[str, str]:
        """The ``agi_key: value`` lines up to the blank line."""
        env: dict[str, str] = {}
        while True:
            raw = self._in.readline()
            if not raw:
                raise EOFError(f"stdin closed inside the AGI environment ({len(env)} lines)")
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                return env
            key, _, value = line.partition(": ")
            env[key] = value

    def command(self, name: str, *args: str) -> str:
        """Send one command and return Asterisk's reply line; anything but 200 is an error."""
        # format_command gives byte-for-byte the line the FastAGI handler sends.
        self._out.write(format_command(name, *args))
        # Asterisk answers only after it has the whole line: flush before reading.
        self._out.flush()
        raw = self._in.readline()
        if not raw:
            raise EOFError(f"stdin closed while waiting for the reply to {name}")
        reply = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not reply.startswith("200 "):
            raise RuntimeError(f"{name} rejected: {reply!r}")
        return reply

    def set_variable(self, name: str, value: str) -> None:
        self.command("SET VARIABLE", name, value)


def request_params(env: dict[str, str]) -> dict[str, str]:
    """The query parameters of the script URL (did, tenant, trunk)."""
    script = env.get("agi_network_script", "")
    _, _, query = script.partition("?")
    if not query:
        _, _, query = env.get("agi_request", "").partition("?")
    return dict(parse_qsl(query, keep_blank_values=True))


def route_call(channel: AGIChannel, config_path: str, redis_url: str) -> None:
    env = channel.read_environment()
    params = request_params(env)
    tenant = params.get("tenant", "")
    did = params.get("did", "")
    # The same event fields the FastAGI handler writes, so both sides append equal entries.
    common = {
        "uniqueid": env.get("agi_uniqueid", ""), "did": did, "trunk": params.get("trunk", ""),
        "caller": env.get("agi_callerid", ""), "channel": env.get("agi_channel", ""),
    }
    # A classic script has no long-lived process to cache the config in: load it per call.
    config = load_config(config_path)
    client = redis.Redis.from_url(redis_url)
    try:
        try:
            decision = decide_inbound(config, tenant, did)
        except RoutingError as exc:
            if config.tenant(tenant) is not None:
                append_event(client, config.node, tenant, "call_unrouted",
                             reason=str(exc), **common)
            channel.set_variable("OMNICC_ERROR", " ".join(str(exc).split()))
            channel.set_variable("OMNICC_CAUSE", str(Q850_UNALLOCATED_NUMBER))
            channel.set_variable("OMNICC_STATUS", "ERROR")
            return
        append_event(client, config.node, decision.tenant, "call_routed",
                     destination=decision.destination, agent=decision.agent, **common)
    finally:
        client.close()
    channel.set_variable("OMNICC_DEST", decision.destination)
    if decision.agent:
        channel.set_variable("OMNICC_AGENT", decision.agent)
        channel.set_variable("OMNICC_DIAL", decision.dial)
    channel.set_variable("OMNICC_STATUS", "OK")


def append_event(client: redis.Redis, node: str, tenant: str, event: str, **fields: str) -> None:
    entry = event_fields(event, node, fields, time.time())
    client.xadd(events_stream(tenant), entry, maxlen=STREAM_MAXLEN, approximate=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} CONFIG REDIS_URL  (AGI on stdin/stdout)", file=sys.stderr)
        return 2
    channel = AGIChannel(sys.stdin.buffer, sys.stdout.buffer)
    try:
        route_call(channel, argv[1], argv[2])
    except Exception as exc:
        # A classic script's only way to reach the dialplan's failover path: best effort.
        print(f"classic inbound_route failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        try:
            channel.set_variable("OMNICC_STATUS", "ERROR")
        except (OSError, EOFError, RuntimeError, ValueError):
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
