"""omnicc/channel_limit.py against a real redis-server: the limit holds across nodes and
under racing acquisitions, leases end a crashed node's channels, emergencies go through.

Time is a test clock (ms) passed to the scripts where a lease must end; one test checks
that without it the scripts use Redis TIME.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from omnicc import keys
from omnicc.channel_limit import AsyncChannelLimits, ChannelGrant, ChannelLimits, Renewal
from tests.integration.acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

T = "acme"
START_MS = 1_700_000_000_000
LEASE_MS = 10_000


class Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def client(acd_redis: RedisServer) -> Iterator[redis.Redis]:  # noqa: F811
    client = acd_redis.client()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def node(client: redis.Redis, clock: Clock) -> ChannelLimits:
    return ChannelLimits(client, lease_ms=LEASE_MS, clock=clock)


def test_the_limit_holds_across_two_nodes(acd_redis: RedisServer,  # noqa: F811
                                          clock: Clock) -> None:
    # Two nodes, each with its own connection, share carrier-a's 3 channels.
    node1 = node(acd_redis.client(), clock)
    node2 = node(acd_redis.client(), clock)
    assert node1.acquire(T, "carrier-a", "node1-1.1", limit=3).acquired
    assert node2.acquire(T, "carrier-a", "node2-1.1", limit=3).acquired
    assert node1.acquire(T, "carrier-a", "node1-1.2", limit=3) == ChannelGrant(
        acquired=True, in_use=3, limit=3, lease_until_ms=START_MS + LEASE_MS)
    assert node2.acquire(T, "carrier-a", "node2-1.2", limit=3) == ChannelGrant(
        acquired=False, in_use=3, limit=3, lease_until_ms=0)
    # Another trunk and another tenant count apart.
    assert node2.acquire(T, "carrier-b", "node2-1.2", limit=3).acquired
    assert node2.acquire("globex", "carrier-a", "node2-1.3", limit=3).acquired
    # A release on one node frees a channel for the other.
    assert node1.release(T, "carrier-a", "node1-1.1") is True
    assert node1.release(T, "carrier-a", "node1-1.1") is False  # twice is harmless
    assert node2.acquire(T, "carrier-a", "node2-1.2", limit=3).in_use == 3
    assert node1.in_use(T, "carrier-a") == 3


def test_racing_acquisitions_never_exceed_the_limit(acd_redis: RedisServer) -> None:  # noqa: F811
    limits = [ChannelLimits(acd_redis.client()) for _ in range(4)]  # Redis TIME
    acquired: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(limits))

    def node_run(index: int) -> None:
        start.wait()
        for call in range(25):
            channel = f"node{index}-1.{call}"
            if limits[index].acquire(T, "race", channel, limit=7).acquired:
                with lock:
                    acquired.append(channel)

    threads = [threading.Thread(target=node_run, args=(i,)) for i in range(len(limits))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(acquired) == 7
    assert limits[0].in_use(T, "race") == 7


def test_a_crashed_nodes_channels_end_with_their_lease(client: redis.Redis,
                                                       clock: Clock) -> None:
    alive, crashed = node(client, clock), node(client, clock)
    assert crashed.acquire(T, "carrier-a", "node2-1.1", limit=2).acquired
    assert alive.acquire(T, "carrier-a", "node1-1.1", limit=2).acquired
    clock.ms += LEASE_MS // 2
    # The live node renews its channel; the crashed one does not.
    assert alive.renew_many(T, "carrier-a", ["node1-1.1"]) == Renewal(in_use=2, lapsed=())
    assert not alive.acquire(T, "carrier-a", "node1-1.2", limit=2).acquired
    clock.ms += LEASE_MS // 2  # node2's lease ends now
    assert alive.in_use(T, "carrier-a") == 1
    assert alive.acquire(T, "carrier-a", "node1-1.2", limit=2).acquired
    assert alive.renew(T, "carrier-a", "node1-1.1") is True


def test_a_lapsed_channel_is_counted_again_when_renewed(client: redis.Redis,
                                                        clock: Clock) -> None:
    limits = node(client, clock)
    limits.acquire(T, "carrier-a", "node1-1.1", limit=1)
    clock.ms += LEASE_MS + 1
    assert limits.renew_many(T, "carrier-a", ["node1-1.1"]) == Renewal(
        in_use=1, lapsed=("node1-1.1",))
    assert not limits.acquire(T, "carrier-a", "node1-1.2", limit=1).acquired


def test_acquiring_a_held_channel_again_renews_it(client: redis.Redis, clock: Clock) -> None:
    limits = node(client, clock)
    limits.acquire(T, "carrier-a", "node1-1.1", limit=1)
    clock.ms += 1000
    again = limits.acquire(T, "carrier-a", "node1-1.1", limit=1)
    assert again == ChannelGrant(acquired=True, in_use=1, limit=1,
                                 lease_until_ms=START_MS + 1000 + LEASE_MS)


def test_emergency_calls_go_over_the_limit_and_are_counted(client: redis.Redis,
                                                           clock: Clock) -> None:
    limits = node(client, clock)
    limits.acquire(T, "carrier-a", "node1-1.1", limit=1)
    grant = limits.acquire(T, "carrier-a", "node1-1.911", limit=1, force=True)
    assert grant == ChannelGrant(acquired=True, in_use=2, limit=1,
                                 lease_until_ms=START_MS + LEASE_MS, forced=True)
    assert not limits.acquire(T, "carrier-a", "node1-1.2", limit=1).acquired
    # Under the limit, force changes nothing.
    assert limits.acquire(T, "carrier-b", "node1-1.3", limit=5, force=True).forced is False


def test_no_limit_only_counts(client: redis.Redis, clock: Clock) -> None:
    limits = node(client, clock)
    for call in range(20):
        assert limits.acquire(T, "pbx", f"node1-1.{call}", limit=0).acquired
    assert limits.in_use(T, "pbx") == 20


def test_a_restarted_node_releases_its_channels_at_once(client: redis.Redis,
                                                        clock: Clock) -> None:
    limits = node(client, clock)
    for name in ("node1-1.1", "node1-1.2", "node10-1.1", "node2-1.1"):
        limits.acquire(T, "carrier-a", name, limit=10)
    assert limits.release_prefix(T, "carrier-a", "node1-") == 2
    assert limits.in_use(T, "carrier-a") == 2
    with pytest.raises(ValueError, match="non-empty prefix"):
        limits.release_prefix(T, "carrier-a", "")


def test_an_idle_trunk_leaves_no_key(client: redis.Redis, clock: Clock) -> None:
    limits = node(client, clock)
    limits.acquire(T, "carrier-a", "node1-1.1", limit=1)
    key = keys.trunk_channels(T, "carrier-a")
    assert key == "{t:acme}:trunk:carrier-a:channels"
    assert 0 < client.pttl(key) <= LEASE_MS
    limits.release(T, "carrier-a", "node1-1.1")
    assert client.exists(key) == 0


def test_without_a_clock_leases_follow_redis_time(client: redis.Redis) -> None:
    limits = ChannelLimits(client, lease_ms=60_000)
    seconds, micros = client.time()
    grant = limits.acquire(T, "carrier-a", "node1-1.1", limit=1)
    redis_ms = seconds * 1000 + micros // 1000
    assert redis_ms + 60_000 <= grant.lease_until_ms <= redis_ms + 60_000 + 5_000


def test_the_asyncio_client_shares_the_count(acd_redis: RedisServer,  # noqa: F811
                                             client: redis.Redis, clock: Clock) -> None:
    node(client, clock).acquire(T, "carrier-a", "node1-1.1", limit=2)

    async def run() -> None:
        aclient = aioredis.Redis(host=acd_redis.host, port=acd_redis.port)
        try:
            limits = AsyncChannelLimits(aclient, lease_ms=LEASE_MS, clock=clock)
            assert (await limits.acquire(T, "carrier-a", "node2-1.1", limit=2)).acquired
            assert not (await limits.acquire(T, "carrier-a", "node2-1.2", limit=2)).acquired
            renewal = await limits.renew_many(T, "carrier-a", ["node2-1.1"])
            assert renewal == Renewal(in_use=2, lapsed=())
            assert await limits.release(T, "carrier-a", "node2-1.1") is True
            assert await limits.in_use(T, "carrier-a") == 1
        finally:
            await aclient.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(("call", "problem"), [
    (lambda c: c.acquire(T, "carrier-a", "", limit=1), "channel id ''"),
    (lambda c: c.acquire(T, "carrier-a", "a b", limit=1), "channel id 'a b'"),
    (lambda c: c.acquire(T, "carrier-a", "x" * 129, limit=1), "1 to 128"),
    (lambda c: c.acquire(T, "Carrier A", "n1", limit=1), "trunk 'Carrier A'"),
    (lambda c: c.acquire("{t:x}", "carrier-a", "n1", limit=1), "tenant '{t:x}'"),
    (lambda c: c.acquire(T, "carrier-a", "n1", limit=-1), "channel limit -1"),
    (lambda c: c.acquire(T, "carrier-a", "n1", limit="3"), "channel limit '3'"),
    (lambda c: c.acquire(T, "carrier-a", "n1", limit=True), "channel limit True"),
    (lambda c: c.renew_many(T, "carrier-a", ["ok", "not ok"]), "channel id 'not ok'"),
])
def test_bad_input_is_refused_before_redis(client: redis.Redis, clock: Clock, call,  # type: ignore[no-untyped-def]
                                           problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        call(node(client, clock))
    assert problem in str(caught.value)
    assert client.dbsize() == 0


@pytest.mark.parametrize("lease_ms", [0, 999, 24 * 3600 * 1000 + 1, 1.5])
def test_bad_lease_lengths(client: redis.Redis, lease_ms: object) -> None:
    with pytest.raises(ValueError, match="lease_ms"):
        ChannelLimits(client, lease_ms=lease_ms)  # type: ignore[arg-type]
