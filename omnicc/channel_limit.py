"""A trunk's channel limit, counted across every Asterisk node in Redis.

A carrier sells a trunk with N simultaneous channels; every Asterisk node sends calls over
it, so no node alone knows how many are up. Each channel in use is a member of one sorted
set per trunk, ``{t:<tenant>}:trunk:<trunk>:channels`` (omnicc/keys.py), scored with the end
of its lease in ms. Every operation is one Lua script, so two nodes acquiring the last
channel at once get one channel between them.

- acquire: drops expired leases, then adds the channel if fewer than `limit` are counted
  (limit 0: no limit, only counting). `force=True` adds it over the limit: emergency calls
  are never refused (omnicc.outbound.OutboundPlan.emergency), but they are counted, so the
  next ordinary call sees the trunk as full.
- renew / renew_many: pushes the lease end of channels still up. Asterisk holds the AGI
  session inside Dial() for the whole call, so renewal cannot come from it: each node
  renews all the channels it holds, periodically (every lease/3), in one call per trunk.
  A channel whose lease had lapsed is counted again (it is still up); renew says so.
- release: removes the channel. Idempotent (a ZREM): the trunk's leg, the calling
  channel's hang-up handler and outbound_result may each release the same channel
  (agi/handlers/outbound_call.py says who does when); a second release changes nothing.
- release_prefix: removes every channel whose id starts with a prefix (a node's name, as
  Asterisk uniqueids carry it) when a node restarts, rather than waiting for the leases.
- A node that crashes stops renewing: its channels leave the count when their leases end
  (lease_ms, 90 s by default). That is the bound on how long a dead node's calls keep
  blocking new ones.

Time: the scripts read Redis TIME, never a node's clock, so nodes with skewed clocks agree.
A `clock` (ms) passed to the store replaces it, for tests that move time by hand.
The set's key expires when its last lease ends, so a trunk that goes idle leaves nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from omnicc import keys

DEFAULT_LEASE_MS = 90_000
MIN_LEASE_MS = 1_000
MAX_LEASE_MS = 24 * 3600 * 1000
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Asterisk uniqueids ("omnicc-1-1700000000.42") or any id of the caller's: no spaces.
CHANNEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")

# Shared by every script: `now` from ARGV (tests) or Redis TIME; expired leases dropped.
_PRELUDE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function keep_until_last_lease()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
  end
end
"""

# ARGV: now, channel, limit (0: none), lease ms, force ('1'). -> {acquired, in use, lease end}
ACQUIRE_LUA = _PRELUDE + """
local channel, limit, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local held = redis.call('ZSCORE', KEYS[1], channel)
local count = redis.call('ZCARD', KEYS[1])
if not held and limit > 0 and count >= limit and ARGV[5] ~= '1' then
  return {0, count, 0}
end
redis.call('ZADD', KEYS[1], now + lease, channel)
if not held then count = count + 1 end
keep_until_last_lease()
return {1, count, now + lease}
"""

# ARGV: now, lease ms, channel... -> {in use, channels that had lost their lease...}
RENEW_LUA = _PRELUDE + """
local lease = tonumber(ARGV[2])
local lapsed = {}
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then table.insert(lapsed, ARGV[i]) end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
keep_until_last_lease()
local result = {redis.call('ZCARD', KEYS[1])}
for _, channel in ipairs(lapsed) do table.insert(result, channel) end
return result
"""

# ARGV: now, channel -> {removed, in use}
RELEASE_LUA = _PRELUDE + """
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
return {removed, redis.call('ZCARD', KEYS[1])}
"""

# ARGV: now, prefix -> {removed, in use}
RELEASE_PREFIX_LUA = _PRELUDE + """
local prefix, removed = ARGV[2], 0
for _, channel in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(channel, 1, #prefix) == prefix then
    removed = removed + redis.call('ZREM', KEYS[1], channel)
  end
end
return {removed, redis.call('ZCARD', KEYS[1])}
"""

# ARGV: now -> in use
IN_USE_LUA = _PRELUDE + """
return redis.call('ZCARD', KEYS[1])
"""

SCRIPTS = {"acquire": ACQUIRE_LUA, "renew": RENEW_LUA, "release": RELEASE_LUA,
           "release_prefix": RELEASE_PREFIX_LUA, "in_use": IN_USE_LUA}


@dataclass(frozen=True)
class ChannelGrant:
    acquired: bool
    in_use: int           # channels counted on the trunk after this step
    limit: int            # 0: no limit
    lease_until_ms: int   # 0 when refused
    forced: bool = False  # acquired over the limit (an emergency call)


@dataclass(frozen=True)
class Renewal:
    in_use: int
    lapsed: tuple[str, ...]  # channels whose lease had ended: counted again from now


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r}: lower-case letters, digits, '-' and '_'")
    return value


def _check_channel(value: object) -> str:
    if not isinstance(value, str) or not CHANNEL_ID_RE.fullmatch(value):
        raise ValueError(f"channel id {value!r}: 1 to 128 letters, digits and ._:@/+- "
                         "(an Asterisk uniqueid)")
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _ChannelLimitBase:
    def __init__(self, redis: Any, lease_ms: int = DEFAULT_LEASE_MS,
                 clock: Callable[[], int] | None = None):
        if not isinstance(lease_ms, int) or not MIN_LEASE_MS <= lease_ms <= MAX_LEASE_MS:
            raise ValueError(f"lease_ms {lease_ms!r}: {MIN_LEASE_MS} to {MAX_LEASE_MS}")
        self.lease_ms = lease_ms
        self._clock = clock
        self._scripts = {name: redis.register_script(source)
                         for name, source in SCRIPTS.items()}

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock()))

    def _key(self, tenant: str, trunk: str) -> list[str]:
        return [keys.trunk_channels(_check_name(tenant, "tenant"), _check_name(trunk, "trunk"))]

    @staticmethod
    def _limit(limit: object) -> int:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"channel limit {limit!r}: a whole number, 0 for no limit")
        return limit

    def _acquire_args(self, tenant: str, trunk: str, channel: str, limit: int,
                      force: bool) -> tuple[list[str], list[str]]:
        return self._key(tenant, trunk), [self._now(), _check_channel(channel),
                                          str(self._limit(limit)), str(self.lease_ms),
                                          "1" if force else "0"]

    @staticmethod
    def _grant(result: Sequence[Any], limit: int, force: bool) -> ChannelGrant:
        acquired, in_use, lease_until = (int(v) for v in result)
        return ChannelGrant(acquired=bool(acquired), in_use=in_use, limit=limit,
                            lease_until_ms=lease_until,
                            forced=bool(acquired) and force and limit > 0 and in_use > limit)

    def _renew_args(self, tenant: str, trunk: str,
                    channels: Iterable[str]) -> tuple[list[str], list[str]]:
        checked = [_check_channel(c) for c in channels]
        return self._key(tenant, trunk), [self._now(), str(self.lease_ms), *checked]

    @staticmethod
    def _renewal(result: Sequence[Any]) -> Renewal:
        return Renewal(in_use=int(result[0]), lapsed=tuple(_text(c) for c in result[1:]))

    def _prefix_args(self, tenant: str, trunk: str, prefix: str) -> tuple[list[str], list[str]]:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("release_prefix needs a non-empty prefix (a node name)")
        return self._key(tenant, trunk), [self._now(), prefix]


class ChannelLimits(_ChannelLimitBase):
    """Over a synchronous redis-py client."""

    def acquire(self, tenant: str, trunk: str, channel: str, limit: int,
                force: bool = False) -> ChannelGrant:
        keys_, args = self._acquire_args(tenant, trunk, channel, limit, force)
        return self._grant(self._scripts["acquire"](keys=keys_, args=args), limit, force)

    def renew_many(self, tenant: str, trunk: str, channels: Iterable[str]) -> Renewal:
        keys_, args = self._renew_args(tenant, trunk, channels)
        return self._renewal(self._scripts["renew"](keys=keys_, args=args))

    def renew(self, tenant: str, trunk: str, channel: str) -> bool:
        """True if the channel still held its lease (it does again either way)."""
        return not self.renew_many(tenant, trunk, [channel]).lapsed

    def release(self, tenant: str, trunk: str, channel: str) -> bool:
        removed, _ = self._scripts["release"](
            keys=self._key(tenant, trunk), args=[self._now(), _check_channel(channel)])
        return bool(int(removed))

    def release_prefix(self, tenant: str, trunk: str, prefix: str) -> int:
        keys_, args = self._prefix_args(tenant, trunk, prefix)
        removed, _ = self._scripts["release_prefix"](keys=keys_, args=args)
        return int(removed)

    def in_use(self, tenant: str, trunk: str) -> int:
        return int(self._scripts["in_use"](keys=self._key(tenant, trunk), args=[self._now()]))


class AsyncChannelLimits(_ChannelLimitBase):
    """The same over redis.asyncio, for the FastAGI server."""

    async def acquire(self, tenant: str, trunk: str, channel: str, limit: int,
                      force: bool = False) -> ChannelGrant:
        keys_, args = self._acquire_args(tenant, trunk, channel, limit, force)
        return self._grant(await self._scripts["acquire"](keys=keys_, args=args), limit, force)

    async def renew_many(self, tenant: str, trunk: str, channels: Iterable[str]) -> Renewal:
        keys_, args = self._renew_args(tenant, trunk, channels)
        return self._renewal(await self._scripts["renew"](keys=keys_, args=args))

    async def release(self, tenant: str, trunk: str, channel: str) -> bool:
        removed, _ = await self._scripts["release"](
            keys=self._key(tenant, trunk), args=[self._now(), _check_channel(channel)])
        return bool(int(removed))

    async def in_use(self, tenant: str, trunk: str) -> int:
        return int(await self._scripts["in_use"](keys=self._key(tenant, trunk),
                                                 args=[self._now()]))
