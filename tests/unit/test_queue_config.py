"""Queues in the config: tenants[].queues, the queue:NAME destination, agents' wrap-up
override, the mapping to omnicc.acd.QueueSettings and the start-up push into the ACD."""

from __future__ import annotations

import asyncio

import pytest

from agi.handlers.queue_setup import RESERVATION_MARGIN_MS, queue_settings, sync_queues
from omnicc import keys
from omnicc.acd import AcdResult, QueueSettings, Strategy
from omnicc.acd_lua import DEFAULT_SKILL, MAX_SKILL
from omnicc.config import ConfigError, Destination, load_config, parse_config
from omnicc.routing import decide_inbound

FILE = "omnicc.yaml"

BASE = """\
tenants:
  - name: acme
    domain: acme.test
    agents:
      - {extension: "1001", password: "password-1001"}
      - {extension: "1002", password: "password-1002", wrapup_seconds: 3}
    inbound_routes:
      - {did: "5550100", destination: "queue:sales"}
      - {did: "5550101", destination: "agent:1001"}
    queues:
      - name: sales
        strategy: round-robin
        members:
          - {agent: "1001"}
          - {agent: "1002", penalty: 2}
        ring_timeout_seconds: 15
        max_wait_seconds: 120
        failover: "queue:backup"
        max_length: 10
        overflow: "agent:1002"
        wrapup_seconds: 7
        service_level_seconds: 30
        auto_pause_reason: missed
      - name: backup
        members: [{agent: "1001"}]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def line_of(text: str, marker: str) -> int:
    found = [n for n, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(found) == 1, found
    return found[0]


def test_queues_load_with_their_settings() -> None:
    tenant = parse_config(BASE).tenants[0]
    sales = tenant.queue("sales")
    assert sales is not None
    assert sales.strategy == "round-robin"
    assert [(m.agent, m.penalty) for m in sales.members] == [("1001", 0), ("1002", 2)]
    assert sales.failover == Destination(kind="queue", target="backup")
    assert sales.overflow_destination == Destination(kind="agent", target="1002")
    backup = tenant.queue("backup")
    assert backup is not None
    assert backup.failover == Destination(kind="hangup")
    assert backup.overflow_destination == backup.failover  # overflow defaults to failover
    assert tenant.agents[1].wrapup_seconds == 3 and tenant.agents[0].wrapup_seconds is None


def test_queue_settings_are_in_milliseconds() -> None:
    sales = parse_config(BASE).tenants[0].queue("sales")
    assert sales is not None
    assert queue_settings(sales) == QueueSettings(
        strategy=Strategy.ROUND_ROBIN_MEMORY, wrapup_ms=7000,
        reservation_lease_ms=15_000 + RESERVATION_MARGIN_MS, call_lease_ms=30_000,
        auto_pause_reason="missed", service_level_ms=30_000, max_waiting=10,
        overflow_when_no_agents=True)


@pytest.mark.parametrize("strategy", ["longest-idle", "fewest-calls", "round-robin",
                                      "random", "linear", "ringall", "skills-weighted"])
def test_every_strategy_maps_to_the_acd(strategy: str) -> None:
    text = BASE.replace("strategy: round-robin", f"strategy: {strategy}")
    sales = parse_config(text).tenants[0].queue("sales")
    assert sales is not None
    assert queue_settings(sales).strategy in set(Strategy)


def test_members_have_a_skill_of_50_unless_given() -> None:
    text = BASE.replace('{agent: "1002", penalty: 2}', '{agent: "1002", penalty: 2, skill: 90}')
    sales = parse_config(text).tenants[0].queue("sales")
    assert sales is not None
    assert [(m.agent, m.skill) for m in sales.members] == [("1001", 50), ("1002", 90)]
    assert sales.members[0].skill == DEFAULT_SKILL


def test_the_config_accepts_the_skill_levels_the_acd_accepts() -> None:
    for skill in (0, MAX_SKILL):
        text = BASE.replace("penalty: 2}", f"penalty: 2, skill: {skill}}}")
        assert parse_config(text).tenants[0].queues[0].members[1].skill == skill
    for skill in (-1, MAX_SKILL + 1):
        text = BASE.replace("penalty: 2}", f"penalty: 2, skill: {skill}}}")
        assert any(p.startswith(f"{FILE}:{line_of(text, 'skill:')}: "
                                "tenants[0].queues[0].members[1].skill:")
                   for p in problems(text)), skill


def test_an_inbound_route_to_a_queue_is_decided_as_a_queue() -> None:
    decision = decide_inbound(parse_config(BASE), "acme", "5550100")
    assert (decision.destination, decision.queue, decision.agent) == ("queue", "sales", "")


def test_a_route_to_an_unknown_queue_names_the_key_and_line() -> None:
    text = BASE.replace('"queue:sales"', '"queue:nosuch"')
    assert problems(text) == [
        f"{FILE}:{line_of(text, 'queue:nosuch')}: tenants[0].inbound_routes[0].destination: "
        "inbound route 5550100 goes to queue nosuch, which is not among this tenant's queues"]


def test_a_member_who_is_not_an_agent_names_the_key_and_line() -> None:
    text = BASE.replace('{agent: "1002", penalty: 2}', '{agent: "1009", penalty: 2}')
    assert problems(text) == [
        f"{FILE}:{line_of(text, '1009')}: tenants[0].queues[0].members[1].agent: "
        "queue sales member 1009 is not among this tenant's agents"]


def test_bad_queue_values_name_their_keys() -> None:
    text = (BASE.replace("strategy: round-robin", "strategy: fastest")
            .replace("ring_timeout_seconds: 15", "ring_timeout_seconds: 0")
            .replace("penalty: 2", "penalty: 501")
            .replace('failover: "queue:backup"', 'failover: "queue:sales"')
            .replace("name: backup", "name: sales"))
    found = problems(text)
    assert any(p.startswith(f"{FILE}:{line_of(text, 'fastest')}: tenants[0].queues[0].strategy:")
               for p in found), found
    assert any(p.startswith(f"{FILE}:{line_of(text, 'ring_timeout')}: "
                            "tenants[0].queues[0].ring_timeout_seconds:") for p in found), found
    assert any(".members[1].penalty:" in p for p in found), found


def test_duplicates_and_self_failover_are_refused() -> None:
    text = (BASE.replace('failover: "queue:backup"', 'failover: "queue:sales"')
            .replace("name: backup", "name: sales"))
    found = problems(text)
    assert f"{FILE}:{line_of(text, 'failover:')}: tenants[0].queues[0].failover: " \
           "queue sales cannot failover to itself" in found
    assert any("tenants[0].queues[1].name: duplicate queue name 'sales'" in p for p in found)
    dup = BASE.replace('{agent: "1002", penalty: 2}', '{agent: "1001", penalty: 2}')
    assert any("queues[0].members[1].agent: duplicate member '1001'" in p
               for p in problems(dup))


def test_unknown_queue_keys_and_bad_destinations_are_errors() -> None:
    assert any("queues[1].colour: unknown key" in p
               for p in problems(BASE.replace("name: backup", "name: backup\n        colour: red")))
    assert any("queue:" in p and "needs a queue name" in p
               for p in problems(BASE.replace('"queue:sales"', '"queue:"')))


def test_the_example_has_a_demo_queue_beside_its_agent_dids() -> None:
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "omnicc.yaml")
    tenant = config.tenants[0]
    assert decide_inbound(config, tenant.name, "5550100").agent == "1001"
    assert decide_inbound(config, tenant.name, "5550101").agent == "1002"
    assert decide_inbound(config, tenant.name, "5550102").queue == "support"
    (queue,) = tenant.queues
    assert (queue.strategy, queue.wrapup_seconds, queue.max_length) == ("longest-idle", 10, 50)


# ---------------------------------------------------------------------------- sync


class FakeAcd:
    """What sync_queues calls, recorded; members kept as the ACD's members hash."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, int]] = {}
        self.skills: dict[str, dict[str, int]] = {}
        self.settings: dict[str, QueueSettings] = {}
        self.wrapups: dict[str, int | None] = {}
        self.calls: list[tuple[str, ...]] = []

    async def configure_queue(self, tenant: str, queue: str,
                              settings: QueueSettings) -> AcdResult:
        self.settings[queue] = settings
        self.members.setdefault(queue, {})
        return AcdResult("ok", "")

    async def add_member(self, tenant: str, queue: str, extension: str,
                         penalty: int = 0, *, skill: int = DEFAULT_SKILL) -> AcdResult:
        self.members[queue][extension] = penalty
        self.skills.setdefault(queue, {})[extension] = skill
        self.calls.append(("add", queue, extension))
        return AcdResult("ok", "")

    async def remove_member(self, tenant: str, queue: str, extension: str) -> AcdResult:
        del self.members[queue][extension]
        self.calls.append(("remove", queue, extension))
        return AcdResult("ok", "")

    async def set_agent_wrapup(self, tenant: str, extension: str,
                               wrapup_ms: int | None) -> None:
        self.wrapups[extension] = wrapup_ms

    # the redis reads
    async def hkeys(self, key: str) -> list[bytes]:
        queue = key.split(":queue:")[1].removesuffix(":members")
        return [m.encode() for m in self.members.get(queue, {})]

    async def smembers(self, key: str) -> set[bytes]:
        assert key == keys.tenant_queues("acme")
        return {q.encode() for q in self.settings} | {b"retired"}


def test_sync_pushes_queues_members_and_wrapups_and_is_idempotent() -> None:
    acd = FakeAcd()
    config = parse_config(BASE)
    first = asyncio.run(sync_queues(acd, acd, config))
    assert (first.queues, first.members_added, first.members_removed) == (2, 3, 0)
    assert acd.members == {"sales": {"1001": 0, "1002": 2}, "backup": {"1001": 0}}
    assert acd.settings["sales"] == queue_settings(config.tenants[0].queues[0])
    assert acd.wrapups == {"1001": None, "1002": 3000}
    assert acd.skills["sales"] == {"1001": DEFAULT_SKILL, "1002": DEFAULT_SKILL}
    again = asyncio.run(sync_queues(acd, acd, config))
    assert (again.members_added, again.members_removed) == (0, 0)
    assert acd.members == {"sales": {"1001": 0, "1002": 2}, "backup": {"1001": 0}}


def test_sync_pushes_a_changed_skill() -> None:
    acd = FakeAcd()
    asyncio.run(sync_queues(acd, acd, parse_config(BASE)))
    skilled = BASE.replace('{agent: "1002", penalty: 2}', '{agent: "1002", penalty: 2, skill: 95}')
    report = asyncio.run(sync_queues(acd, acd, parse_config(skilled)))
    assert (report.members_added, report.members_removed) == (0, 0)
    assert acd.skills["sales"] == {"1001": DEFAULT_SKILL, "1002": 95}


def test_sync_removes_members_no_longer_configured() -> None:
    acd = FakeAcd()
    asyncio.run(sync_queues(acd, acd, parse_config(BASE)))
    fewer = BASE.replace('          - {agent: "1002", penalty: 2}\n', "")
    report = asyncio.run(sync_queues(acd, acd, parse_config(fewer)))
    assert report.members_removed == 1
    assert acd.members["sales"] == {"1001": 0}
    assert ("remove", "sales", "1002") in acd.calls


def test_the_server_retries_the_push_until_redis_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from redis.exceptions import ConnectionError as RedisConnectionError

    import agi.app

    acd = FakeAcd()
    failures = [RedisConnectionError("down"), RedisConnectionError("still down")]
    real_hkeys = acd.hkeys

    async def flaky_hkeys(key: str) -> list[bytes]:
        if failures:
            raise failures.pop(0)
        return await real_hkeys(key)

    monkeypatch.setattr(acd, "hkeys", flaky_hkeys)
    monkeypatch.setattr(agi.app, "QUEUE_SYNC_RETRY_SECONDS", 0.01)
    asyncio.run(agi.app.push_queues(acd, acd, parse_config(BASE),  # type: ignore[arg-type]
                                    logging.getLogger("test")))
    assert failures == []
    assert acd.members["sales"] == {"1001": 0, "1002": 2}


def test_queues_that_fail_over_to_each_other_are_refused() -> None:
    text = BASE.replace("      - name: backup\n",
                        "      - name: backup\n        overflow: \"queue:sales\"\n")
    found = problems(text)
    assert f"{FILE}:{line_of(text, 'name: sales')}: tenants[0].queues[0].name: the failover " \
           "and overflow destinations of queue sales lead back to it through other queues" \
        in found, found
    assert any(p.startswith(f"{FILE}:{line_of(text, 'name: backup')}: tenants[0].queues[1].name")
               for p in found), found
