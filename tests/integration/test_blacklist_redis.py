"""omnicc/blacklist.py against a real redis-server: the import transaction, the check over
both redis-py clients (synchronous for the CLI, asyncio for the FastAGI server)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from omnicc import keys
from omnicc.blacklist import BlacklistStore, check_caller_async, parse_blacklist_csv
from tests.integration.acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

CSV = """number,reason
+1 (555) 010-0199,robocalls
555-0100,
0034 91 123 45 67,"fraude, estafa"
"""


@pytest.fixture
def client(acd_redis: RedisServer) -> Iterator[redis.Redis]:  # noqa: F811
    client = acd_redis.client()
    client.flushdb()
    yield client
    client.close()


def test_import_and_check(client: redis.Redis) -> None:
    store = BlacklistStore(client)
    assert store.import_entries("acme", parse_blacklist_csv(CSV)) == 3
    assert client.type(keys.blacklist("acme")) == "hash"
    assert store.reason("acme", "+15550100199") == "robocalls"
    assert store.reason("acme", "5550100") == ""
    assert store.reason("acme", "0034911234567") == "fraude, estafa"
    assert store.reason("acme", "5550101") is None
    assert store.reason("globex", "5550100") is None


def test_the_async_check_reads_the_same_list(acd_redis: RedisServer,  # noqa: F811
                                             client: redis.Redis) -> None:
    BlacklistStore(client).import_entries("acme", parse_blacklist_csv(CSV))

    async def check() -> list[str | None]:
        for decode in (True, False):  # whichever way the server's client is built
            aclient = aioredis.Redis(host=acd_redis.host, port=acd_redis.port,
                                     decode_responses=decode)
            try:
                found = [await check_caller_async(aclient, "acme", caller)
                         for caller in ("+1-555-010-0199", "5550101", "anonymous")]
            finally:
                await aclient.aclose()
            assert found == ["robocalls", None, None]
        return found

    asyncio.run(check())


def test_readers_see_the_old_list_or_the_new_one_never_half(client: redis.Redis) -> None:
    store = BlacklistStore(client)
    old = parse_blacklist_csv("".join(f"555{i:07d},old\n" for i in range(5000)))
    new = parse_blacklist_csv("".join(f"666{i:07d},new\n" for i in range(5000)))
    store.import_entries("acme", old)
    sizes: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        reader = BlacklistStore(client)
        while not stop.is_set():
            sizes.add(reader.size("acme"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(5):
            store.import_entries("acme", new)
            store.import_entries("acme", old)
    finally:
        stop.set()
        watcher.join()
    # A replace is DEL plus HSETs in one MULTI/EXEC: no reader saw an empty or partial list.
    assert sizes == {5000}
    assert store.reason("acme", "5550004999") == "old"
    assert store.reason("acme", "6660000000") is None
