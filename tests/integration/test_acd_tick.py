"""The ACD's clock (agi/acd_tick.py) against a real redis-server: with nothing but ticks
running, wrap-ups end and their agents take the waiting calls, reservations and call
leases run out — each exactly once although several tickers (FastAGI servers) tick the
same tenant at the same time. Then the real FastAGI server process (two of them) does it.

Real time (Redis TIME), so the waits are real: wrap-ups and leases of a few hundred ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agi.acd_tick import AcdTicker
from omnicc import keys
from omnicc.acd import AcdStore, QueueSettings
from omnicc.agent_state import CallState

from .acd_checks import EventReplay, read_all_events, redis_problems
from .acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)
from .conftest import SERVICES_TEMPLATE, make_stack_dir, write_config

pytestmark = pytest.mark.integration

T = "tick"
REPO = Path(__file__).resolve().parents[2]


def test_concurrent_tickers_settle_each_due_change_exactly_once(
        acd_redis: RedisServer) -> None:  # noqa: F811
    acd_redis.client().flushdb()
    agents = [f"30{i:02d}" for i in range(20)]

    async def scenario() -> None:
        client = aioredis.Redis.from_url(acd_redis.url, decode_responses=True)
        setup = AcdStore(client, "setup")
        tickers = [AcdStore(client, f"ticker{i}") for i in range(3)]
        try:
            await setup.configure_queue(T, "q", QueueSettings(
                wrapup_ms=300, reservation_lease_ms=400, call_lease_ms=60_000))
            # Nobody serves `orphan`: its calls' leases (never renewed) run out.
            await setup.configure_queue(T, "orphan", QueueSettings(call_lease_ms=300))
            for ext in agents:
                await setup.register(T, ext, f"sip:{ext}@127.0.0.1", 600)
                await setup.add_member(T, "q", ext)
                await setup.login(T, ext)
            for i in range(len(agents)):
                [offer] = (await setup.enqueue(T, f"first{i}", "q")).offers
                assert (await setup.answer(T, f"first{i}", offer.agent)).ok
                assert (await setup.hangup(T, f"first{i}")).ok  # WRAPUP for 300 ms
            for i in range(len(agents)):
                assert (await setup.enqueue(T, f"next{i}", "q")).state == "WAITING"
                assert (await setup.enqueue(T, f"orphan{i}", "orphan")).state == "WAITING"
            # From here on only the tickers run: three "servers" ticking every 20 ms.
            running = [asyncio.create_task(AcdTicker(store, [T], 0.02).run())
                       for store in tickers]
            await asyncio.sleep(2.0)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for i in range(len(agents)):
                status = await setup.call_status(T, f"orphan{i}")
                assert status is not None and status.state is CallState.FAILED_OVER
        finally:
            for store in (setup, *tickers):
                await store.close()
            await client.aclose()

    asyncio.run(scenario())
    sync = acd_redis.client()
    events = read_all_events(sync, T)
    EventReplay().feed(events)  # no agent ever reserved twice, nothing released twice
    assert redis_problems(sync, T) == []
    by_event = Counter(e["event"] for e in events)
    wrapups_done = Counter(e["agent"] for e in events if e["event"] == "agent_wrapup_done")
    assert wrapups_done == Counter({ext: 1 for ext in agents})
    failed_over = Counter(e["call"] for e in events if e["event"] == "call_failed_over")
    assert failed_over == Counter({f"orphan{i}": 1 for i in range(len(agents))})
    # Each reservation of a waiting call either ran out (once) or still holds.
    expired = [e for e in events if e.get("reason") == "reservation_expired"]
    next_reserved = [e for e in events
                     if e["event"] == "call_reserved" and e["call"].startswith("next")]
    assert {sync.hget(keys.acd_call(T, f"next{i}"), "state") for i in range(len(agents))} \
        == {"RESERVED"}
    assert expired and len(next_reserved) == len(expired) + len(agents)
    assert by_event["call_reserved"] == len(agents) + len(next_reserved)
    # Every settled change was made by a ticker, and more than one of them took part.
    nodes = Counter(e["node"] for e in events if e["event"] in (
        "agent_wrapup_done", "call_failed_over") or e.get("reason") == "reservation_expired")
    assert set(nodes) <= {"ticker0", "ticker1", "ticker2"} and len(nodes) > 1


# ---------------------------------------------------------------------------- the server

SERVER_TEMPLATE = SERVICES_TEMPLATE + """\
tenants:
  - name: tick
    domain: {domain}
    agents:
      - {{extension: "1001", password: "it-pass-1001"}}
      - {{extension: "1002", password: "it-pass-1002"}}
    queues:
      - name: sales
        wrapup_seconds: 1
        call_lease_seconds: 3
        members: [{{agent: "1001"}}, {{agent: "1002"}}]
"""


@contextlib.contextmanager
def fastagi_server(directory: Path, redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (directory / "agi.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "agi.app", "--config", str(directory / "omnicc.yaml"),
         "--redis", redis_url, "--acd-tick", "0.2"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_fastagi_servers_run_the_acd_clock_and_vouch_for_their_connected_calls(
        acd_redis: RedisServer) -> None:  # noqa: F811
    """Two servers: with nothing else running, a wrap-up ends and its agent takes the
    waiting call. A call connected through server A outlives its lease while A renews it;
    after `kill -9` of A it ends when the lease runs out, by B's tick."""
    sync = acd_redis.client()
    sync.flushdb()
    directories = [make_stack_dir(f"omnicc-acd-tick-{n}-") for n in ("a", "b")]
    try:
        for directory, name in zip(directories, ("tick-a", "tick-b"), strict=True):
            write_config(directory, name, SERVER_TEMPLATE, redis=acd_redis.port)
        with fastagi_server(directories[0], acd_redis.url) as first, \
                fastagi_server(directories[1], acd_redis.url) as second:
            wait_for(lambda: sync.hexists(keys.queue_members(T, "sales"), "1002"), 30,
                     "the servers did not push the queue")

            async def call_then_wait() -> None:
                client = aioredis.Redis.from_url(acd_redis.url, decode_responses=True)
                acd = AcdStore(client, "it-test")
                await acd.register(T, "1001", "sip:1001@127.0.0.1", 600)
                assert (await acd.login(T, "1001")).ok
                await acd.enqueue(T, "c1", "sales")
                assert (await acd.answer(T, "c1", "1001")).ok
                assert (await acd.hangup(T, "c1")).ok  # WRAPUP for 1 s
                assert (await acd.enqueue(T, "c2", "sales")).state == "WAITING"
                await acd.close()
                await client.aclose()

            asyncio.run(call_then_wait())
            # No further ACD operation from here: only the servers' ticks.
            wait_for(lambda: sync.hget(keys.acd_call(T, "c2"), "state") == "RESERVED", 15,
                     "the wrap-up never ended by itself")

            async def connect_through_server_a() -> None:
                # As server A's queue_call would: the call is held by node it-tick-a.
                client = aioredis.Redis.from_url(acd_redis.url, decode_responses=True)
                acd = AcdStore(client, "it-tick-a")
                await acd.register(T, "1002", "sip:1002@127.0.0.1", 600)
                assert (await acd.login(T, "1002")).ok
                [offer] = (await acd.enqueue(T, "c3", "sales")).offers
                assert (await acd.answer(T, "c3", offer.agent)).ok
                await acd.close()
                await client.aclose()

            asyncio.run(connect_through_server_a())
            answered_lease = int(sync.hget(keys.acd_call(T, "c3"), "lease_until"))
            # Server A renews c3's 3 s lease every second: it outlives its first lease.
            wait_for(lambda: int(sync.hget(keys.acd_call(T, "c3"), "lease_until"))
                     > answered_lease + 3_000, 15, "server A did not renew its call")
            assert sync.hget(keys.acd_call(T, "c3"), "state") == "CONNECTED"
            first.kill()  # kill -9: nobody vouches for c3 any more
            first.wait()
            wait_for(lambda: sync.hget(keys.acd_call(T, "c3"), "state") == "ENDED", 15,
                     "the call of the dead node never ended")
            assert second.poll() is None
        events = read_all_events(sync, T)
        [c3_ended] = [e for e in events if e["event"] == "call_ended" and e["call"] == "c3"]
        assert (c3_ended["reason"], c3_ended["node"], c3_ended["agent_state"]) == (
            "lease_expired", "it-tick-b", "WRAPUP")
        done = next(e for e in events
                    if e["event"] == "agent_wrapup_done" and e["agent"] == "1001")
        assert done["node"] in ("it-tick-a", "it-tick-b")
        [reserved] = [e for e in events if e["event"] == "call_reserved" and e["call"] == "c2"]
        assert (reserved["call"], reserved["agent"]) == ("c2", "1001")
        # The wrap-up's end carries the time it was due; the reservation, when a tick
        # noticed it (at most about one --acd-tick later: not asserted, the machine is
        # shared; bench/ measures latencies).
        assert float(reserved["ts"]) >= float(done["ts"])
        assert redis_problems(sync, T) == []
    finally:
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
