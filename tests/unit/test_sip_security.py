"""omnicc/sip_security.py: scanner User-Agents, and per-IP bans in (fake) Redis: counting,
banning, expiry, unbanning and the list `omnicc status` shows."""

from __future__ import annotations

import json

import pytest

from omnicc.config import Security
from omnicc.keys import revoked_jti
from omnicc.sip_security import ALLOWED_METHODS, BanList, ban_key, counter_key, is_scanner
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


@pytest.fixture
def redis_server() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def bans(redis_server: FakeRedis) -> BanList:
    return BanList(redis_server, "node-a")


def count(bans: BanList, ip: str = IP, what: str = "flood", *, limit: int = 3,
          window: int = 10, ban_seconds: int = 900, reason: str = "flood") -> bool:
    return bans.count(ip, what, limit=limit, window=window, ban_seconds=ban_seconds,
                      reason=reason)


def test_keys_share_one_cluster_slot_per_ip() -> None:
    # One hash tag, so COUNT_AND_BAN_LUA touches a single Redis Cluster slot.
    assert ban_key(IP) == "{ip:198.51.100.20}:ban"
    assert counter_key(IP, "flood") == "{ip:198.51.100.20}:flood"


def test_up_to_the_limit_is_no_ban_one_more_is(bans: BanList, redis_server: FakeRedis) -> None:
    assert [count(bans) for _ in range(3)] == [False, False, False]
    assert not bans.is_banned(IP)
    assert count(bans) is True
    assert bans.is_banned(IP)
    # The counter goes with the ban: an unban starts from zero.
    assert redis_server.get(counter_key(IP, "flood")) is None


def test_a_banned_address_stays_banned_without_counting(
    bans: BanList, redis_server: FakeRedis
) -> None:
    for _ in range(4):
        count(bans)
    assert all(count(bans) for _ in range(10))
    assert redis_server.get(counter_key(IP, "flood")) is None


def test_the_ban_record_says_why_when_and_where(bans: BanList, redis_server: FakeRedis) -> None:
    for _ in range(4):
        count(bans, reason="auth-failures", what="authfail")
    record = json.loads(redis_server.get(ban_key(IP)) or b"{}")
    assert record["reason"] == "auth-failures"
    assert record["node"] == "node-a"
    assert isinstance(record["since"], float | int)
    assert redis_server.ttl(ban_key(IP)) == 900


def test_the_window_resets_the_count(bans: BanList, redis_server: FakeRedis) -> None:
    for _ in range(3):
        count(bans)
    redis_server.advance(10)
    assert [count(bans) for _ in range(3)] == [False, False, False]
    assert not bans.is_banned(IP)


def test_the_window_starts_at_the_first_event_not_the_last(
    bans: BanList, redis_server: FakeRedis
) -> None:
    # A fixed window: steady traffic just under the limit never keeps the counter alive.
    count(bans)
    redis_server.advance(9)
    count(bans)
    count(bans)
    redis_server.advance(1)
    assert [count(bans) for _ in range(3)] == [False, False, False]


def test_kinds_and_addresses_are_counted_apart(bans: BanList) -> None:
    for _ in range(3):
        count(bans, what="flood")
        count(bans, what="authfail")
        count(bans, ip=OTHER_IP)
    assert not bans.is_banned(IP) and not bans.is_banned(OTHER_IP)
    assert count(bans, what="authfail") is True
    assert not bans.is_banned(OTHER_IP)


def test_a_ban_expires(bans: BanList, redis_server: FakeRedis) -> None:
    bans.ban(IP, "scanner", 60)
    assert bans.is_banned(IP)
    redis_server.advance(59)
    assert bans.is_banned(IP)
    redis_server.advance(1)
    assert not bans.is_banned(IP)
    assert count(bans) is False


def test_unban_lifts_the_ban_and_forgets_the_counts(
    bans: BanList, redis_server: FakeRedis
) -> None:
    count(bans, what="authfail")
    count(bans, what="authfail")
    bans.ban(IP, "scanner", 900)
    assert bans.unban(IP) is True
    assert not bans.is_banned(IP)
    assert redis_server.get(counter_key(IP, "authfail")) is None
    assert bans.unban(IP) is False  # nothing left to lift


def test_list_shows_each_ban_with_reason_and_expiry(
    bans: BanList, redis_server: FakeRedis
) -> None:
    bans.ban(IP, "scanner", 900)
    for _ in range(4):
        count(bans, ip="2001:db8::7", reason="flood", ban_seconds=120)
    count(bans, ip=OTHER_IP)  # counted, not banned
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
