"""omnicc/lean_redis.py against a real redis-server: the admission script gives what
redis-py gives, survives SCRIPT FLUSH (NOSCRIPT -> EVAL), selects the URL's database,
authenticates, and turns a Redis that went away into LeanRedisError, then reconnects.
TrackedAdmission: what it remembers saves round trips, and never outlives a change any
client makes, a flush, a failed write, a silent or a closed connection."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from omnicc import lean_redis
from omnicc.agent_auth import ADMIT_LUA
from omnicc.keys import contact_withdrawn
from omnicc.lean_redis import LeanRedisError, TrackedAdmission
from omnicc.revocation import wait_until_nodes_told
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
    lean = TrackedAdmission(server.url, ADMIT_LUA)
    reference = client.register_script(ADMIT_LUA)
    assert lean(KEYS, ["node-1 sip:1001@192.0.2.5", 60]) == 0
    assert client.get(CONTACT) == "node-1 sip:1001@192.0.2.5"
    assert 55 <= client.ttl(CONTACT) <= 60
    client.set(REVOKED, "1")
    assert wait_until_nodes_told(client)
    assert lean(KEYS, ["", 1]) == reference(keys=KEYS, args=["", 1]) == 1
    client.delete(REVOKED)
    assert lean(KEYS, ["", 1]) == reference(keys=KEYS, args=["", 1]) == 0


def test_a_flushed_script_cache_is_refilled(server: RedisServer, client: redis.Redis) -> None:
    lean = TrackedAdmission(server.url, ADMIT_LUA)
    assert lean(KEYS, ["", 1]) == 0
    client.script_flush()
    lean.forget()  # so the next call runs the script rather than answer from memory
    assert lean(KEYS, ["", 1]) == 0  # NOSCRIPT, then EVAL
    assert lean(KEYS, ["", 1]) == 0  # EVALSHA again


def test_the_urls_database_is_selected(server: RedisServer, client: redis.Redis) -> None:
    lean = TrackedAdmission(f"redis://{server.host}:{server.port}/3", ADMIT_LUA)
    assert lean(KEYS, ["x", 60]) == 0
    assert client.get(CONTACT) is None
    assert redis.Redis(host=server.host, port=server.port, db=3).get(CONTACT) == b"x"


def test_a_password_is_sent_and_a_wrong_one_refused(server: RedisServer,
                                                     client: redis.Redis) -> None:
    client.config_set("requirepass", "s3cret")
    try:
        assert TrackedAdmission(f"redis://:s3cret@{server.host}:{server.port}/0",
                          ADMIT_LUA)(KEYS, ["", 1]) == 0
        with pytest.raises(LeanRedisError, match="AUTH"):
            TrackedAdmission(f"redis://:wrong@{server.host}:{server.port}/0",
                       ADMIT_LUA)(KEYS, ["", 1])
        with pytest.raises(LeanRedisError, match="NOAUTH"):
            TrackedAdmission(server.url, ADMIT_LUA)(KEYS, ["", 1])
    finally:
        redis.Redis(host=server.host, port=server.port, password="s3cret").config_set(
            "requirepass", "")


def test_a_script_error_is_raised_and_the_connection_stays_usable(server: RedisServer,
                                                                   client: redis.Redis) -> None:
    lean = TrackedAdmission(server.url, ADMIT_LUA)
    with pytest.raises(LeanRedisError, match="ERR"):
        lean(KEYS, ["x", "not-a-number"])  # SET ... EX 'not-a-number'
    assert lean(KEYS, ["", 1]) == 0


def test_redis_gone_is_an_error_and_the_next_call_reconnects(client: redis.Redis) -> None:
    spare = start_redis_server()
    lean = TrackedAdmission(spare.url, ADMIT_LUA, timeout=0.5)
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
        TrackedAdmission("rediss://127.0.0.1:6380/0", ADMIT_LUA)


# ---------------------------------------------------------------- TrackedAdmission
CONTACT_VALUE = "node-1 sip:1001@192.0.2.5"


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0))


def set_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


@pytest.fixture
def tracked(server: RedisServer, client: redis.Redis) -> Iterator[TrackedAdmission]:
    client.config_resetstat()
    admission = TrackedAdmission(server.url, ADMIT_LUA)
    yield admission
    admission.close()


def test_tracked_admission_answers_as_the_script_does(tracked: TrackedAdmission,
                                                      client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert client.get(CONTACT) == CONTACT_VALUE
    client.set(DISABLED, "1")
    assert wait_until_nodes_told(client)
    assert tracked(KEYS, ["", 1]) == 1
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 1  # refused, however often it asks


def test_an_agent_admitted_before_is_admitted_without_a_round_trip(
        tracked: TrackedAdmission, client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert evalsha_calls(client) == 1
    for _ in range(5):
        assert tracked(KEYS, ["", 1]) == 0  # an INVITE: nothing sent at all
    assert evalsha_calls(client) == 1


def test_a_refreshed_registration_still_extends_the_reachability(
        tracked: TrackedAdmission, client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0  # the same contact: SET, not waited for
    assert tracked(KEYS, ["", 1]) == 0  # reads the SET's reply
    assert evalsha_calls(client) == 1
    assert set_calls(client) == 2
    assert 590 <= client.ttl(CONTACT) <= 600


def test_a_refresh_that_changes_nothing_the_acd_sees_sends_nothing(
        tracked: TrackedAdmission, client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    for _ in range(5):  # a load test's phone: the same contact, the same expiry, at once
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert evalsha_calls(client) == 1
    assert set_calls(client) == 1
    assert 59 <= client.ttl(CONTACT) <= 60


def test_an_unchanged_refresh_is_published_once_the_window_has_passed(
        tracked: TrackedAdmission, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_redis, "REPUBLISH_AFTER_SECONDS", 0.3)
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    client.expire(CONTACT, 30)  # so the refresh shows
    time.sleep(0.5)  # past the window, within TRACKING_LIVENESS_SECONDS
    # Expiring within EXPIRY_DRIFT_SECONDS of what was published, but that was longer ago
    # than the window: sent.
    assert tracked(KEYS, [CONTACT_VALUE, 59]) == 0
    assert tracked(KEYS, ["", 1]) == 0  # reads the SET's reply
    assert set_calls(client) == 2
    assert client.ttl(CONTACT) > 30


def test_a_contact_another_worker_withdrew_is_published_again_at_once(
        server: RedisServer, client: redis.Redis) -> None:
    client.config_resetstat()
    withdrawn: set[str] = set()
    tracked = TrackedAdmission(server.url, ADMIT_LUA, recently_withdrawn=withdrawn.__contains__)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        scripts = evalsha_calls(client)
        client.delete(CONTACT)  # the phone unregistered through another worker ...
        withdrawn.add(CONTACT)  # ... which marked it in the node's htable
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0  # and registered again here:
        assert evalsha_calls(client) == scripts + 1  # with the round trip, so ...
        assert client.get(CONTACT) == CONTACT_VALUE  # ... published before the answer
    finally:
        tracked.close()


def test_a_new_contact_is_published_before_the_answer(tracked: TrackedAdmission,
                                                      client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert tracked(KEYS, ["node-2 sip:1001@198.51.100.7", 60]) == 0
    assert evalsha_calls(client) == 2  # waited for: the ACD sees it before the 200 OK
    assert client.get(CONTACT) == "node-2 sip:1001@198.51.100.7"


@pytest.mark.parametrize("flag", [DISABLED, REVOKED])
def test_a_flag_set_by_anyone_refuses_the_very_next_request(
        tracked: TrackedAdmission, client: redis.Redis, flag: str) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert tracked(KEYS, ["", 1]) == 0
    client.set(flag, "1")  # as `omnicc agent disable` / `omnicc token revoke` do ...
    assert wait_until_nodes_told(client)  # ... before they return
    assert tracked(KEYS, ["", 1]) == 1
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 1
    client.delete(flag)
    assert tracked(KEYS, ["", 1]) == 0


def test_a_flushed_database_forgets_every_answer(tracked: TrackedAdmission,
                                                 client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    client.flushdb()
    assert wait_until_nodes_told(client)
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert evalsha_calls(client) == 2  # asked again (the script may have been flushed too)
    assert client.get(CONTACT) == CONTACT_VALUE


def test_a_silent_connection_is_not_trusted(tracked: TrackedAdmission, client: redis.Redis,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_redis, "TRACKING_LIVENESS_SECONDS", 0.05)
    assert tracked(KEYS, ["", 1]) == 0
    time.sleep(0.1)  # nothing heard from Redis for longer than that
    assert tracked(KEYS, ["", 1]) == 0
    assert evalsha_calls(client) == 2


def test_a_publish_that_failed_is_not_lost_silently(server: RedisServer,
                                                    client: redis.Redis) -> None:
    logged: list[str] = []
    tracked = TrackedAdmission(server.url, ADMIT_LUA, log=logged.append)
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write now fails with OOM
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0  # the SET went without waiting
        time.sleep(0.2)  # its error reply arrives meanwhile
        # It is logged, read on the next request, which is not refused for it ...
        assert tracked(KEYS, ["", 1]) == 0
        assert any("not refreshed" in line and "OOM" in line for line in logged)
        # ... and the contact is published with a round trip next time (which fails here).
        with pytest.raises(LeanRedisError, match="OOM"):
            tracked(KEYS, [CONTACT_VALUE, 60])
    finally:
        client.config_set("maxmemory", 0)
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0


def test_redis_gone_is_never_answered_from_memory() -> None:
    spare = start_redis_server()
    tracked = TrackedAdmission(spare.url, ADMIT_LUA, timeout=0.5)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        assert tracked(KEYS, ["", 1]) == 0
        spare.process.kill()
        spare.process.wait()
        with pytest.raises(LeanRedisError, match="Redis unavailable"):
            tracked(KEYS, ["", 1])
        with pytest.raises(LeanRedisError, match="Redis unavailable"):
            tracked(KEYS, [CONTACT_VALUE, 60])
    finally:
        tracked.close()
        spare.stop()


def test_tracked_admission_authenticates_and_selects_the_database(
        server: RedisServer, client: redis.Redis) -> None:
    client.config_set("requirepass", "s3cret")
    try:
        tracked = TrackedAdmission(f"redis://:s3cret@{server.host}:{server.port}/3", ADMIT_LUA)
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        other = redis.Redis(host=server.host, port=server.port, db=3, password="s3cret")
        assert other.get(CONTACT) == CONTACT_VALUE.encode()
        other.set(DISABLED, "1")  # invalidations come for the URL's database too
        assert wait_until_nodes_told(other)
        assert tracked(KEYS, ["", 1]) == 1
        tracked.close()
    finally:
        redis.Redis(host=server.host, port=server.port, password="s3cret").config_set(
            "requirepass", "")


def test_more_invalidations_than_one_read_are_all_seen(tracked: TrackedAdmission,
                                                       client: redis.Redis) -> None:
    # An idle worker after a bulk disable: far more than 64 KiB of invalidations wait.
    others = [[f"{{t:e}}:agent:{n}:disabled", f"{{t:e}}:agent:{n}:disabled",
               f"{{t:e}}:agent:{n}:contact"] for n in range(3000)]
    for keys in others:
        assert tracked(keys, ["", 1]) == 0
    assert tracked(KEYS, ["", 1]) == 0
    with client.pipeline(transaction=False) as pipe:
        for keys in others:
            pipe.set(keys[0], "1")
        pipe.set(DISABLED, "1")  # the last invalidation of all
        pipe.execute()
    assert wait_until_nodes_told(client)
    assert tracked(KEYS, ["", 1]) == 1


def test_a_withdrawal_comes_after_the_refreshes_sent_before_it(
        tracked: TrackedAdmission, client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0  # SET sent, not waited for
    tracked.withdraw(CONTACT)  # same connection: after that SET
    assert client.exists(CONTACT) == 0
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0  # published again, with a round trip
    assert client.get(CONTACT) == CONTACT_VALUE


def test_a_refresh_a_broken_connection_swallowed_is_published_again(
        tracked: TrackedAdmission, client: redis.Redis) -> None:
    assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
    client.delete(CONTACT)
    # The connection dies with the refresh's reply owed: Redis holds writes (WRITE pause),
    # so the SET has not run when the connection is killed, and never runs.
    client.client_pause(5000, all=False)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0
        time.sleep(0.1)
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        client.client_unpause()
    time.sleep(0.1)
    assert client.exists(CONTACT) == 0
    assert tracked(KEYS, ["", 1]) == 0  # reconnects, publishes the lost refresh first
    assert client.get(CONTACT) == CONTACT_VALUE
    assert client.ttl(CONTACT) > 500


def test_a_server_refusing_client_tracking_is_asked_every_time(server: RedisServer,
                                                               client: redis.Redis) -> None:
    client.config_resetstat()
    client.acl_setuser("notrack", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@all", "-client"], reset=True)
    logged: list[str] = []
    tracked = TrackedAdmission(f"redis://notrack:pw@{server.host}:{server.port}/0",
                               ADMIT_LUA, log=logged.append)
    try:
        for _ in range(3):
            assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        assert evalsha_calls(client) == 3
        assert any("CLIENT TRACKING refused" in line for line in logged)
        client.set(DISABLED, "1")
        assert tracked(KEYS, ["", 1]) == 1
    finally:
        tracked.close()
        client.acl_deluser("notrack")


# ---------------------------------------------------------------------- write-back
def deferring(server: RedisServer, accept: bool = True,
              ) -> tuple[TrackedAdmission, list[tuple[str, str, int]]]:
    handed: list[tuple[str, str, int]] = []

    def defer(key: str, value: str, ttl: int) -> bool:
        handed.append((key, value, ttl))
        return accept

    return TrackedAdmission(server.url, ADMIT_LUA, defer=defer), handed


def test_a_refresh_of_a_long_lived_contact_is_handed_over_not_sent(
        server: RedisServer, client: redis.Redis) -> None:
    client.config_resetstat()
    tracked, handed = deferring(server)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0  # new: published with the round trip
        assert handed == []
        assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0
        assert handed == [(CONTACT, CONTACT_VALUE, 600)]
        assert tracked(KEYS, ["", 1]) == 0
        assert set_calls(client) == 1  # the worker sent no SET for the refresh
    finally:
        tracked.close()


def test_a_refresh_the_queue_refuses_is_sent_by_the_worker(server: RedisServer,
                                                          client: redis.Redis) -> None:
    client.config_resetstat()
    tracked, handed = deferring(server, accept=False)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0
        assert handed == [(CONTACT, CONTACT_VALUE, 600)]
        assert tracked(KEYS, ["", 1]) == 0  # reads the SET's reply
        assert set_calls(client) == 2
        assert client.ttl(CONTACT) > 590
    finally:
        tracked.close()


def test_a_contact_close_to_its_expiry_is_not_handed_over(server: RedisServer,
                                                          client: redis.Redis) -> None:
    tracked, handed = deferring(server)
    try:
        ttl = int(lean_redis.DEFER_MARGIN_SECONDS) - 1  # the key lives less than the margin
        assert tracked(KEYS, [CONTACT_VALUE, ttl]) == 0
        assert tracked(KEYS, [CONTACT_VALUE, 600]) == 0
        assert handed == []
        assert tracked(KEYS, ["", 1]) == 0
        assert client.ttl(CONTACT) > 590
    finally:
        tracked.close()


def queued(value: str, ttl: int, age: float = 0.0) -> str:
    return lean_redis.encode_refresh(value, ttl, time.time() - age, time.monotonic() - age)


@pytest.fixture
def writer(server: RedisServer) -> Iterator[lean_redis.ReachabilityWriter]:
    writer = lean_redis.ReachabilityWriter(server.url)
    yield writer
    writer.close()


def test_the_write_back_extends_every_queued_contact(writer: lean_redis.ReachabilityWriter,
                                                     client: redis.Redis) -> None:
    keys = [f"{{t:d}}:agent:{n}:contact" for n in range(50)]
    for key in keys:
        client.set(key, CONTACT_VALUE, ex=30)
    refreshes = [(key, queued(CONTACT_VALUE, 600)) for key in keys]
    assert writer.write(refreshes, time.monotonic()) == []
    assert all(590 <= client.ttl(key) <= 600 for key in keys)
    # A key another process lost meanwhile (FLUSHALL, a restart) is written again.
    client.delete(keys[0])
    assert writer.write([(keys[0], queued(CONTACT_VALUE, 600))], time.monotonic()) == []
    assert client.get(keys[0]) == CONTACT_VALUE


def test_the_write_back_never_brings_back_an_unregistered_agent(
        server: RedisServer, writer: lean_redis.ReachabilityWriter,
        client: redis.Redis) -> None:
    tracked, _ = deferring(server)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        refresh = queued(CONTACT_VALUE, 600, age=0.01)  # queued, then the phone unregistered
        tracked.withdraw(CONTACT)
        assert writer.write([(CONTACT, refresh)], time.monotonic()) == [(CONTACT, 600)]
        assert client.exists(CONTACT) == 0
        assert 0 < client.pttl(contact_withdrawn(CONTACT)) <= 5000
    finally:
        tracked.close()


def test_a_registration_after_the_unregistration_is_written_back(
        server: RedisServer, writer: lean_redis.ReachabilityWriter,
        client: redis.Redis) -> None:
    # Unregistered through one node, registered again through another whose worker still
    # took the contact as published (before the `withdrawn` mark reached it): the refresh
    # it queued is newer than the tombstone, so it is written.
    tracked, _ = deferring(server)
    try:
        assert tracked(KEYS, [CONTACT_VALUE, 60]) == 0
        tracked.withdraw(CONTACT)
        time.sleep(0.01)
        assert writer.write([(CONTACT, queued(CONTACT_VALUE, 600))], time.monotonic()) == []
        assert client.get(CONTACT) == CONTACT_VALUE
    finally:
        tracked.close()


def test_stale_or_garbled_refreshes_are_not_written(writer: lean_redis.ReachabilityWriter,
                                                   client: redis.Redis) -> None:
    too_old = queued(CONTACT_VALUE, 600, age=lean_redis.DEFERRED_MAX_AGE_SECONDS + 1)
    expired = queued(CONTACT_VALUE, 1, age=0.5)
    refreshes = [(CONTACT, too_old), (CONTACT, expired), (CONTACT, "garbage"),
                 (CONTACT, "1 2 x sip:1@h")]
    assert writer.write(refreshes, time.monotonic()) == [
        (CONTACT, 600), (CONTACT, 1), (CONTACT, lean_redis.UNKNOWN_TTL_SECONDS),
        (CONTACT, lean_redis.UNKNOWN_TTL_SECONDS)]
    assert client.exists(CONTACT) == 0


def test_the_write_back_survives_a_flushed_script_cache(writer: lean_redis.ReachabilityWriter,
                                                        client: redis.Redis) -> None:
    assert writer.write([(CONTACT, queued(CONTACT_VALUE, 60))], time.monotonic()) == []
    client.script_flush()
    assert writer.write([(CONTACT, queued(CONTACT_VALUE, 600))], time.monotonic()) == []
    assert client.ttl(CONTACT) > 590


def test_a_refresh_redis_refuses_is_reported_and_logged(server: RedisServer,
                                                        client: redis.Redis) -> None:
    logged: list[str] = []
    writer = lean_redis.ReachabilityWriter(server.url, log=logged.append)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every write refused: OOM
        try:
            assert writer.write([(CONTACT, queued(CONTACT_VALUE, 60))],
                                time.monotonic()) == [(CONTACT, 60)]
        finally:
            client.config_set("maxmemory", 0)
        assert len(logged) == 1 and "refused by Redis" in logged[0] and "OOM" in logged[0]
        assert client.exists(CONTACT) == 0
    finally:
        writer.close()


def test_the_write_back_to_a_redis_gone_is_an_error() -> None:
    writer = lean_redis.ReachabilityWriter("redis://127.0.0.1:1/0", timeout=0.2)
    with pytest.raises(LeanRedisError):
        writer.write([(CONTACT, queued(CONTACT_VALUE, 60))], time.monotonic())
