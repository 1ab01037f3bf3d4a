"""The omnicc FastAGI server process: config + Redis + the explicit route table.

    python -m agi.app --config omnicc.yaml --redis redis://127.0.0.1:16379/0
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import redis.asyncio as aioredis

from agi.handlers.agent_call import AgentCall
from agi.handlers.call_end import CallEnd
from agi.handlers.health import health
from agi.handlers.inbound_route import InboundRoute
from agi.server import FastAGIServer, Handler
from omnicc.config import ConfigError, OmniccConfig, load_config
from omnicc.events import EventLog

REDIS_POOL_SIZE = 256
REDIS_POOL_WAIT_SECONDS = 5.0


def build_routes(config: OmniccConfig, events: EventLog) -> dict[str, Handler]:
    """Every AGI script this server answers, by the name the dialplan uses."""
    return {
        "health": health,
        "inbound_route": InboundRoute(config, events),
        "call_end": CallEnd(config, events),
        "agent_call": AgentCall(config, events),
    }


async def serve(config: OmniccConfig, redis_url: str, host: str, port: int) -> None:
    # A blocking pool: past its size, a handler waits for a connection instead of failing
    # the call (redis-py's default pool raises "Too many connections" at 100).
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT_SECONDS)
    client = aioredis.Redis.from_pool(pool)
    events = EventLog(client, config.node)
    server = FastAGIServer(build_routes(config, events), host=host, port=port)
    await server.start()
    logging.getLogger("omnicc.agi").info("FastAGI server listening on %s:%d", host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    await server.close()
    serving.cancel()
    await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnicc-agi", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True, help="Redis URL")
    parser.add_argument("--host", help="listen address (default: services.listen)")
    parser.add_argument("--port", type=int, help="listen port (default: services.agi.port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"omnicc-agi: config error:\n{exc}", file=sys.stderr)
        return 2
    host = args.host or config.services.listen
    port = args.port or config.services.agi.port
    asyncio.run(serve(config, args.redis, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
