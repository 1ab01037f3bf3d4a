"""bench/acd_reservation.py at a tiny size against a real redis-server, so the benchmark
cannot rot: its checks pass, each phase measures what it says it does, the whole script
runs and writes its own section of the doc, and bad sizes are refused. No speed is asserted
(numbers belong in docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "acd_reservation.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("acd_reservation", BENCH_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["acd_reservation"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_params(bench: ModuleType, **changes: object) -> object:
    settings = dict(ready_samples=6, enqueue_samples=6, warmup=2, throughput_seconds=0.4,
                    clients=3, waiting_per_queue=1,
                    strategies=(*bench.DEFAULT_STRATEGIES, bench.Strategy.RINGALL))
    settings.update(changes)
    return bench.Params(**settings)


def test_a_tiny_size_passes_every_check_and_measures_each_phase(
        bench: ModuleType, acd_redis: RedisServer) -> None:  # noqa: F811
    params = tiny_params(bench)
    queues = len(params.strategies)  # a queue of each strategy, ringall included
    result = asyncio.run(bench.run_size(acd_redis.url, bench.Size(2 * queues, queues), params,
                                        redis_pid=acd_redis.process.pid, progress=False))
    assert result.problems == []
    for samples in (result.unpause_reply, result.unpause_offer, result.call_end_reply,
                    result.call_end_offer, result.enqueue_reply):
        assert len(samples) == 6 and all(value > 0 for value in samples)
    # SLOWLOG gave a server-side time for each counted sample's reserving script only.
    assert {name: len(times) for name, times in result.script_us.items()} == {
        "unpause": 6, "hangup": 6, "enqueue": 6}
    assert result.cycles > 0 and result.reservations_per_second > 0
    assert result.redis_cpu_seconds > 0 and result.evalsha_us_per_call > 0
    # READY phase (warm-up included), enqueue phase, throughput cycles: all answered once,
    # as the queues' counters confirmed (reconcile).
    assert result.answers == 8 + 8 + result.cycles


def test_a_failed_check_is_reported_not_hidden(
        bench: ModuleType, acd_redis: RedisServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "OFFER_TIMEOUT_SECONDS", 0.3)  # how long a call waits in vain
    # A real fault: agents whose phones unregistered after the set-up cannot become READY,
    # so no sample gets a reservation; the run must end and say so, not hang or pass.
    class Unregistering(bench.SizeRun):
        async def set_up(self) -> None:
            await super().set_up()
            for agent in self.memberships:
                await self.admin.delete(f"{{t:{bench.TENANT}}}:agent:{agent}:contact")

    async def run() -> object:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(acd_redis.url)
        admin = aioredis.Redis.from_url(acd_redis.url, decode_responses=True)
        try:
            return await Unregistering(client, admin, bench.Size(4, 2),
                                       tiny_params(bench, ready_samples=2, enqueue_samples=2),
                                       None, False).run()
        finally:
            await client.aclose()
            await admin.aclose()

    result = asyncio.run(run())
    assert any("unpause of" in p and "not_registered" in p for p in result.problems)
    assert any("no agent took" in p for p in result.problems)
    assert not result.meets_target()
    assert bench.verdict([result])[0] is None  # 4/2 is not a size the target names


def test_the_verdict_judges_the_issue_sizes_against_5_ms(bench: ModuleType) -> None:
    def result_at(size: str, p99_ms: float) -> object:
        r = bench.SizeResult(bench.Size.parse(size))
        r.unpause_offer = [1.0] * 98 + [p99_ms] * 2  # the 99th of 100 is the p99
        r.call_end_offer = [1.0] * 100
        r.enqueue_reply = [0.5] * 100
        return r

    met, text = bench.verdict([result_at("1000/100", 4.9), result_at("10000/1000", 4.0)])
    assert met is True and text.startswith("PASS")
    met, text = bench.verdict([result_at("1000/100", 4.9), result_at("10000/1000", 5.2)])
    assert met is False and text.startswith("FAIL") and "5.20 ms" in text
    assert "10,000 agents / 1,000 queues" in text
    met, text = bench.verdict([result_at("1000/100", 1.0)])
    assert met is True and "not run: 10000/1000" in text
    # A size the issue does not name never decides the verdict.
    assert bench.verdict([result_at("100/10", 50.0)])[0] is None


def test_the_script_runs_end_to_end_and_writes_only_its_doc_section(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "benchmarks.md"
    other = "<!-- other: begin -->\nsomeone else's numbers\n<!-- other: end -->\n"
    doc.write_text("# omnicc benchmarks\n\n" + other)
    status = bench.main(["--sizes", "8/4", "--ready-samples", "3", "--enqueue-samples", "3",
                         "--warmup", "1", "--throughput-seconds", "0.3", "--clients", "2",
                         "--write-doc", "--doc", str(doc)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "8 agents / 4 queues" in printed and "PROBLEM" not in printed
    text = doc.read_text()
    assert other in text
    assert text.count(bench.DOC_BEGIN) == 1 and text.count(bench.DOC_END) == 1
    section = text[text.index(bench.DOC_BEGIN):]
    assert "| 8 agents / 4 queues |" in section and "niceness" in section
    assert "neither was run" in section  # the target's sizes were not run here


@pytest.mark.parametrize("size", ["10x", "1000", "5/10", "10/0", "a/b"])
def test_a_bad_size_is_refused_with_a_clear_error(
        bench: ModuleType, size: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        bench.parse_args(["--sizes", size])
    assert refused.value.code == 2
    assert f"size {size}" in capsys.readouterr().err
