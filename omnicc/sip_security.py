"""The SIP edge's defences: scanner detection, method and size policy, and per-IP bans
enforced in each Kamailio node's own memory (htables, shared between nodes by DMQ) and
recorded in Redis so `omnicc status` can list them and `omnicc unban` lift them.

Trusted peers never reach these checks: OMniLeads once banned its own Asterisk with an
anti-flood rule; omnicc exempts Asterisk nodes, trunks and the PBX by construction.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

# The methods omnicc needs; anything else is answered 405.
ALLOWED_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
    "REFER", "NOTIFY",
})


def is_scanner(user_agent: str | None, patterns: Iterable[str]) -> bool:
    return ScannerMatcher(patterns).matches(user_agent)


class ScannerMatcher:
    """The scanner patterns compiled once (the KEMI script asks on every request)."""

    def __init__(self, patterns: Iterable[str]):
        wanted = [re.escape(p) for p in patterns if p]
        self._regex = re.compile("|".join(wanted), re.IGNORECASE) if wanted else None

    def matches(self, text: str | None) -> bool:
        return bool(text) and self._regex is not None and self._regex.search(text) is not None


def ban_key(ip: str) -> str:
    # {ip:...}: one Redis Cluster slot per address for its record.
    return "{ip:" + ip + "}:ban"


# Kamailio htables (shared memory of one node; kamailio.cfg.j2 declares them) that hold
# what the edge counts and enforces per source address. Nothing here costs a Redis round
# trip: a request from a stranger is screened in the node's own memory.
BANS_TABLE = "bans"          # ip -> reason, each with its own expiry (replicated by DMQ)
FLOOD_TABLE = "flood"        # ip -> requests since its window opened
AUTHFAIL_TABLE = "authfail"  # ip -> authentication failures since its window opened
EDGE_TABLES = (BANS_TABLE, FLOOD_TABLE, AUTHFAIL_TABLE)
# Not the edge's: reachability key -> 1 for a few seconds after a worker deleted it (an
# unregistration), so every worker publishes that contact again, with a round trip, rather
# than take it as published (omnicc.lean_redis.TrackedAdmission's recently_withdrawn).
# Replicated to the other nodes like the bans: the phone may register again through one.
WITHDRAWN_TABLE = "withdrawn"
WITHDRAWN_SECONDS = 5
# Reachability key -> 1 while this node's workers may believe a refresh of it was written
# that the node's flusher could not write (Redis unreachable, the refresh too old), each
# for as long as that refresh's TTL: the agent's next REGISTER on this node publishes with
# a round trip. This node's alone (only its workers deferred those refreshes).
UNWRITTEN_TABLE = "unwritten"
UNWRITTEN_SECONDS_MAX = 3600  # the registrar's max_expires


def htable_definitions(security: Any, *, clustered: bool) -> dict[str, str]:
    """Each node htable's Kamailio definition. A counter's window opens with its first
    request and is not pushed back by later ones (updateexpire=0): a source that keeps
    sending is counted, not forgiven. initval=0: sht_inc creates a missing counter (without
    it Kamailio's sht_inc of a missing item fails). In a cluster, bans and withdrawals are
    replicated over DMQ; unwritten refreshes are the node's own."""
    replicate = 1 if clustered else 0
    return {
        BANS_TABLE: f"size=10;autoexpire={security.ban_seconds};"
                    f"dmqreplicate={replicate}",
        FLOOD_TABLE: f"size=12;autoexpire={security.flood_window_seconds};updateexpire=0;"
                     "initval=0",
        AUTHFAIL_TABLE: f"size=10;autoexpire={security.auth_failure_window_seconds};"
                        "updateexpire=0;initval=0",
        WITHDRAWN_TABLE: f"size=8;autoexpire={WITHDRAWN_SECONDS};dmqreplicate={replicate}",
        UNWRITTEN_TABLE: f"size=10;autoexpire={UNWRITTEN_SECONDS_MAX}",
    }


class NodeTables(Protocol):
    """A node's htables, as the KEMI script reaches them through KSR.htable."""

    def get(self, table: str, key: str) -> Any: ...

    def set_expiring(self, table: str, key: str, value: str, seconds: int) -> None: ...

    def increment(self, table: str, key: str) -> int: ...

    def set_expiry(self, table: str, key: str, seconds: int) -> None: ...

    def remove(self, table: str, key: str) -> None: ...


@dataclass(frozen=True)
class Ban:
    ip: str
    reason: str
    since: float
    expires_in: int  # seconds


class BanList:
    """The record of bans in Redis, for `omnicc status` and `omnicc unban` (synchronous
    client: Kamailio workers and the CLI). Enforcement is each node's own (EdgeGuard)."""

    def __init__(self, redis: Any, node: str = ""):
        self._redis = redis
        self._node = node

    def _record(self, reason: str) -> str:
        return json.dumps({"reason": reason, "since": round(time.time(), 3), "node": self._node})

    def is_banned(self, ip: str) -> bool:
        return bool(self._redis.exists(ban_key(ip)))

    def ban(self, ip: str, reason: str, seconds: int) -> None:
        self._redis.set(ban_key(ip), self._record(reason), ex=seconds)

    def unban(self, ip: str) -> bool:
        return bool(self._redis.delete(ban_key(ip)))

    def list(self) -> list[Ban]:
        bans = []
        for key in self._redis.scan_iter(match="{ip:*}:ban", count=1000):
            key = key.decode() if isinstance(key, bytes) else key
            raw = self._redis.get(key)
            ttl = self._redis.ttl(key)
            if raw is None:
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = {}
            ip = key[len("{ip:"):-len("}:ban")]
            bans.append(Ban(ip, str(record.get("reason", "?")), float(record.get("since", 0)),
                            max(int(ttl), 0)))
        return sorted(bans, key=lambda b: b.since)


class BanRecordError(Exception):
    """The ban is in force on this node but could not be recorded in Redis."""


class EdgeGuard:
    """Per-address screening of strangers on one Kamailio node: flood and authentication
    failure counters, and bans, in the node's htables; each new ban is also recorded in
    Redis so `omnicc status` lists it with its reason and expiry."""

    def __init__(self, tables: NodeTables, records: BanList, security: Any):
        self._tables = tables
        self._records = records
        self._security = security

    def is_banned(self, ip: str) -> bool:
        return self._tables.get(BANS_TABLE, ip) is not None

    def ban(self, ip: str, reason: str) -> None:
        """Ban now on this node (and, through DMQ, on the others); then record it. Raises
        BanRecordError when only the record failed."""
        seconds = self._security.ban_seconds
        self._tables.set_expiring(BANS_TABLE, ip, reason, seconds)
        try:
            self._records.ban(ip, reason, seconds)
        except Exception as exc:  # the ban stands; the caller logs the lost record
            raise BanRecordError(str(exc)) from exc

    def count_request(self, ip: str) -> bool:
        """Count one request; True if the source is now banned for flooding."""
        security = self._security
        return self._count(FLOOD_TABLE, ip, security.flood_requests,
                           security.flood_window_seconds, "flood")

    def count_auth_failure(self, ip: str) -> bool:
        """Count one failed authentication; True if the source is now banned."""
        security = self._security
        return self._count(AUTHFAIL_TABLE, ip, security.auth_failures,
                           security.auth_failure_window_seconds, "auth-failures")

    def _count(self, table: str, ip: str, limit: int, window: int, reason: str) -> bool:
        count = self._tables.increment(table, ip)
        if count == 1:
            # A new window. Kamailio 5.6 restarts a counter whose window has passed but
            # which its timer has not purged yet at 1 without a new expiry, so every
            # request would count 1 until the purge: the window is set here, explicitly.
            self._tables.set_expiry(table, ip, window)
        if count <= limit:
            return False
        self._tables.remove(table, ip)
        self.ban(ip, reason)
        return True

    def lift(self, ip: str) -> None:
        for table in EDGE_TABLES:
            self._tables.remove(table, ip)
