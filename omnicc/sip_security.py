"""The SIP edge's defences: scanner detection, method and size policy, and per-IP bans
kept in Redis so every Kamailio node shares them and `omnicc status` can list them.

Trusted peers never reach these checks: OMniLeads once banned its own Asterisk with an
anti-flood rule; omnicc exempts Asterisk nodes, trunks and the PBX by construction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The methods omnicc needs; anything else is answered 405.
ALLOWED_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
    "REFER", "NOTIFY",
})


def is_scanner(user_agent: str | None, patterns: Iterable[str]) -> bool:
    ua = (user_agent or "").lower()
    return any(p.lower() in ua for p in patterns if p)


def ban_key(ip: str) -> str:
    # {ip:...}: the ban and its counters share one Redis Cluster slot (one Lua script).
    return "{ip:" + ip + "}:ban"


def counter_key(ip: str, what: str) -> str:
    return "{ip:" + ip + "}:" + what


# Returns 1 if the source is banned (before or because of this request), else 0.
# KEYS: ban, counter. ARGV: window seconds, limit, ban seconds, ban record (JSON).
COUNT_AND_BAN_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1])) end
if n > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', tonumber(ARGV[3]))
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Ban:
    ip: str
    reason: str
    since: float
    expires_in: int  # seconds


class BanList:
    """Per-IP bans in Redis (synchronous client: Kamailio workers and the CLI)."""

    def __init__(self, redis: Any, node: str = ""):
        self._redis = redis
        self._node = node
        self._count = redis.register_script(COUNT_AND_BAN_LUA)

    def _record(self, reason: str) -> str:
        return json.dumps({"reason": reason, "since": round(time.time(), 3), "node": self._node})

    def is_banned(self, ip: str) -> bool:
        return bool(self._redis.exists(ban_key(ip)))

    def count(self, ip: str, what: str, *, limit: int, window: int, ban_seconds: int,
              reason: str) -> bool:
        """Count one event of kind `what` from ip; True if ip is (now) banned."""
        return bool(self._count(
            keys=[ban_key(ip), counter_key(ip, what)],
            args=[window, limit, ban_seconds, self._record(reason)],
        ))

    def ban(self, ip: str, reason: str, seconds: int) -> None:
        self._redis.set(ban_key(ip), self._record(reason), ex=seconds)

    def unban(self, ip: str) -> bool:
        removed = self._redis.delete(ban_key(ip), counter_key(ip, "flood"),
                                     counter_key(ip, "authfail"))
        return bool(removed)

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
