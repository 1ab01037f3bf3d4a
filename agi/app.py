"""The omnicc FastAGI server process: config + Redis + the explicit route table.

    python -m agi.app --config omnicc.yaml --redis redis://127.0.0.1:16379/0 [--acd-tick 1]

Besides the sessions it runs the ACD's clock (agi/acd_tick.py): every --acd-tick seconds
the tick script for each tenant, so wrap-ups and leases end on time when nothing else runs;
and it renews the leases of the connected calls its node holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agi.acd_tick import (
    DEFAULT_TICK_SECONDS,
    AcdTicker,
    ConnectedCallRenewer,
    renewal_interval,
)
from agi.handlers.agent_call import AgentCall
from agi.handlers.agent_feature import AgentFeature
from agi.handlers.call_end import CallEnd
from agi.handlers.customer_entry import CustomerEntry
from agi.handlers.forward_call import ForwardCall
from agi.handlers.health import health
from agi.handlers.inbound_route import BlacklistCheck, InboundRoute
from agi.handlers.ivr import IvrEntry
from agi.handlers.outbound_call import (
    DoNotCallCheck,
    HeldTrunkChannels,
    OutboundCalls,
    OutboundEnd,
    OutboundResult,
)
from agi.handlers.queue_call import (
    QueueAnswer,
    QueueCall,
    QueueEnd,
    QueueRecord,
    QueueResult,
    QueueStore,
)
from agi.handlers.queue_setup import sync_queues
from agi.handlers.registered_call import RegisteredCall
from agi.handlers.transfer import QueueCallTransferred, Transfer, TransferAttended
from agi.server import FastAGIServer, Handler
from omnicc.acd import AcdStore
from omnicc.blacklist import check_caller_async
from omnicc.channel_limit import AsyncChannelLimits
from omnicc.config import ConfigError, OmniccConfig, load_config
from omnicc.do_not_call import listed_numbers
from omnicc.events import EventLog

REDIS_POOL_SIZE = 256
REDIS_POOL_WAIT_SECONDS = 5.0
QUEUE_SYNC_RETRY_SECONDS = 2.0


def build_routes(config: OmniccConfig, events: EventLog,
                 acd: QueueStore | None = None,
                 blacklist: BlacklistCheck | None = None, *,
                 channels: HeldTrunkChannels | None = None,
                 do_not_call: DoNotCallCheck | None = None) -> dict[str, Handler]:
    """Every AGI script this server answers, by the name the dialplan uses; the queue
    scripts when it has an ACD store; inbound calls checked against `blacklist`, outbound
    ones against `do_not_call`."""
    outbound = OutboundCalls(config, events, channels, do_not_call)
    routes: dict[str, Handler] = {
        "health": health,
        "inbound_route": InboundRoute(config, events, blacklist),
        "ivr_entry": IvrEntry(config, events),
        "call_end": CallEnd(config, events),
        "agent_call": AgentCall(config, events, outbound),
        "customer_entry": CustomerEntry(config, events),
        "transfer": Transfer(config, events, outbound, acd),
        "transfer_attended": TransferAttended(config, events, acd),
        "registered_call": RegisteredCall(config, events),
    }
    if channels is not None:  # outbound calls, their trunk channels counted
        routes.update({"forward_call": ForwardCall(config, outbound),
                       "outbound_result": OutboundResult(outbound),
                       "outbound_end": OutboundEnd(outbound)})
    if acd is not None:
        routes.update({
            "queue_call": QueueCall(config, acd, events),
            "queue_answer": QueueAnswer(config, acd, events),
            "queue_record": QueueRecord(config, acd, events),
            "queue_result": QueueResult(config, acd),
            "queue_end": QueueEnd(config, acd),
            "queue_transferred": QueueCallTransferred(config, acd),
            "agent_feature": AgentFeature(config, events, acd),
        })
    return routes


async def push_queues(acd: AcdStore, client: aioredis.Redis, config: OmniccConfig,
                      log: logging.Logger) -> None:
    """The config's queues into the ACD, retried until Redis answers: meanwhile the server
    serves, and a queue call that cannot be served goes to the dialplan's failover."""
    while True:
        try:
            synced = await sync_queues(acd, client, config)
        except RedisError as exc:
            log.error("ACD: cannot push the queues into Redis (%s); retrying", exc)
            await asyncio.sleep(QUEUE_SYNC_RETRY_SECONDS)
            continue
        log.info("ACD: %d queues configured, %d members added, %d removed", synced.queues,
                 synced.members_added, synced.members_removed)
        return


async def serve(config: OmniccConfig, redis_url: str, host: str, port: int,
                tick_seconds: float = DEFAULT_TICK_SECONDS) -> None:
    # A blocking pool: past its size, a handler waits for a connection instead of failing
    # the call (redis-py's default pool raises "Too many connections" at 100).
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT_SECONDS)
    client = aioredis.Redis.from_pool(pool)
    events = EventLog(client, config.node)
    acd = AcdStore(client, config.node)
    channels = HeldTrunkChannels(AsyncChannelLimits(client))
    log = logging.getLogger("omnicc.agi")
    syncing = asyncio.create_task(push_queues(acd, client, config, log))
    tenants = [t.name for t in config.tenants]
    # This node vouches for the connected calls it holds, whether or not it ticks.
    renewer = ConnectedCallRenewer(acd, tenants, renewal_interval(
        [q.call_lease_seconds for t in config.tenants for q in t.queues]))
    periodic = [asyncio.create_task(renewer.run()), asyncio.create_task(channels.run())]
    if tick_seconds > 0:
        periodic.append(asyncio.create_task(AcdTicker(acd, tenants, tick_seconds).run()))
    async def blacklisted(tenant: str, caller: str) -> str | None:
        return await check_caller_async(client, tenant, caller)

    async def do_not_call(tenant: str, numbers: tuple[str, ...]) -> frozenset[str]:
        return await listed_numbers(client, tenant, numbers)

    routes = build_routes(config, events, acd, blacklisted, channels=channels,
                          do_not_call=do_not_call)
    server = FastAGIServer(routes, host=host, port=port)
    await server.start()
    log.info("FastAGI server listening on %s:%d", host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    await server.close()
    serving.cancel()
    syncing.cancel()
    for task in periodic:
        task.cancel()
    await acd.close()
    await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnicc-agi", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True, help="Redis URL")
    parser.add_argument("--host", help="listen address (default: services.listen)")
    parser.add_argument("--port", type=int, help="listen port (default: services.agi.port)")
    parser.add_argument("--acd-tick", type=float, default=DEFAULT_TICK_SECONDS,
                        metavar="SECONDS",
                        help="run the ACD's tick for every tenant this often, so wrap-ups "
                             "and leases end on time (default 1; 0: never)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.acd_tick) and args.acd_tick >= 0):
        parser.error(f"--acd-tick must be 0 or more seconds, got {args.acd_tick}")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"omnicc-agi: config error:\n{exc}", file=sys.stderr)
        return 2
    host = args.host or config.services.listen
    port = args.port or config.services.agi.port
    asyncio.run(serve(config, args.redis, host, port, args.acd_tick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
