"""The config's queues as the ACD keeps them: QueueSettings (ms) from the YAML (seconds),
and the start-up push of queues, members (penalty, skill) and wrap-up overrides into Redis.

`queue_settings` is pure. `sync_queues` is idempotent: run at every FastAGI server start,
it makes the ACD's queues and members those of the config (members removed from the config
are removed from their queue; a queue removed from the config is left alone, since calls
may still wait in it, and logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from omnicc import keys
from omnicc.acd import AcdResult, QueueSettings, Strategy
from omnicc.config import OmniccConfig, Queue

log = logging.getLogger("omnicc.agi.queue_setup")

# A reservation holds for the ring timeout plus this margin: the Dial's own timeout ends
# the ring first, so the lease only runs out when the node holding the call died.
RESERVATION_MARGIN_MS = 5_000

_STRATEGIES = {
    "longest-idle": Strategy.LONGEST_IDLE,
    "fewest-calls": Strategy.FEWEST_CALLS,
    "round-robin": Strategy.ROUND_ROBIN_MEMORY,
    "round-robin-memory": Strategy.ROUND_ROBIN_MEMORY,
    "random": Strategy.RANDOM,
    "linear": Strategy.LINEAR,
    "ringall": Strategy.RINGALL,
    "skills-weighted": Strategy.SKILLS_WEIGHTED,
}


def queue_settings(queue: Queue) -> QueueSettings:
    return QueueSettings(
        strategy=_STRATEGIES[queue.strategy],
        wrapup_ms=queue.wrapup_seconds * 1000,
        reservation_lease_ms=queue.ring_timeout_seconds * 1000 + RESERVATION_MARGIN_MS,
        call_lease_ms=queue.call_lease_seconds * 1000,
        auto_pause_reason=queue.auto_pause_reason,
        service_level_ms=queue.service_level_seconds * 1000,
        max_waiting=queue.max_length,
        overflow_when_no_agents=queue.overflow_when_no_agents,
    )


class QueueConfigStore(Protocol):
    """What sync_queues needs of omnicc.acd.AcdStore."""

    async def configure_queue(self, tenant: str, queue: str,
                              settings: QueueSettings) -> AcdResult: ...

    async def add_member(self, tenant: str, queue: str, extension: str,
                         penalty: int = 0, *, skill: int = ...) -> AcdResult: ...

    async def remove_member(self, tenant: str, queue: str, extension: str) -> AcdResult: ...

    async def set_agent_wrapup(self, tenant: str, extension: str,
                               wrapup_ms: int | None) -> None: ...


@dataclass(frozen=True)
class SyncReport:
    queues: int
    members_added: int
    members_removed: int


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def sync_queues(store: QueueConfigStore, redis: Any, config: OmniccConfig) -> SyncReport:
    """Pushes every tenant's queues, members and agent wrap-up overrides into the ACD.
    `redis` (asyncio client) reads the members the ACD has now and the queues it knows."""
    queues = added = removed = 0
    for tenant in config.tenants:
        for agent in tenant.agents:
            await store.set_agent_wrapup(
                tenant.name, agent.extension,
                None if agent.wrapup_seconds is None else agent.wrapup_seconds * 1000)
        for queue in tenant.queues:
            result = await store.configure_queue(tenant.name, queue.name, queue_settings(queue))
            if not result.ok:
                raise RuntimeError(f"queue {tenant.name}/{queue.name}: {result.code}")
            queues += 1
            present = {_s(m) for m in await redis.hkeys(keys.queue_members(tenant.name,
                                                                           queue.name))}
            wanted = {m.agent: m for m in queue.members}
            for extension in sorted(present - set(wanted)):
                await store.remove_member(tenant.name, queue.name, extension)
                removed += 1
            for extension, member in wanted.items():
                await store.add_member(tenant.name, queue.name, extension, member.penalty,
                                       skill=member.skill)
                added += extension not in present
        known = {_s(q) for q in await redis.smembers(keys.tenant_queues(tenant.name))}
        for stale in sorted(known - {q.name for q in tenant.queues}):
            log.warning("queue %s/%s is in Redis but no longer in the config: left alone",
                        tenant.name, stale)
    return SyncReport(queues=queues, members_added=added, members_removed=removed)
