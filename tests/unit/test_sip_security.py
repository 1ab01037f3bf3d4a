"""omnicc/sip_security.py: scanner User-Agents, and per-IP bans: counting and enforcement in
a node's (fake) htables, the record in (fake) Redis, expiry, unbanning and the list
`omnicc status` shows."""

from __future__ import annotations

import json

import pytest

from omnicc import lean_redis
from omnicc.config import Security
from omnicc.keys import revoked_jti
from omnicc.sip_security import (
    ALLOWED_METHODS,
    AUTHFAIL_TABLE,
    BANS_TABLE,
    FLOOD_TABLE,
    UNWRITTEN_SECONDS_MAX,
    UNWRITTEN_TABLE,
    WITHDRAWN_SECONDS,
    WITHDRAWN_TABLE,
    BanList,
    BanRecordError,
    EdgeGuard,
    ban_key,
    htable_definitions,
    is_scanner,
)
from tests.unit.fake_htable import FakeHtables
from tests.unit.fake_redis import FakeRedis

SCANNERS = Security().scanner_user_agents
IP, OTHER_IP = "198.51.100.20", "198.51.100.21"


# ---------------------------------------------------------------------------- scanners


@pytest.mark.parametrize("user_agent", [
    "friendly-scanner", "Friendly-Scanner", "sipvicious", "SIPVicious/0.3.4",
    "sipcli/v1.8", "sip-scan", "VaxSIPUserAgent/3.1", "PPLSIP", "iWar", "sundayddr",
    "smap 0.6.0", "Nmap NSE",
])
def test_scanners_are_recognised_case_insensitively(user_agent: str) -> None:
    assert is_scanner(user_agent, SCANNERS)


@pytest.mark.parametrize("user_agent", [
    None, "", "Linphone/5.2.0 (belle-sip/5.2.0)", "Zoiper rv2.10.20.3",
    "Yealink SIP-T46S 66.86.0.15", "Grandstream GXP2170 1.0.11.3", "MicroSIP/3.21.3",
    "PolycomVVX-VVX_410-UA/6.4.0", "Asterisk PBX 20.5.0", "FreeSWITCH-mod_sofia/1.10.10",
    "JsSIP 3.10.0", "SIP.js/0.21.2", "Cisco-SIPGateway/IOS-15.x", "omnicc",
])
def test_ordinary_user_agents_are_not_scanners(user_agent: str | None) -> None:
    assert not is_scanner(user_agent, SCANNERS)


def test_empty_patterns_match_nothing() -> None:
    assert not is_scanner("Linphone", ["", ""])
    assert not is_scanner("anything", [])


def test_patterns_are_case_insensitive_too() -> None:
    assert is_scanner("evil-bot/1.0", ["EVIL-BOT"])


def test_allowed_methods_are_the_ones_a_contact_center_needs() -> None:
    assert ALLOWED_METHODS == {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER",
                               "INFO", "UPDATE", "PRACK", "REFER", "NOTIFY"}


# ---------------------------------------------------------------------------- bans


SECURITY = Security(flood_requests=3, flood_window_seconds=10, auth_failures=2,
                    auth_failure_window_seconds=60, ban_seconds=900)


@pytest.fixture
def redis_server() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def bans(redis_server: FakeRedis) -> BanList:
    return BanList(redis_server, "node-a")


@pytest.fixture
def tables(redis_server: FakeRedis) -> FakeHtables:
    # One clock for the node's htables and Redis: the test moves both.
    return FakeHtables(htable_definitions(SECURITY, clustered=False),
                       clock=lambda: redis_server.now)


@pytest.fixture
def guard(tables: FakeHtables, bans: BanList) -> EdgeGuard:
    return EdgeGuard(tables, bans, SECURITY)


def test_the_ban_record_has_one_cluster_slot_per_ip() -> None:
    assert ban_key(IP) == "{ip:198.51.100.20}:ban"


def test_htables_count_in_fixed_windows_and_bans_replicate_only_in_a_cluster() -> None:
    single = htable_definitions(SECURITY, clustered=False)
    assert single == {
        BANS_TABLE: "size=10;autoexpire=900;dmqreplicate=0",
        FLOOD_TABLE: "size=12;autoexpire=10;updateexpire=0;initval=0",
        AUTHFAIL_TABLE: "size=10;autoexpire=60;updateexpire=0;initval=0",
        WITHDRAWN_TABLE: f"size=8;autoexpire={WITHDRAWN_SECONDS};dmqreplicate=0",
        UNWRITTEN_TABLE: f"size=10;autoexpire={UNWRITTEN_SECONDS_MAX}",
    }
    clustered = htable_definitions(SECURITY, clustered=True)
    assert "dmqreplicate=1" in clustered[BANS_TABLE]
    assert "dmqreplicate=1" in clustered[WITHDRAWN_TABLE]
    # Only this node's workers deferred the refreshes its flusher could not write.
    assert "dmqreplicate" not in clustered[UNWRITTEN_TABLE]


def test_a_withdrawal_is_remembered_longer_than_a_refresh_can_go_unsent() -> None:
    assert WITHDRAWN_SECONDS > lean_redis.REPUBLISH_AFTER_SECONDS + 1  # htable: 1 s steps
    # A queued refresh is written back, or dropped, while the tombstone still stands.
    assert lean_redis.CONTACT_TOMBSTONE_MS > lean_redis.DEFERRED_MAX_AGE_SECONDS * 1000 + 1000


def test_up_to_the_limit_is_no_flood_one_more_is_a_ban(
    guard: EdgeGuard, bans: BanList, tables: FakeHtables
) -> None:
    assert [guard.count_request(IP) for _ in range(3)] == [False, False, False]
    assert not guard.is_banned(IP) and bans.list() == []
    assert guard.count_request(IP) is True
    assert guard.is_banned(IP)
    assert [(b.ip, b.reason) for b in bans.list()] == [(IP, "flood")]
    # The counter goes with the ban: an unban starts from zero.
    assert tables.keys(FLOOD_TABLE) == []


def test_the_ban_record_says_why_when_and_where(
    guard: EdgeGuard, redis_server: FakeRedis
) -> None:
    for _ in range(3):
        guard.count_auth_failure(IP)
    record = json.loads(redis_server.get(ban_key(IP)) or b"{}")
    assert record["reason"] == "auth-failures"
    assert record["node"] == "node-a"
    assert isinstance(record["since"], float | int)
    assert redis_server.ttl(ban_key(IP)) == 900


def test_the_window_resets_the_count(guard: EdgeGuard, redis_server: FakeRedis) -> None:
    for _ in range(3):
        guard.count_request(IP)
    redis_server.advance(10)
    assert [guard.count_request(IP) for _ in range(3)] == [False, False, False]
    assert not guard.is_banned(IP)


def test_the_window_starts_at_the_first_event_not_the_last(
    guard: EdgeGuard, redis_server: FakeRedis
) -> None:
    # A fixed window: steady traffic just under the limit never keeps the counter alive.
    guard.count_request(IP)
    redis_server.advance(9)
    guard.count_request(IP)
    guard.count_request(IP)
    redis_server.advance(1)
    assert [guard.count_request(IP) for _ in range(3)] == [False, False, False]


def test_kinds_and_addresses_are_counted_apart(guard: EdgeGuard) -> None:
    for _ in range(2):
        guard.count_request(IP)
        guard.count_auth_failure(IP)
        guard.count_request(OTHER_IP)
    assert not guard.is_banned(IP) and not guard.is_banned(OTHER_IP)
    assert guard.count_auth_failure(IP) is True
    assert not guard.is_banned(OTHER_IP)


def test_a_ban_expires_on_the_node_and_in_the_record(
    guard: EdgeGuard, bans: BanList, redis_server: FakeRedis
) -> None:
    guard.ban(IP, "scanner")
    assert guard.is_banned(IP) and bans.is_banned(IP)
    redis_server.advance(899)
    assert guard.is_banned(IP)
    redis_server.advance(1)
    assert not guard.is_banned(IP) and not bans.is_banned(IP)
    assert guard.count_request(IP) is False


def test_a_ban_holds_on_the_node_when_redis_cannot_record_it(
    guard: EdgeGuard, bans: BanList, redis_server: FakeRedis
) -> None:
    redis_server.fail("set")
    with pytest.raises(BanRecordError, match="Redis went away"):
        guard.ban(IP, "scanner")
    assert guard.is_banned(IP)


def test_lift_forgets_the_ban_and_the_counts(guard: EdgeGuard, tables: FakeHtables) -> None:
    guard.count_auth_failure(IP)
    guard.count_request(IP)
    guard.ban(IP, "scanner")
    guard.lift(IP)
    assert not guard.is_banned(IP)
    assert tables.keys(FLOOD_TABLE) == tables.keys(AUTHFAIL_TABLE) == []


def test_unban_deletes_the_record(bans: BanList) -> None:
    bans.ban(IP, "scanner", 900)
    assert bans.unban(IP) is True
    assert not bans.is_banned(IP)
    assert bans.unban(IP) is False  # nothing left to lift


def test_list_shows_each_ban_with_reason_and_expiry(
    bans: BanList, redis_server: FakeRedis
) -> None:
    bans.ban(IP, "scanner", 900)
    bans.ban("2001:db8::7", "flood", 120)
    redis_server.set(revoked_jti("default", "x"), "1")  # a tenant key: not a ban
    redis_server.advance(20)
    listed = {(b.ip, b.reason, b.expires_in) for b in bans.list()}
    assert listed == {(IP, "scanner", 880), ("2001:db8::7", "flood", 100)}


def test_list_is_in_the_order_bans_were_made(redis_server: FakeRedis) -> None:
    bans = BanList(redis_server)
    for ip, since in [("192.0.2.3", 30.0), ("192.0.2.1", 10.0), ("192.0.2.2", 20.0)]:
        redis_server.set(ban_key(ip), json.dumps({"reason": "flood", "since": since}), ex=60)
    assert [b.ip for b in bans.list()] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [b.since for b in bans.list()] == [10.0, 20.0, 30.0]


def test_list_survives_a_record_it_cannot_read(bans: BanList, redis_server: FakeRedis) -> None:
    redis_server.set(ban_key(IP), "not json", ex=60)
    (ban,) = bans.list()
    assert (ban.ip, ban.reason, ban.since, ban.expires_in) == (IP, "?", 0.0, 60)


def test_list_of_nothing_is_empty(bans: BanList) -> None:
    assert bans.list() == []


def test_counters_need_an_initval_or_kamailio_never_creates_them(redis_server: FakeRedis) -> None:
    # Without initval, Kamailio's sht_inc of a missing item fails: nothing would count.
    definitions = htable_definitions(SECURITY, clustered=False)
    for table in (FLOOD_TABLE, AUTHFAIL_TABLE):
        definitions[table] = definitions[table].replace(";initval=0", "")
    broken = EdgeGuard(FakeHtables(definitions, clock=lambda: redis_server.now),
                       BanList(redis_server), SECURITY)
    assert not any(broken.count_request(IP) for _ in range(10))


def test_a_counter_past_its_window_but_not_yet_purged_starts_a_new_window(
    guard: EdgeGuard, tables: FakeHtables, redis_server: FakeRedis
) -> None:
    # Kamailio 5.6 restarts such a counter at 1 and leaves its expiry in the past; without
    # a fresh expiry every request would count 1 until htable's timer purged it.
    guard.count_request(IP)
    redis_server.advance(11)  # the window (10 s) has passed; the timer has not run
    assert [guard.count_request(IP) for _ in range(3)] == [False, False, False]
    assert guard.count_request(IP) is True
    assert guard.is_banned(IP)


def test_a_purged_counter_starts_again_too(
    guard: EdgeGuard, tables: FakeHtables, redis_server: FakeRedis
) -> None:
    guard.count_auth_failure(IP)
    redis_server.advance(61)
    tables.purge()
    assert [guard.count_auth_failure(IP) for _ in range(2)] == [False, False]
    assert guard.count_auth_failure(IP) is True
