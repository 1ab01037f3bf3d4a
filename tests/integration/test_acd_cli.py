"""The supervisor's commands over a real redis-server: `omnicc queue stats|show` and
`omnicc agent show`, run as the real command line against a config whose Redis is the
test's own (the ACD state is made by omnicc.acd.AcdStore, as the FastAGI server would).

Without a test clock: the CLI settles what is due with Redis TIME, so the waits here are
real (a few hundred ms of wrap-up)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from omnicc.acd import AcdStore, QueueSettings, Strategy
from omnicc.keys import agent_hash

from .acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)
from .conftest import SERVICES_TEMPLATE, free_ports, make_stack_dir, omnicc_cli, write_config

pytestmark = pytest.mark.integration

T = "acme"

TEMPLATE = SERVICES_TEMPLATE + """\
tenants:
  - name: acme
    domain: {domain}
    agents:
      - {{extension: "1001", password: "it-pass-1001"}}
      - {{extension: "1002", password: "it-pass-1002"}}
      - {{extension: "1003", password: "it-pass-1003"}}
    queues:
      - name: sales
        strategy: skills-weighted
        service_level_seconds: 10
        members: [{{agent: "1001", skill: 80}}, {{agent: "1002"}}, {{agent: "1003", penalty: 1}}]
      - name: support
        members: [{{agent: "1003"}}]
      - name: later
  - name: globex
    domain: globex.{domain}
    agents:
      - {{extension: "2001", password: "it-pass-2001"}}
"""


@pytest.fixture(scope="module")
def cli_dir(acd_redis: RedisServer) -> Iterator[Path]:  # noqa: F811
    directory = make_stack_dir("omnicc-acd-cli-")
    write_config(directory, "acd-cli", TEMPLATE, redis=acd_redis.port)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def cli(directory: Path, *args: str) -> tuple[int, str, str]:
    result = omnicc_cli(directory, *args, timeout=60)
    return result.returncode, result.stdout, result.stderr


async def _acd_state(url: str) -> None:
    """sales: 1001 talking, 1002 in a short wrap-up, 1003 paused; one call answered after
    a 0 s wait, one abandoned, one waiting. support: 1003's queue, nothing else. The
    queue `later` is in the config but was never pushed to the ACD."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    acd = AcdStore(client, "it-node")
    try:
        # Leases long enough that nothing expires while the module runs.
        leases = {"reservation_lease_ms": 600_000, "call_lease_ms": 600_000}
        await acd.configure_queue(T, "sales", QueueSettings(
            strategy=Strategy.SKILLS_WEIGHTED, wrapup_ms=400, service_level_ms=10_000,
            **leases))
        await acd.configure_queue(T, "support", QueueSettings(**leases))
        for ext, skill in (("1001", 80), ("1002", 50)):
            await acd.add_member(T, "sales", ext, 0, skill=skill)
        await acd.add_member(T, "sales", "1003", 1)
        await acd.add_member(T, "support", "1003", 0)
        for ext in ("1001", "1002", "1003"):
            await acd.register(T, ext, f"sip:{ext}@127.0.0.1", 600)
        await acd.login(T, "1003")
        await acd.pause(T, "1003", "training")
        await acd.login(T, "1002")
        [offer] = (await acd.enqueue(T, "c1", "sales", caller="+15550001")).offers
        assert offer.agent == "1002"
        assert (await acd.answer(T, "c1", "1002")).ok
        assert (await acd.hangup(T, "c1", "caller")).ok  # 1002: WRAPUP for 400 ms
        await acd.enqueue(T, "c2", "sales", caller="+15550002")
        await acd.abandon(T, "c2")
        await acd.login(T, "1001")
        [offer] = (await acd.enqueue(T, "c3", "sales", caller="+15550003")).offers
        assert offer.agent == "1001" and (await acd.answer(T, "c3", "1001")).ok
        result = await acd.enqueue(T, "c4", "sales", caller="+15550004", did="5550100",
                                   priority=2)
        assert result.state == "WAITING"  # 1002 is still in wrap-up
    finally:
        await acd.close()
        await client.aclose()


@pytest.fixture(scope="module")
def acd_state(acd_redis: RedisServer) -> None:  # noqa: F811
    acd_redis.client().flushdb()
    asyncio.run(_acd_state(acd_redis.url))


def test_agent_show_settles_a_wrapup_that_is_over(cli_dir: Path, acd_state: None,
                                                  acd_redis: RedisServer) -> None:  # noqa: F811
    time.sleep(0.5)  # 1002's wrap-up (400 ms) is over; no ACD operation has run since
    assert acd_redis.client().hget(agent_hash(T, "1002"), "state") == "WRAPUP"
    code, out, err = cli(cli_dir, "agent", "show", "1002")
    assert code == 0, err
    # Settled: the wrap-up ended, and the agent took the call that was waiting.
    assert out.startswith("agent 1002 of tenant acme: enabled, RESERVED; call c4;"), out
    assert "phone registered" in out and "queues sales" in out
    code, out, _ = cli(cli_dir, "agent", "show", "1003")
    assert "PAUSED (training)" in out and "queues sales, support" in out


def test_queue_stats_table_and_json(cli_dir: Path, acd_state: None) -> None:
    time.sleep(0.5)
    code, out, err = cli(cli_dir, "queue", "stats", "sales")
    assert code == 0, err
    header, row, *notes = out.splitlines()
    assert header.split()[:3] == ["QUEUE", "WAITING", "LONGEST"]
    # c4 went to 1002 when the CLI settled the wrap-up (here or in the test before).
    # Service level: 2 answered within 10 s, of 2 answered and 1 abandoned.
    assert row.split() == ["sales", "0", "-", "0", "1", "1", "0", "1", "0", "2", "1",
                           "66.7%", "0s"], out
    assert "SERVICE LEVEL: calls answered within 10s" in notes[0]

    code, out, err = cli(cli_dir, "queue", "stats", "--json")
    assert code == 1  # `later` is not in the ACD: said on stderr, the others shown
    assert "queue later of tenant acme is not in the ACD yet" in err
    data = json.loads(out)
    assert data["tenant"] == T and [q["queue"] for q in data["queues"]] == ["sales", "support"]
    sales = data["queues"][0]
    assert (sales["calls_offered"], sales["calls_answered"], sales["calls_abandoned"],
            sales["agents_on_call"], sales["agents_ringing"], sales["agents_paused"],
            sales["service_level_percent"], sales["service_level_seconds"],
            sales["strategy"]) == (4, 2, 1, 1, 1, 1, pytest.approx(200 / 3), 10,
                                   "skills-weighted")
    assert sales["average_speed_of_answer_seconds"] < 1
    support = data["queues"][1]
    assert (support["agents_paused"], support["calls_offered"],
            support["service_level_percent"]) == (1, 0, None)


def test_queue_show_lists_members_and_waiting_calls(cli_dir: Path, acd_state: None) -> None:
    time.sleep(0.5)  # 1002's wrap-up is over (when this test runs alone)
    code, out, err = cli(cli_dir, "queue", "show", "sales", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [(m["extension"], m["penalty"], m["skill"]) for m in data["members"]] == [
        ("1001", 0, 80), ("1002", 0, 50), ("1003", 1, 50)]
    assert data["members"][2]["state"] == "PAUSED" and data["members"][2]["reason"] == "training"
    assert data["stats"]["queue"] == "sales"
    code, out, err = cli(cli_dir, "queue", "show", "sales")
    assert code == 0, err
    assert out.startswith("queue sales: strategy skills-weighted")
    assert "members (3):" in out and "training" in out and "waiting calls (0):" in out


def test_queue_show_lists_a_waiting_call(cli_dir: Path, acd_state: None,
                                         acd_redis: RedisServer) -> None:  # noqa: F811
    async def enqueue() -> None:
        client = aioredis.Redis.from_url(acd_redis.url, decode_responses=True)
        acd = AcdStore(client, "it-node")
        assert (await acd.enqueue(T, "s1", "support", caller="+15559999", priority=3)).ok
        await acd.close()
        await client.aclose()

    asyncio.run(enqueue())  # support's only member is paused: the call waits
    code, out, err = cli(cli_dir, "queue", "show", "support")
    assert code == 0, err
    assert "waiting calls (1):" in out
    position, call, _, priority, caller, did = out.splitlines()[-1].split()
    assert (position, call, priority, caller, did) == ("1", "s1", "3", "+15559999", "-")
    code, out, err = cli(cli_dir, "queue", "stats", "support")
    assert out.splitlines()[1].split()[1] == "1"  # one waiting


@pytest.mark.parametrize(("args", "code", "message"), [
    (("queue", "stats", "nosuch"), 2,
     "omnicc queue stats: no queue named 'nosuch' in tenant acme (queues: sales, support, later)"),
    (("queue", "show", "sales", "--tenant", "nosuch"), 2,
     "omnicc queue show: no tenant named 'nosuch' (tenants: acme, globex)"),
    (("queue", "stats", "--tenant", "globex"), 2,
     "omnicc queue stats: tenant globex has no queues"),
    (("queue", "stats", "later"), 1,
     "omnicc queue stats: queue later of tenant acme is not in the ACD yet"),
    (("queue", "show"), 2, "the following arguments are required: QUEUE"),
    (("queue", "stats", "Bad Name"), 2, "no queue named 'Bad Name'"),
])
def test_bad_queue_commands_say_why_and_fail(cli_dir: Path, acd_state: None,
                                             args: tuple[str, ...], code: int,
                                             message: str) -> None:
    got, out, err = cli(cli_dir, *args)
    assert got == code and message in err, (got, out, err)
    assert out == ""


def test_queue_stats_without_redis_says_so(cli_dir: Path) -> None:
    text = (cli_dir / "omnicc.yaml").read_text()
    other = cli_dir / "no-redis"
    other.mkdir(exist_ok=True)
    port = free_ports(1)[0]  # nothing listens there
    (other / "omnicc.yaml").write_text(re.sub(r"redis:    \{port: \d+\}",
                                              f"redis:    {{port: {port}}}", text))
    code, out, err = cli(other, "queue", "stats")
    assert code == 1 and "Redis is not reachable" in err
