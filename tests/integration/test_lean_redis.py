"""omnicc/lean_redis.py against a real redis-server: the admission script gives what
redis-py gives, survives SCRIPT FLUSH (NOSCRIPT -> EVAL), selects the URL's database,
authenticates, and turns a Redis that went away into LeanRedisError, then reconnects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from omnicc.agent_auth import ADMIT_LUA
from omnicc.lean_redis import LeanRedisError, LeanScript
from tests.integration.acd_redis import RedisServer, start_redis_server

pytestmark = pytest.mark.integration

DISABLED, REVOKED, CONTACT = ("{t:d}:agent:1001:disabled", "{t:d}:revoked:jti:j1",
                              "{t:d}:agent:1001:contact")
KEYS = [DISABLED, REVOKED, CONTACT]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = start_redis_server()
    yield started
    started.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    client.flushall()
    yield client


def test_the_lean_script_answers_as_redis_py_does(server: RedisServer,
                                                   client: redis.Redis) -> None:
    lean = LeanScript(server.url, ADMIT_LUA)
    reference = client.register_script(ADMIT_LUA)
    assert lean(KEYS, ["node-1 sip:1001@192.0.2.5", 60]) == 0
    assert client.get(CONTACT) == "node-1 sip:1001@192.0.2.5"
    assert 55 <= client.ttl(CONTACT) <= 60
    client.set(REVOKED, "1")
    assert lean(KEYS, ["", 1]) == reference(keys=KEYS, args=["", 1]) == 1
    client.delete(REVOKED)
    assert lean(KEYS, ["", 1]) == reference(keys=KEYS, args=["", 1]) == 0


def test_a_flushed_script_cache_is_refilled(server: RedisServer, client: redis.Redis) -> None:
    lean = LeanScript(server.url, ADMIT_LUA)
    assert lean(KEYS, ["", 1]) == 0
    client.script_flush()
    assert lean(KEYS, ["", 1]) == 0  # NOSCRIPT, then EVAL
    assert lean(KEYS, ["", 1]) == 0  # EVALSHA again


def test_the_urls_database_is_selected(server: RedisServer, client: redis.Redis) -> None:
    lean = LeanScript(f"redis://{server.host}:{server.port}/3", ADMIT_LUA)
    assert lean(KEYS, ["x", 60]) == 0
    assert client.get(CONTACT) is None
    assert redis.Redis(host=server.host, port=server.port, db=3).get(CONTACT) == b"x"


def test_a_password_is_sent_and_a_wrong_one_refused(server: RedisServer,
                                                     client: redis.Redis) -> None:
    client.config_set("requirepass", "s3cret")
    try:
        assert LeanScript(f"redis://:s3cret@{server.host}:{server.port}/0",
                          ADMIT_LUA)(KEYS, ["", 1]) == 0
        with pytest.raises(LeanRedisError, match="AUTH"):
            LeanScript(f"redis://:wrong@{server.host}:{server.port}/0",
                       ADMIT_LUA)(KEYS, ["", 1])
        with pytest.raises(LeanRedisError, match="NOAUTH"):
            LeanScript(server.url, ADMIT_LUA)(KEYS, ["", 1])
    finally:
        redis.Redis(host=server.host, port=server.port, password="s3cret").config_set(
            "requirepass", "")


def test_a_script_error_is_raised_and_the_connection_stays_usable(server: RedisServer,
                                                                   client: redis.Redis) -> None:
    lean = LeanScript(server.url, ADMIT_LUA)
    with pytest.raises(LeanRedisError, match="ERR"):
        lean(KEYS, ["x", "not-a-number"])  # SET ... EX 'not-a-number'
    assert lean(KEYS, ["", 1]) == 0


def test_redis_gone_is_an_error_and_the_next_call_reconnects(client: redis.Redis) -> None:
    spare = start_redis_server()
    lean = LeanScript(spare.url, ADMIT_LUA, timeout=0.5)
    try:
        assert lean(KEYS, ["", 1]) == 0
        spare.process.kill()
        spare.process.wait()
        with pytest.raises(LeanRedisError, match="Redis unavailable"):
            lean(KEYS, ["", 1])
        with pytest.raises(LeanRedisError, match="Redis unavailable"):
            lean(KEYS, ["", 1])  # connection refused, not a hang
    finally:
        spare.stop()


def test_an_unsupported_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="rediss"):
        LeanScript("rediss://127.0.0.1:6380/0", ADMIT_LUA)
