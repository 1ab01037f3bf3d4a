"""The ACD's transitions and refusals, one example each, against a real redis-server.

Time is a test clock passed to the scripts (AcdStore(clock=...)), so leases and wrap-ups
end exactly when a test says; one test checks that without it the scripts use Redis TIME.
After every scenario the whole tenant state is checked for consistency (acd_checks).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from omnicc import keys
from omnicc.acd import AcdStore, AcdSync, NoAnswerOutcome, QueueSettings, Strategy
from omnicc.acd_lua import PRELUDE
from omnicc.agent_state import (
    AgentEvent,
    AgentState,
    CallState,
    Refusal,
    next_state,
)
from tests.integration.acd_checks import EventReplay, read_all_events, redis_problems
from tests.integration.acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

T = "acme"
START_MS = 1_700_000_000_000


@dataclass
class Acd:
    """One scenario's world: a test clock and a store per node over one Redis."""

    redis: aioredis.Redis
    now_ms: int = START_MS
    stores: dict[str, AcdStore] = field(default_factory=dict)

    def node(self, name: str = "n1") -> AcdStore:
        if name not in self.stores:
            self.stores[name] = AcdStore(self.redis, name, clock=lambda: self.now_ms)
        return self.stores[name]

    @property
    def acd(self) -> AcdStore:
        return self.node("n1")

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    async def queue(self, name: str, **settings: object) -> None:
        result = await self.acd.configure_queue(T, name, QueueSettings(**settings))  # type: ignore[arg-type]
        assert result.ok

    async def agent(self, ext: str, *queues: str, login: bool = True,
                    penalty: int = 0) -> None:
        await self.acd.register(T, ext, f"sip:{ext}@10.0.0.1", 3600)
        for q in queues:
            assert (await self.acd.add_member(T, q, ext, penalty)).ok
        if login:
            assert (await self.acd.login(T, ext)).ok

    async def state(self, ext: str) -> AgentState:
        return (await self.acd.agent_status(T, ext)).state

    async def call_state(self, call: str) -> CallState | None:
        status = await self.acd.call_status(T, call)
        return None if status is None else status.state

    async def events(self, name: str | None = None) -> list[dict[str, str]]:
        rows = await self.redis.xrange(keys.events_stream(T), count=100_000)
        events = [dict(fields) | {"id": entry_id} for entry_id, fields in rows]
        return [e for e in events if name is None or e["event"] == name]


Scenario = Callable[[Acd], Awaitable[None]]


@pytest.fixture
def run(acd_redis: RedisServer) -> Iterator[Callable[[Scenario], None]]:  # noqa: F811
    """Runs a scenario on an empty Redis, then checks the state and the event stream."""

    def runner(scenario: Scenario) -> None:
        sync = acd_redis.client()
        sync.flushdb()

        async def main() -> None:
            client = aioredis.Redis.from_url(acd_redis.url, decode_responses=True)
            world = Acd(client)
            try:
                await scenario(world)
            finally:
                for store in world.stores.values():
                    await store.close()
                await client.aclose()

        asyncio.run(main())
        assert redis_problems(sync, T) == []
        EventReplay().feed(read_all_events(sync, T))

    yield runner


# ---------------------------------------------------------------------------- plumbing


def test_lua_key_names_are_those_of_omnicc_keys(acd_redis: RedisServer) -> None:  # noqa: F811
    script = PRELUDE + """
return {k_agent('1001'), k_contact('1001'), k_queue('sales'), k_waiting('sales'),
        k_ready('sales'), k_call('c-1'), k_ringing('c-1'), k_offers('n1'), K_AGENTS,
        K_RESERVATION_LEASES, K_WRAPUP_ENDS, K_CALL_LEASES}"""
    got = acd_redis.client().eval(script, 1, keys.events_stream(T), T, "n1", "")
    assert got == [
        keys.agent_hash(T, "1001"), keys.agent_contact(T, "1001"), keys.queue_settings(T, "sales"),
        keys.queue_waiting(T, "sales"), keys.queue_ready(T, "sales"), keys.acd_call(T, "c-1"),
        keys.call_ringing(T, "c-1"), keys.node_offers(T, "n1"), keys.tenant_agents(T),
        keys.reservation_leases(T), keys.wrapup_ends(T), keys.call_leases(T),
    ]
    assert all(k.startswith("{t:acme}:") for k in got)


def test_without_a_clock_the_scripts_use_redis_time(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        store = AcdStore(w.redis, "n1")  # production: no clock
        try:
            assert (await store.configure_queue(T, "sales", QueueSettings())).ok
            seconds, micros = await w.redis.time()
            [event] = await w.events("queue_configured")
            assert abs(float(event["ts"]) - (seconds + micros / 1e6)) < 5
            assert abs(float(event["ts"]) - time.time()) < 5
        finally:
            await store.close()

    run(scenario)


# ---------------------------------------------------------------------------- registration


def test_only_a_registered_agent_can_be_ready(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        assert (await w.acd.add_member(T, "sales", "1001")).ok
        refused = await w.acd.login(T, "1001")
        assert (refused.code, refused.state) == (Refusal.NOT_REGISTERED, "OFFLINE")
        await w.acd.register(T, "1001", "sip:1001@x", 60)
        assert (await w.acd.login(T, "1001")).state == "READY"
        assert (await w.acd.pause(T, "1001", "lunch")).ok
        await w.redis.delete(keys.agent_contact(T, "1001"))  # the registration expired
        assert (await w.acd.unpause(T, "1001")).code == Refusal.NOT_REGISTERED
        assert await w.state("1001") == AgentState.PAUSED

    run(scenario)


def test_matching_skips_an_agent_whose_registration_expired(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", strategy=Strategy.LINEAR)
        await w.agent("1001", "sales")
        await w.agent("1002", "sales")
        await w.redis.delete(keys.agent_contact(T, "1001"))  # TTL ran out, no REGISTER since
        result = await w.acd.enqueue(T, "c1", "sales")
        assert [o.agent for o in result.offers] == ["1002"]  # linear would pick 1001 first
        assert await w.state("1001") == AgentState.OFFLINE
        [dropped] = await w.events("agent_logout")
        assert (dropped["agent"], dropped["reason"]) == ("1001", "unregistered")

    run(scenario)


def test_unregister_takes_a_ringing_agent_offline_and_requeues_its_call(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        assert (await w.acd.unregister(T, "1001")).state == "OFFLINE"
        assert await w.call_state("c1") == CallState.WAITING
        assert (await w.acd.answer(T, "c1", "1001")).code == Refusal.NOT_RESERVED
        assert not await w.redis.exists(keys.agent_contact(T, "1001"))

    run(scenario)


# ---------------------------------------------------------------------------- the agent table


def _setups() -> dict[AgentState, list[str]]:
    return {
        AgentState.OFFLINE: [],
        AgentState.READY: ["login"],
        AgentState.PAUSED: ["login", "pause"],
        AgentState.RESERVED: ["login", "enqueue"],
        AgentState.ONCALL: ["login", "enqueue", "answer"],
        AgentState.WRAPUP: ["login", "enqueue", "answer", "hangup"],
    }


REQUESTED = [AgentEvent.LOGIN, AgentEvent.LOGOUT, AgentEvent.FORCE_LOGOUT, AgentEvent.PAUSE,
             AgentEvent.UNPAUSE, AgentEvent.UNREGISTER]


@pytest.mark.parametrize("state", list(AgentState))
@pytest.mark.parametrize("event", REQUESTED)
def test_every_agent_request_in_every_state_follows_next_state(
        run: Callable[[Scenario], None], state: AgentState, event: AgentEvent) -> None:
    """The scripts and the pure table agree: state after, or refusal code."""

    async def scenario(w: Acd) -> None:
        await w.queue("sales", wrapup_ms=60_000)
        await w.agent("1001", "sales", login=False)
        acd = w.acd
        for step in _setups()[state]:
            result = await {
                "login": lambda: acd.login(T, "1001"),
                "pause": lambda: acd.pause(T, "1001", "break"),
                "enqueue": lambda: acd.enqueue(T, "c1", "sales"),
                "answer": lambda: acd.answer(T, "c1", "1001"),
                "hangup": lambda: acd.hangup(T, "c1"),
            }[step]()
            assert result.ok, (step, result)
        assert await w.state("1001") == state
        result = await {
            AgentEvent.LOGIN: lambda: acd.login(T, "1001"),
            AgentEvent.LOGOUT: lambda: acd.logout(T, "1001"),
            AgentEvent.FORCE_LOGOUT: lambda: acd.logout(T, "1001", force=True),
            AgentEvent.PAUSE: lambda: acd.pause(T, "1001", "meeting"),
            AgentEvent.UNPAUSE: lambda: acd.unpause(T, "1001"),
            AgentEvent.UNREGISTER: lambda: acd.unregister(T, "1001"),
        }[event]()
        expected = next_state(state, event, registered=event is not AgentEvent.UNREGISTER)
        assert result.code == (expected.refusal or "ok")
        assert await w.state("1001") == expected.state

    run(scenario)


# ---------------------------------------------------------------------------- matching


def test_enqueue_reserves_a_ready_member_at_once(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", reservation_lease_ms=25_000)
        await w.agent("1001", "sales")
        result = await w.acd.enqueue(T, "c1", "sales", caller="+3491555", did="900100")
        assert result.state == "RESERVED" and result.extra["position"] == "0"
        [offer] = result.offers
        assert (offer.call, offer.agent, offer.queue, offer.node) == ("c1", "1001", "sales", "n1")
        assert offer.lease_until_ms == START_MS + 25_000
        [reserved] = await w.events("call_reserved")
        assert reserved["caller"] == "+3491555" and reserved["did"] == "900100"
        assert reserved["ts"] == f"{START_MS / 1000:.3f}" and reserved["tenant"] == T

    run(scenario)


def test_a_ready_agent_takes_the_best_call_across_its_queues(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        await w.queue("support")
        await w.agent("1001", "sales", "support", login=False)
        await w.acd.enqueue(T, "old-sales", "sales")
        w.advance(1000)
        await w.acd.enqueue(T, "support-1", "support")
        w.advance(1000)
        await w.acd.enqueue(T, "vip", "support", priority=5)
        w.advance(1000)
        status = await w.acd.call_status(T, "vip")
        assert status is not None and status.position == 1
        got = []
        for _ in range(3):
            result = await w.acd.login(T, "1001")
            got.append(result.offers[0].call)
            await w.acd.logout(T, "1001")  # the call goes back; take the next by answering
            await w.acd.login(T, "1001")
            await w.acd.answer(T, got[-1], "1001")
            await w.acd.hangup(T, got[-1])
            await w.acd.logout(T, "1001")
        assert got == ["vip", "old-sales", "support-1"]  # priority, then longest wait

    run(scenario)


def test_strategies_choose_members_as_documented(run: Callable[[Scenario], None]) -> None:
    async def take(w: Acd, queue: str, call: str) -> str:
        result = await w.acd.enqueue(T, call, queue)
        [offer] = result.offers
        assert (await w.acd.answer(T, call, offer.agent)).ok
        w.advance(10)
        assert (await w.acd.hangup(T, call)).ok  # wrap-up 0: READY again at once
        return offer.agent

    async def scenario(w: Acd) -> None:
        members = ["1001", "1002", "1003"]
        for strategy in Strategy:
            if strategy is Strategy.RINGALL:
                continue
            q = strategy.replace("-", "_")
            await w.queue(q, strategy=strategy)
            for ext in members:
                await w.agent(ext, q, login=False)
        for ext in members:
            await w.acd.login(T, ext)
            w.advance(5)
        picks = {s: [await take(w, s.replace("-", "_"), f"{s}-{i}") for i in range(6)]
                 for s in (Strategy.LINEAR, Strategy.ROUND_ROBIN_MEMORY)}
        assert picks[Strategy.LINEAR] == ["1001"] * 6
        assert picks[Strategy.ROUND_ROBIN_MEMORY] == members * 2
        # longest-idle: whoever's last call ended longest ago (1001 and 1002 took calls above,
        # 1003's last call ended last... so order follows last_ended).
        idle = [await take(w, "longest_idle", f"li-{i}") for i in range(3)]
        assert len(set(idle)) == 3
        assert [await take(w, "longest_idle", f"li2-{i}") for i in range(3)] == idle
        # fewest-calls: counts per queue, so everyone starts even and stays even.
        fewest = Counter([await take(w, "fewest_calls", f"fc-{i}") for i in range(9)])
        assert fewest == Counter({ext: 3 for ext in members})
        spread = Counter([await take(w, "random", f"r-{i}") for i in range(60)])
        assert set(spread) == set(members) and min(spread.values()) >= 5

    run(scenario)


def test_a_lower_penalty_member_is_always_offered_first(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", strategy=Strategy.LONGEST_IDLE)
        await w.agent("1002", "sales", penalty=5)
        w.advance(1000)
        await w.agent("1001", "sales", penalty=1)  # less idle, but a lower penalty
        [first] = (await w.acd.enqueue(T, "c1", "sales")).offers
        [second] = (await w.acd.enqueue(T, "c2", "sales")).offers
        assert (first.agent, second.agent) == ("1001", "1002")

    run(scenario)


def test_skills_weighted_offers_the_highest_skill_then_the_longest_idle(
        run: Callable[[Scenario], None]) -> None:
    async def take(w: Acd, call: str) -> str:
        [offer] = (await w.acd.enqueue(T, call, "vip")).offers
        assert (await w.acd.answer(T, call, offer.agent)).ok
        w.advance(10)
        assert (await w.acd.hangup(T, call)).ok  # wrap-up 0: READY again at once
        return offer.agent

    async def scenario(w: Acd) -> None:
        await w.queue("vip", strategy=Strategy.SKILLS_WEIGHTED)
        for ext, skill in (("1001", 40), ("1002", 90), ("1003", 90), ("1004", 100)):
            await w.acd.register(T, ext, f"sip:{ext}@10.0.0.1", 3600)
            penalty = 1 if ext == "1004" else 0  # the most skilled, but a worse penalty
            assert (await w.acd.add_member(T, "vip", ext, penalty, skill=skill)).ok
            assert (await w.acd.login(T, ext)).ok
            w.advance(1)  # all within one second: the exact ms breaks the tie
        # 1002 and 1003 share the best skill of the best penalty: the longer idle first,
        # and as their calls end they take turns; 1001 (skill 40) never gets one.
        assert [await take(w, f"c{i}") for i in range(4)] == ["1002", "1003"] * 2
        # Only when both are busy does the lower skill get a call; the worse penalty last.
        await w.acd.pause(T, "1002", "break")
        await w.acd.enqueue(T, "busy1", "vip")
        [second] = (await w.acd.enqueue(T, "busy2", "vip")).offers
        [third] = (await w.acd.enqueue(T, "busy3", "vip")).offers
        assert (second.agent, third.agent) == ("1001", "1004")
        # A new skill takes effect at once, also for a READY member.
        await w.agent("1005", login=True)
        assert (await w.acd.add_member(T, "vip", "1005", 0, skill=10)).ok
        assert (await w.acd.add_member(T, "vip", "1005", 0, skill=95)).ok
        await w.acd.unpause(T, "1002")  # READY again, but 1005 is now more skilled
        [offer] = (await w.acd.enqueue(T, "after", "vip")).offers
        assert offer.agent == "1005"
        [added] = [e for e in await w.events("queue_member_added")
                   if e["agent"] == "1005" and e["skill"] == "95"]
        assert added["penalty"] == "0"
        assert (await w.acd.remove_member(T, "vip", "1005")).ok
        assert await w.redis.hget(keys.queue_skills(T, "vip"), "1005") is None
        with pytest.raises(ValueError, match="skill"):
            await w.acd.add_member(T, "vip", "1001", 0, skill=101)

    run(scenario)


def test_skills_weighted_without_skills_is_longest_idle(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("vip", strategy=Strategy.SKILLS_WEIGHTED)
        await w.agent("1002", "vip")
        w.advance(2_000)
        await w.agent("1001", "vip")
        [first] = (await w.acd.enqueue(T, "c1", "vip")).offers
        assert first.agent == "1002"  # both at the default skill 50

    run(scenario)


def test_ringall_reserves_every_ready_member_and_the_first_answer_wins(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("help", strategy=Strategy.RINGALL)
        for ext in ("1001", "1002", "1003"):
            await w.agent(ext, "help")
        await w.acd.pause(T, "1003", "coffee")
        result = await w.acd.enqueue(T, "c1", "help")
        assert sorted(o.agent for o in result.offers) == ["1001", "1002"]
        # Both answer at the same moment, through two nodes.
        answers = await asyncio.gather(w.node("n1").answer(T, "c1", "1001"),
                                       w.node("n2").answer(T, "c1", "1002"))
        assert sorted(a.code for a in answers) == ["not_reserved", "ok"]
        winner = "1001" if answers[0].ok else "1002"
        loser = "1002" if winner == "1001" else "1001"
        assert await w.state(winner) == AgentState.ONCALL
        assert await w.state(loser) == AgentState.READY  # at once, not at the lease's end
        released = [e for e in await w.events("call_released") if e["agent"] == loser]
        assert released[0]["reason"] == "answered_elsewhere"

    run(scenario)


# ---------------------------------------------------------------------------- answers and leases


def test_double_answer_and_answer_after_the_lease_are_refused(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", reservation_lease_ms=20_000, call_lease_ms=60_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        assert (await w.acd.answer(T, "c1", "1001")).ok
        again = await w.acd.answer(T, "c1", "1001")
        assert (again.code, again.state) == (Refusal.NOT_RESERVED, "CONNECTED")
        assert (await w.acd.answer(T, "nope", "1001")).code == Refusal.UNKNOWN_CALL

        await w.agent("1002", "sales")
        [offer] = (await w.acd.enqueue(T, "c2", "sales")).offers
        w.advance(20_000)  # the lease's last ms: still good
        assert (await w.acd.call_status(T, "c2")).state == CallState.RESERVED  # type: ignore[union-attr]
        w.advance(1)
        # The lease ended: 1002 is READY again and, the only one, reserved for c2 anew.
        late = await w.acd.answer(T, "c2", "1002", lease_until_ms=offer.lease_until_ms)
        assert late.code == Refusal.NOT_RESERVED
        late = await w.acd.no_answer(T, "c2", "1002", lease_until_ms=offer.lease_until_ms)
        assert late.code == Refusal.NOT_RESERVED
        [expired] = [e for e in await w.events("call_released")
                     if e["reason"] == "reservation_expired"]
        assert float(expired["ts"]) == (START_MS + 20_000) / 1000  # when the lease ended
        status = await w.acd.agent_status(T, "1002")
        assert status.state == AgentState.RESERVED and status.lease_until_ms == w.now_ms + 20_000
        assert (await w.acd.answer(T, "c2", "1002", lease_until_ms=status.lease_until_ms)).ok

        # With a second agent READY, the expired reservation goes elsewhere; the late
        # answer (no token) is refused as well.
        await w.agent("1003", "sales")
        await w.agent("1004", "sales")
        [offer] = (await w.acd.enqueue(T, "c3", "sales")).offers
        other = "1003" if offer.agent == "1004" else "1004"
        w.advance(20_001)
        await w.acd.tick(T)
        assert (await w.acd.call_status(T, "c3")).ringing == (other,)  # type: ignore[union-attr]
        assert (await w.acd.answer(T, "c3", offer.agent)).code == Refusal.NOT_RESERVED

    run(scenario)


def test_no_answer_puts_the_call_back_in_its_place_and_offers_it_to_others_first(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", strategy=Strategy.LINEAR)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        w.advance(1000)
        await w.acd.enqueue(T, "c2", "sales")
        await w.agent("1002", "sales")  # takes c2
        result = await w.acd.no_answer(T, "c1", "1001", NoAnswerOutcome.REJECTED)
        assert result.ok
        # c1 waits again ahead of nothing (c2 is taken): 1001, READY again, gets it back.
        assert (await w.acd.call_status(T, "c1")).ringing == ("1001",)  # type: ignore[union-attr]
        [released] = await w.events("call_released")
        assert released["reason"] == "rejected" and released["agent_state"] == "READY"
        assert (await w.acd.queue_stats(T, "sales")).rings_unanswered == 1

        # Now with a second READY agent: the call goes to 1003, not back to 1001.
        await w.agent("1003", "sales")
        await w.acd.no_answer(T, "c1", "1001")
        assert (await w.acd.call_status(T, "c1")).ringing == ("1003",)  # type: ignore[union-attr]
        assert await w.state("1001") == AgentState.READY

    run(scenario)


def test_a_returned_call_keeps_its_original_place(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", call_lease_ms=600_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "first", "sales")
        for i in range(3):
            w.advance(1000)
            await w.acd.enqueue(T, f"later-{i}", "sales")
        await w.acd.pause(T, "1001", "phone rang while pausing")
        status = await w.acd.call_status(T, "first")
        assert status is not None and (status.state, status.position) == (CallState.WAITING, 1)

    run(scenario)


def test_auto_pause_on_no_answer(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", auto_pause_reason="missed a call")
        await w.agent("1001", "sales")
        await w.agent("1002", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        ringing = (await w.acd.call_status(T, "c1")).ringing[0]  # type: ignore[union-attr]
        assert (await w.acd.no_answer(T, "c1", ringing)).state == "PAUSED"
        status = await w.acd.agent_status(T, ringing)
        assert (status.state, status.reason) == (AgentState.PAUSED, "missed a call")
        other = "1002" if ringing == "1001" else "1001"
        assert (await w.acd.call_status(T, "c1")).ringing == (other,)  # type: ignore[union-attr]
        # The dialplan may ask for its own reason.
        assert (await w.acd.no_answer(T, "c1", other, NoAnswerOutcome.BUSY, "busy")).ok
        assert (await w.acd.agent_status(T, other)).reason == "busy"

    run(scenario)


# ---------------------------------------------------------------------------- wrap-up


def test_hangup_starts_the_wrapup_of_the_calls_queue_or_the_agents_own(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", wrapup_ms=30_000)
        await w.queue("support", wrapup_ms=5_000)
        await w.agent("1001", "sales", "support")
        # A call from support: support's wrap-up, though the agent is also in sales.
        await w.acd.enqueue(T, "c1", "support")
        await w.acd.answer(T, "c1", "1001")
        for _ in range(3):  # a long talk: its node renews the call's lease meanwhile
            w.advance(20_000)
            assert (await w.acd.renew_connected_calls(T)).extra["renewed"] == "1"
        assert (await w.acd.hangup(T, "c1", "agent")).ok
        status = await w.acd.agent_status(T, "1001")
        assert (status.state, status.wrapup_until_ms) == (AgentState.WRAPUP, w.now_ms + 5_000)
        [ended] = await w.events("call_ended")
        assert (ended["talk_ms"], ended["reason"]) == ("60000", "agent")
        w.advance(5_000)
        assert (await w.acd.agent_status(T, "1001")).effective_state == AgentState.READY
        # The agent's own override wins over the queue's.
        await w.acd.set_agent_wrapup(T, "1001", 1_000)
        await w.acd.enqueue(T, "c2", "sales")
        await w.acd.answer(T, "c2", "1001")
        await w.acd.hangup(T, "c2")
        assert (await w.acd.agent_status(T, "1001")).wrapup_until_ms == w.now_ms + 1_000

    run(scenario)


def test_a_call_arriving_during_wrapup_waits_until_its_exact_end(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", wrapup_ms=10_000, call_lease_ms=600_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        await w.acd.answer(T, "c1", "1001")
        await w.acd.hangup(T, "c1")
        wrapup_end = w.now_ms + 10_000
        w.advance(9_999)
        assert (await w.acd.enqueue(T, "c2", "sales")).state == "WAITING"
        w.advance(1)
        # No timer ran; the next script (here a renew of another call) ends the wrap-up.
        assert (await w.acd.renew_call_lease(T, "c2")).state == "RESERVED"
        [done] = await w.events("agent_wrapup_done")
        assert float(done["ts"]) == wrapup_end / 1000
        [_, reserved] = await w.events("call_reserved")
        assert reserved["call"] == "c2" and float(reserved["ts"]) == wrapup_end / 1000

    run(scenario)


def test_tick_ends_due_wrapups_when_nothing_else_runs(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", wrapup_ms=2_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        await w.acd.answer(T, "c1", "1001")
        await w.acd.hangup(T, "c1")
        w.advance(2_000)
        result = await w.acd.tick(T)
        assert result.extra["wrapups_ended"] == "1"
        assert await w.state("1001") == AgentState.READY

    run(scenario)


# ---------------------------------------------------------------------------- pause and logout


def test_pause_during_a_reservation_withdraws_it(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        assert (await w.acd.pause(T, "1001", "break")).state == "PAUSED"
        assert (await w.acd.answer(T, "c1", "1001")).code == Refusal.NOT_RESERVED
        assert await w.call_state("c1") == CallState.WAITING
        [released] = await w.events("call_released")
        assert released["reason"] == "agent_paused"
        # Unpause: the agent takes it again.
        assert (await w.acd.unpause(T, "1001")).state == "RESERVED"

    run(scenario)


def test_pause_and_logout_are_refused_on_a_call_but_a_forced_logout_ends_it(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        await w.acd.answer(T, "c1", "1001")
        assert (await w.acd.pause(T, "1001", "x")).code == Refusal.ON_CALL
        assert (await w.acd.logout(T, "1001")).code == Refusal.ON_CALL
        w.advance(3_000)
        assert (await w.acd.logout(T, "1001", force=True)).state == "OFFLINE"
        assert await w.call_state("c1") == CallState.ENDED
        [ended] = await w.events("call_ended")
        assert (ended["reason"], ended["talk_ms"]) == ("agent_forced_logout", "3000")
        assert (await w.acd.hangup(T, "c1")).code == Refusal.CALL_OVER

    run(scenario)


def test_logout_during_a_reservation_gives_the_call_to_another_agent(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", strategy=Strategy.LINEAR)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        await w.agent("1002", "sales")
        assert (await w.acd.logout(T, "1001")).state == "OFFLINE"
        assert (await w.acd.call_status(T, "c1")).ringing == ("1002",)  # type: ignore[union-attr]

    run(scenario)


def test_a_call_racing_wrapup_pause_or_logout_never_reaches_that_agent(
        run: Callable[[Scenario], None]) -> None:
    """Each race is run many times with both orders in flight at once."""

    async def scenario(w: Acd) -> None:
        await w.queue("sales", wrapup_ms=60_000, call_lease_ms=600_000)
        await w.agent("1001", "sales")
        for i in range(30):
            # wrap-up: the hangup and a new call at the same moment, from two nodes.
            await w.acd.enqueue(T, f"talk-{i}", "sales")
            await w.acd.answer(T, f"talk-{i}", "1001")
            await asyncio.gather(w.node("n1").hangup(T, f"talk-{i}"),
                                 w.node("n2").enqueue(T, f"racer-w-{i}", "sales"))
            assert await w.call_state(f"racer-w-{i}") == CallState.WAITING
            await w.acd.fail_over(T, f"racer-w-{i}", "test")
            await w.acd.logout(T, "1001")
            await w.acd.login(T, "1001")
            # pause: the call either never reaches the agent or is withdrawn by the pause.
            await asyncio.gather(w.node("n1").pause(T, "1001", "break"),
                                 w.node("n2").enqueue(T, f"racer-p-{i}", "sales"))
            assert await w.call_state(f"racer-p-{i}") == CallState.WAITING
            assert (await w.acd.answer(T, f"racer-p-{i}", "1001")).code == Refusal.NOT_RESERVED
            await w.acd.fail_over(T, f"racer-p-{i}", "test")
            await w.acd.unpause(T, "1001")
            # logout: likewise.
            await asyncio.gather(w.node("n1").logout(T, "1001"),
                                 w.node("n2").enqueue(T, f"racer-l-{i}", "sales"))
            assert await w.call_state(f"racer-l-{i}") == CallState.WAITING
            await w.acd.fail_over(T, f"racer-l-{i}", "test")
            await w.acd.login(T, "1001")

    run(scenario)


# ---------------------------------------------------------------------------- abandon, leases


def test_abandon_while_waiting_and_while_ringing(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", service_level_ms=20_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "ringing", "sales")
        await w.acd.enqueue(T, "waiting", "sales")
        w.advance(25_000)
        assert (await w.acd.abandon(T, "waiting")).state == "ABANDONED"
        assert (await w.acd.queue_stats(T, "sales")).calls_waiting == 0
        assert (await w.acd.abandon(T, "ringing")).ok
        assert await w.state("1001") == AgentState.READY  # released at once
        assert (await w.acd.abandon(T, "ringing")).code == Refusal.CALL_OVER
        [released] = await w.events("call_released")
        assert released["reason"] == "caller_abandoned"
        stats = await w.acd.queue_stats(T, "sales")
        assert (stats.calls_abandoned, stats.calls_abandoned_within_service_level) == (2, 0)
        # A connected call ends by hangup, not abandon.
        await w.acd.enqueue(T, "talking", "sales")
        await w.acd.answer(T, "talking", "1001")
        assert (await w.acd.abandon(T, "talking")).code == Refusal.CONNECTED

    run(scenario)


def test_a_waiting_call_lives_while_its_lease_is_renewed(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", call_lease_ms=10_000)
        await w.acd.enqueue(T, "kept", "sales")
        await w.acd.enqueue(T, "orphan", "sales")
        for _ in range(5):
            w.advance(6_000)
            result = await w.acd.renew_call_lease(T, "kept")
            if result.code == "call_over":
                break
        assert await w.call_state("kept") == CallState.WAITING
        assert await w.call_state("orphan") == CallState.FAILED_OVER
        [failed] = await w.events("call_failed_over")
        assert failed["reason"] == "call_lease_expired"
        assert float(failed["ts"]) == (START_MS + 10_000) / 1000
        assert (await w.acd.renew_call_lease(T, "orphan")).code == Refusal.CALL_OVER

    run(scenario)


def test_adopt_moves_a_call_to_another_node_and_keeps_its_place(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", call_lease_ms=10_000, reservation_lease_ms=10_000)
        n1, n2 = w.node("n1"), w.node("n2")
        await n1.enqueue(T, "c1", "sales")
        w.advance(1_000)
        await n1.enqueue(T, "c2", "sales")
        w.advance(8_000)
        adopted = await n2.adopt(T, "c1")  # n1's FastAGI server died
        assert adopted.ok and adopted.state == "WAITING"
        assert (await n1.renew_call_lease(T, "c1")).code == Refusal.NOT_HOLDER
        w.advance(5_000)  # c2's lease (n1's) runs out; c1's (n2's) holds
        await n2.tick(T)
        status = await n2.call_status(T, "c1")
        assert status is not None and (status.node, status.position) == ("n2", 1)
        assert await w.call_state("c2") == CallState.FAILED_OVER
        # A reserved call adopted: the new node gets the reservation to dial.
        await w.agent("1001", "sales")
        offers = (await w.node("n3").adopt(T, "c1")).offers
        assert [(o.agent, o.node) for o in offers] == [("1001", "n3")]

    run(scenario)


def test_a_connected_call_whose_node_stops_renewing_ends_at_its_lease_end(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", wrapup_ms=5_000, call_lease_ms=30_000)
        await w.agent("1001", "sales")
        await w.agent("1002", "sales")
        holder, other = w.node("n1"), w.node("n2")
        await holder.enqueue(T, "c1", "sales")
        await holder.enqueue(T, "c2", "sales")
        for call in ("c1", "c2"):
            status = await holder.call_status(T, call)
            assert status is not None
            assert (await other.answer(T, call, status.ringing[0])).ok
        answered_at = w.now_ms
        assert (await holder.call_status(T, "c1")).lease_until_ms == answered_at + 30_000  # type: ignore[union-attr]
        # Renewals by another node do not count: only the node holding the call vouches.
        w.advance(29_000)
        assert (await other.renew_connected_calls(T)).extra["renewed"] == "0"
        assert (await holder.renew_connected_calls(T)).extra["renewed"] == "2"
        await holder.hangup(T, "c2", "caller")  # c2 ends normally: no lease any more
        lease_end = w.now_ms + 30_000
        w.advance(29_999)
        assert (await other.tick(T)).extra["connected_calls_ended"] == "0"
        w.advance(2)  # the holder died: nobody renewed
        assert (await other.tick(T)).extra["connected_calls_ended"] == "1"
        assert await w.call_state("c1") == CallState.ENDED
        ended = [e for e in await w.events("call_ended") if e["call"] == "c1"]
        assert [(e["reason"], e["ts"], e["talk_ms"]) for e in ended] == [
            ("lease_expired", f"{lease_end / 1000:.3f}", str(lease_end - answered_at))]
        status = await w.acd.agent_status(T, ended[0]["agent"])
        # The agent's wrap-up started when the lease ended; then it is READY.
        assert (status.state, status.wrapup_until_ms) == (AgentState.WRAPUP, lease_end + 5_000)
        assert (await holder.hangup(T, "c1")).code == Refusal.CALL_OVER  # a late report
        w.advance(5_000)
        await w.acd.tick(T)
        assert await w.state(ended[0]["agent"]) == AgentState.READY
        stats = await w.acd.queue_stats(T, "sales")
        assert (stats.calls_answered, stats.calls_ended) == (2, 2)

    run(scenario)


def test_a_forced_logout_ends_the_connected_calls_lease_too(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", call_lease_ms=10_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")
        assert (await w.acd.answer(T, "c1", "1001")).ok
        assert (await w.acd.logout(T, "1001", force=True)).state == "OFFLINE"
        assert await w.redis.zscore(keys.connected_leases(T), "c1") is None
        w.advance(20_000)
        assert (await w.acd.tick(T)).extra["connected_calls_ended"] == "0"
        assert [e["reason"] for e in await w.events("call_ended")] == ["agent_forced_logout"]

    run(scenario)


def test_an_expired_reservation_of_a_dead_call_fails_it_over(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", call_lease_ms=5_000, reservation_lease_ms=20_000)
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "sales")  # the node dies while the agent rings
        w.advance(20_001)
        await w.acd.tick(T)
        assert await w.call_state("c1") == CallState.FAILED_OVER
        assert await w.state("1001") == AgentState.READY

    run(scenario)


# ---------------------------------------------------------------------------- overflow, members


def test_overflow_when_full_or_when_no_agent_is_logged_in(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("small", max_waiting=1, overflow_when_no_agents=True)
        await w.agent("1001", "small", login=False)
        assert (await w.acd.enqueue(T, "c0", "small")).code == Refusal.NO_AGENTS
        await w.acd.login(T, "1001")
        await w.acd.pause(T, "1001", "busy")  # logged in, paused: calls may wait
        assert (await w.acd.enqueue(T, "c1", "small")).ok
        assert (await w.acd.enqueue(T, "c2", "small")).code == Refusal.QUEUE_FULL
        assert (await w.acd.enqueue(T, "c1", "small")).code == Refusal.CALL_EXISTS
        assert (await w.acd.enqueue(T, "c3", "nowhere")).code == Refusal.UNKNOWN_QUEUE
        assert (await w.acd.queue_stats(T, "small")).calls_overflowed == 2
        reasons = [e["reason"] for e in await w.events("call_overflowed")]
        assert reasons == ["no_agents", "queue_full"]

    run(scenario)


def test_adding_a_ready_agent_to_a_queue_serves_its_waiting_calls(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        await w.queue("support")
        await w.agent("1001", "sales")
        await w.acd.enqueue(T, "c1", "support")
        assert (await w.acd.add_member(T, "support", "1001")).state == "RESERVED"
        await w.acd.no_answer(T, "c1", "1001")  # back to READY... and c1 again
        assert (await w.acd.remove_member(T, "support", "1001")).ok
        assert (await w.acd.remove_member(T, "support", "1001")).code == "not_member"
        assert (await w.acd.agent_status(T, "1001")).queues == ("sales",)

    run(scenario)


# ---------------------------------------------------------------------------- reads, waiting


def test_queue_stats_answer_what_a_supervisor_asks(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", service_level_ms=10_000, wrapup_ms=5_000, call_lease_ms=600_000)
        await w.agent("1001", "sales")
        await w.agent("1002", "sales")
        await w.agent("1003", "sales")
        await w.acd.pause(T, "1003", "training")
        await w.acd.enqueue(T, "fast", "sales")
        await w.acd.enqueue(T, "slow", "sales")
        await w.acd.answer(T, "fast", (await w.acd.call_status(T, "fast")).ringing[0])  # type: ignore[union-attr]
        w.advance(15_000)
        await w.acd.answer(T, "slow", (await w.acd.call_status(T, "slow")).ringing[0])  # type: ignore[union-attr]
        w.advance(30_000)
        await w.acd.hangup(T, "fast")
        await w.acd.enqueue(T, "queued", "sales", priority=1)
        w.advance(7_000)
        stats = await w.acd.queue_stats(T, "sales")
        assert stats.calls_waiting == 1 and stats.longest_wait_seconds == 7.0
        assert (stats.agents_logged_in, stats.agents_on_call, stats.agents_in_wrapup,
                stats.agents_paused, stats.agents_ready) == (3, 1, 1, 1, 0)
        assert (stats.calls_offered, stats.calls_answered,
                stats.calls_answered_within_service_level) == (3, 2, 1)
        assert stats.service_level_percent == 50.0
        assert stats.average_speed_of_answer_seconds == 7.5
        assert stats.average_talk_seconds == 45.0

    run(scenario)


def test_wait_for_offer_wakes_the_session_when_an_agent_turns_ready(
        run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales", call_lease_ms=600_000)
        await w.agent("1001", "sales", login=False)
        caller_node, agent_node = w.node("n1"), w.node("n2")
        await caller_node.enqueue(T, "c1", "sales")
        assert await caller_node.wait_for_offer(T, "c1", 0.05) == []
        waiter = asyncio.create_task(caller_node.wait_for_offer(T, "c1", 5))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await agent_node.login(T, "1001")
        offers = await waiter
        assert time.monotonic() - started < 0.5
        assert [(o.call, o.agent, o.node) for o in offers] == [("c1", "1001", "n1")]
        # Asked again (already reserved): answered from the call's state at once.
        assert [o.agent for o in await caller_node.wait_for_offer(T, "c1", 5)] == ["1001"]
        await caller_node.abandon(T, "c1")
        assert await caller_node.wait_for_offer(T, "c1", 5) == []

    run(scenario)


def test_tenants_do_not_see_each_other(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        await w.queue("sales")
        await w.agent("1001", "sales")
        other = "globex"
        assert (await w.acd.configure_queue(other, "sales", QueueSettings())).ok
        await w.acd.enqueue(T, "c1", "sales")  # acme's agent takes acme's call
        result = await w.acd.enqueue(other, "c1", "sales")  # same names, other tenant
        assert result.ok and result.state == "WAITING" and not result.offers
        assert (await w.acd.answer(other, "c1", "1001")).code == Refusal.NOT_RESERVED
        assert (await w.acd.agent_status(other, "1001")).state == AgentState.OFFLINE

    run(scenario)


def test_bad_arguments_are_refused_before_redis(run: Callable[[Scenario], None]) -> None:
    async def scenario(w: Acd) -> None:
        with pytest.raises(ValueError, match="extension"):
            await w.acd.login(T, "10x1")
        with pytest.raises(ValueError, match="call id"):
            await w.acd.enqueue(T, "has space", "sales")
        with pytest.raises(ValueError, match="priority"):
            await w.acd.enqueue(T, "c1", "sales", priority=100)
        with pytest.raises(ValueError, match="tenant"):
            await w.acd.login("Bad Tenant", "1001")
        with pytest.raises(ValueError, match="reason"):
            await w.acd.pause(T, "1001", "two\nlines")

    run(scenario)


def test_the_sync_facade_runs_the_same_scripts(run: Callable[[Scenario], None],
                                               acd_redis: RedisServer) -> None:  # noqa: F811
    """For KEMI (a REGISTER with Expires: 0) and the CLI, which run no event loop."""

    async def scenario(w: Acd) -> None:
        seconds, micros = await w.redis.time()
        w.now_ms = seconds * 1000 + micros // 1000  # the facade reads Redis TIME
        await w.queue("sales")
        await w.agent("1001", "sales", login=False)
        acd = AcdSync(acd_redis.client(), "kamailio-1")
        assert acd.login(T, "1001").state == "READY"
        assert acd.pause(T, "1001", "lunch").state == "PAUSED"
        assert acd.unpause(T, "1001").state == "READY"
        await w.acd.enqueue(T, "c1", "sales")
        unregistered = acd.unregister(T, "1001")
        assert (unregistered.code, unregistered.state) == ("ok", "OFFLINE")
        assert await w.call_state("c1") == CallState.WAITING
        [logout] = await w.events("agent_logout")
        assert (logout["reason"], logout["node"]) == ("unregistered", "kamailio-1")
        assert acd.login(T, "1001").code == Refusal.NOT_REGISTERED

    run(scenario)
