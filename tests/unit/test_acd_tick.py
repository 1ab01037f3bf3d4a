"""The FastAGI server's ACD clock (agi/acd_tick.py) against a fake store: every tenant
ticked, more rounds while a batch was full, a Redis outage ridden out and logged once;
and the server's --acd-tick option."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agi.acd_tick import (
    MAX_ROUNDS,
    AcdTicker,
    ConnectedCallRenewer,
    batch_was_full,
    renewal_interval,
    settled_count,
)
from omnicc.acd import AcdResult
from omnicc.acd_lua import SETTLE_BATCH


def tick_result(failed_over: int = 0, expired: int = 0, wrapups: int = 0) -> AcdResult:
    return AcdResult("ok", "", extra={"calls_failed_over": str(failed_over),
                                      "reservations_expired": str(expired),
                                      "wrapups_ended": str(wrapups)})


class FakeStore:
    def __init__(self, results: dict[str, list[AcdResult | Exception]]) -> None:
        self.results = results
        self.ticked: list[str] = []

    async def tick(self, tenant: str) -> AcdResult:
        self.ticked.append(tenant)
        queue = self.results.get(tenant, [])
        result = queue.pop(0) if queue else tick_result()
        if isinstance(result, Exception):
            raise result
        return result


def test_counts_and_full_batches() -> None:
    assert settled_count(tick_result(1, 2, 3)) == 6
    assert settled_count(AcdResult("ok", "", extra={"connected_calls_ended": "4"})) == 4
    assert not batch_was_full(tick_result(SETTLE_BATCH - 1, 0, 0))
    assert batch_was_full(tick_result(0, 0, SETTLE_BATCH))


def test_every_tenant_is_ticked_and_a_full_batch_is_ticked_again_at_once() -> None:
    store = FakeStore({"acme": [tick_result(wrapups=SETTLE_BATCH), tick_result(wrapups=7)],
                       "globex": [tick_result(expired=2)]})
    ticker = AcdTicker(store, ["acme", "globex"], 1.0)
    assert asyncio.run(ticker.tick_all()) == SETTLE_BATCH + 7 + 2
    assert store.ticked == ["acme", "acme", "globex"]


def test_a_backlog_is_worked_off_in_bounded_rounds() -> None:
    store = FakeStore({"acme": [tick_result(failed_over=SETTLE_BATCH)] * (MAX_ROUNDS + 5)})
    asyncio.run(AcdTicker(store, ["acme"], 1.0).tick_all())
    assert store.ticked == ["acme"] * MAX_ROUNDS  # the rest waits for the next interval


def test_a_redis_outage_is_logged_once_and_ticking_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    outage = RedisConnectionError("connection refused")
    store = FakeStore({"acme": [outage, outage, outage, tick_result(wrapups=1)]})
    ticker = AcdTicker(store, ["acme"], 0.01)

    async def run_a_while() -> None:
        task = asyncio.create_task(ticker.run())
        while len(store.ticked) < 6:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="omnicc.agi.acd_tick"):
        asyncio.run(run_a_while())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("ACD tick failed" in m for m in messages) == 1
    assert sum("works again" in m for m in messages) == 1


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        AcdTicker(FakeStore({}), ["acme"], 0)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_acd_tick_option_is_refused(value: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from agi.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "omnicc.yaml", "--redis", "redis://127.0.0.1:1/0",
              "--acd-tick", value])
    assert exit_info.value.code == 2
    assert "--acd-tick" in capsys.readouterr().err


class SwallowingStore:
    """A tick that swallows its task's cancellation, as redis-py 8.1 can."""

    def __init__(self) -> None:
        self.inside = asyncio.Event()
        self.swallow = True

    async def tick(self, tenant: str) -> AcdResult:
        self.inside.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not self.swallow:
                raise  # (only so that a failing test ends)
        self.inside.clear()
        return tick_result()


def test_a_cancellation_swallowed_by_the_redis_client_still_stops_the_ticker() -> None:
    async def scenario() -> None:
        store = SwallowingStore()
        task = asyncio.create_task(AcdTicker(store, ["acme"], 0.001).run())
        await store.inside.wait()
        task.cancel()  # once, while a tick is in flight
        done, _ = await asyncio.wait({task}, timeout=2)
        if not done:
            store.swallow = False
            task.cancel()
        assert task in done and task.cancelled()

    asyncio.run(scenario())


class RenewingStore:
    def __init__(self, renewed: dict[str, int], failures: int = 0) -> None:
        self.renewed = renewed
        self.failures = failures
        self.calls: list[str] = []

    async def renew_connected_calls(self, tenant: str) -> AcdResult:
        self.calls.append(tenant)
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("connection refused")
        return AcdResult("ok", "", extra={"renewed": str(self.renewed.get(tenant, 0))})


def test_the_renewer_renews_every_tenants_connected_calls() -> None:
    store = RenewingStore({"acme": 3, "globex": 1})
    renewer = ConnectedCallRenewer(store, ["acme", "globex"], 10)
    assert asyncio.run(renewer.renew_all()) == 4
    assert store.calls == ["acme", "globex"]


def test_the_renewer_rides_out_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    store = RenewingStore({"acme": 1}, failures=2)
    renewer = ConnectedCallRenewer(store, ["acme"], 0.01)

    async def run_a_while() -> None:
        task = asyncio.create_task(renewer.run())
        while len(store.calls) < 4:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="omnicc.agi.acd_tick"):
        asyncio.run(run_a_while())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("renewal of connected calls failed" in m for m in messages) == 1
    assert sum("works again" in m for m in messages) == 1


def test_renewals_come_every_third_of_the_shortest_call_lease() -> None:
    assert renewal_interval([30, 9, 60]) == 3
    assert renewal_interval([]) == 10  # no queues: a third of the default lease
    with pytest.raises(ValueError, match="interval"):
        ConnectedCallRenewer(RenewingStore({}), ["acme"], 0)
