"""The ACD's clock on a FastAGI server: every `interval` seconds (``--acd-tick``, 1 s by
default) the tick script runs for each tenant, so what time alone changes — a wrap-up that
is over, a reservation or call lease that ran out — happens on time even when no other ACD
operation runs: an agent whose wrap-up ended becomes READY and takes a waiting call within
one interval.

Several FastAGI servers tick the same tenants at once. That is safe: a tick is one atomic
script that settles only what is due at its start (omnicc/acd_lua.py), so a change due once
is made once, by whichever tick (or other script) runs first; the others find nothing.

`ConnectedCallRenewer` is the server's other periodic task: every third of the shortest
call lease it renews the leases of the CONNECTED calls its node holds, so that when the
node dies its calls end (and their agents come back) once their lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from redis.exceptions import RedisError

from omnicc.acd import AcdResult
from omnicc.acd_lua import SETTLE_BATCH

DEFAULT_TICK_SECONDS = 1.0
# A tick settles at most SETTLE_BATCH of each kind; when a batch was full, tick again at
# once, up to this many times, rather than leave the rest for the next interval.
MAX_ROUNDS = 20
_SETTLED = ("calls_failed_over", "connected_calls_ended", "reservations_expired",
            "wrapups_ended")


class TickStore(Protocol):
    """What the ticker needs of omnicc.acd.AcdStore."""

    async def tick(self, tenant: str) -> AcdResult: ...


class RenewStore(Protocol):
    """What the renewer needs of omnicc.acd.AcdStore."""

    async def renew_connected_calls(self, tenant: str) -> AcdResult: ...


def settled_count(result: AcdResult) -> int:
    return sum(int(result.extra.get(name, "0")) for name in _SETTLED)


def batch_was_full(result: AcdResult) -> bool:
    return any(int(result.extra.get(name, "0")) >= SETTLE_BATCH for name in _SETTLED)


class AcdTicker:
    def __init__(self, store: TickStore, tenants: Sequence[str],
                 interval: float = DEFAULT_TICK_SECONDS, *,
                 logger: logging.Logger | None = None) -> None:
        if interval <= 0:
            raise ValueError("the tick interval must be more than 0 s")
        self._store = store
        self._tenants = tuple(tenants)
        self.interval = interval
        self._log = logger or logging.getLogger("omnicc.agi.acd_tick")
        self.ticks = 0  # rounds run, for tests and the log

    async def tick_all(self) -> int:
        """One tick of every tenant (more rounds while a batch was full); how many
        changes were settled."""
        settled = 0
        for tenant in self._tenants:
            for _ in range(MAX_ROUNDS):
                result = await self._store.tick(tenant)
                self.ticks += 1
                settled += settled_count(result)
                if not batch_was_full(result):
                    break
        return settled

    async def run(self) -> None:
        """Ticks until cancelled. A Redis outage is logged once and ridden out: the next
        tick after it settles everything that fell due meanwhile, at the times it did."""
        await _every(self.interval, self.tick_all, "ACD tick", self._log)


class ConnectedCallRenewer:
    """Renews the leases of the CONNECTED calls this server's node holds, for every
    tenant, every `interval` seconds (a third of the shortest call lease)."""

    def __init__(self, store: RenewStore, tenants: Sequence[str], interval: float, *,
                 logger: logging.Logger | None = None) -> None:
        if interval <= 0:
            raise ValueError("the renewal interval must be more than 0 s")
        self._store = store
        self._tenants = tuple(tenants)
        self.interval = interval
        self._log = logger or logging.getLogger("omnicc.agi.acd_tick")

    async def renew_all(self) -> int:
        """Renews every tenant's connected calls of this node; how many."""
        renewed = 0
        for tenant in self._tenants:
            result = await self._store.renew_connected_calls(tenant)
            renewed += int(result.extra.get("renewed", "0"))
        return renewed

    async def run(self) -> None:
        """Renews until cancelled; a Redis outage is logged once. An outage longer than
        the lease ends this node's calls: they cannot be vouched for meanwhile."""
        await _every(self.interval, self.renew_all, "renewal of connected calls", self._log)


def renewal_interval(call_lease_seconds: Sequence[int], default_lease: int = 30) -> float:
    """A third of the shortest call lease of the server's queues (the config's
    call_lease_seconds; `default_lease` when it has no queues)."""
    return min(call_lease_seconds, default=default_lease) / 3


async def _every(interval: float, action: Callable[[], Awaitable[int]], what: str,
                 log: logging.Logger) -> None:
    failing = False
    while True:
        try:
            await action()
        except (RedisError, OSError) as exc:
            _stop_if_cancelled()
            if not failing:
                log.warning("%s failed (%s); retrying every %.1f s", what, exc, interval)
            failing = True
        else:
            if failing:
                log.info("%s works again", what)
            failing = False
        _stop_if_cancelled()
        await asyncio.sleep(interval)


def _stop_if_cancelled() -> None:
    """redis-py (8.1) can swallow the cancellation of a task whose command is in flight:
    the command returns (or fails) as if nothing happened, and the task would tick on for
    ever. A cancellation asked for is honoured here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
