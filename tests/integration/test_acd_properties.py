"""Property-based tests of the ACD (hypothesis stateful): random sequences of operations from
three clients (nodes) on six agents in three queues — ringall among them — with time moved
by a test clock, against a real redis-server.

After every step, against Redis and the event stream:
- no agent holds two calls, no call is answered twice, no call reaches an agent that was
  not READY (acd_checks.EventReplay, fed the step's events in order);
- every call that is not over is in exactly one place: its queue's waiting set, or
  reserved by agents that point back at it, or connected to one agent ONCALL; no queued
  call ever vanishes (every enqueued call's hash is there, in the stream's state);
- no agent is ever reserved while its phone is unregistered, and no unregistered agent is
  READY (except one whose registration just expired, until matching meets it);
- per-queue counts and counters reconcile with the agents and calls, and a waiting call's
  place is its priority and first arrival however often it came back (acd_checks);
- when a script ran at the current time, no lease or wrap-up that ended is still in force;
- results of agent requests agree with omnicc.agent_state.next_state when nothing is due.

Bounded (100 examples of up to 80 steps) to run in well under a minute.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from omnicc import keys
from omnicc.acd import AcdResult, AcdStore, NoAnswerOutcome, QueueSettings, Strategy
from omnicc.agent_state import AgentEvent, AgentState, next_state
from tests.integration.acd_checks import (
    EventReplay,
    read_all_events,
    redis_problems,
    replay_matches_redis,
)
from tests.integration.acd_redis import RedisServer, acd_redis  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

T = "prop"
AGENTS = ("1001", "1002", "1003", "1004", "1005", "1006")
NODES = ("n1", "n2", "n3")
QUEUES = {
    "sales": QueueSettings(strategy=Strategy.LONGEST_IDLE, wrapup_ms=5_000,
                           reservation_lease_ms=20_000, call_lease_ms=30_000),
    "support": QueueSettings(strategy=Strategy.RINGALL, wrapup_ms=0,
                             reservation_lease_ms=15_000, call_lease_ms=20_000),
    "billing": QueueSettings(strategy=Strategy.ROUND_ROBIN_MEMORY, wrapup_ms=10_000,
                             auto_pause_reason="missed a call", max_waiting=3,
                             overflow_when_no_agents=True),
    "vip": QueueSettings(strategy=Strategy.SKILLS_WEIGHTED, wrapup_ms=3_000,
                         reservation_lease_ms=10_000, call_lease_ms=25_000),
}
MEMBERS = {  # (extension, penalty, skill); every agent is in two queues or more
    "sales": [("1001", 0, 50), ("1002", 0, 50), ("1003", 1, 50), ("1004", 0, 50)],
    "support": [("1003", 0, 50), ("1004", 0, 50), ("1005", 0, 50), ("1002", 2, 50)],
    "billing": [("1001", 0, 50), ("1005", 0, 50), ("1006", 0, 50)],
    "vip": [("1006", 0, 90), ("1002", 0, 90), ("1004", 0, 30), ("1001", 1, 100)],
}
START_MS = 1_700_000_000_000

agent_ids = st.sampled_from(AGENTS)
nodes = st.sampled_from(NODES)
queue_names = st.sampled_from(sorted(QUEUES))


class AcdMachine(RuleBasedStateMachine):
    server: RedisServer  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.sync = self.server.client()
        self.sync.flushdb()
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(self.server.url, decode_responses=True)
        self.now_ms = START_MS
        self.stores = {n: AcdStore(self.client, n, clock=lambda: self.now_ms) for n in NODES}
        self.expired: set[str] = set()  # registrations dropped without an unregister
        self.calls: list[str] = []  # every call enqueued
        self.replay = EventReplay()
        self.last_event = "-"
        self.settled_at_ms: int | None = None

    def run(self, coroutine: Any) -> Any:
        """Runs a store operation: every script settles what is due at its start."""
        result = self.loop.run_until_complete(coroutine)
        self.settled_at_ms = self.now_ms
        return result

    def teardown(self) -> None:
        for store in self.stores.values():
            self.run(store.close())
        self.run(self.client.aclose())
        self.loop.close()
        self.sync.close()

    @initialize(logged_in=st.sets(agent_ids, min_size=4))
    def configure(self, logged_in: set[str]) -> None:
        """Queues, members, every phone registered and some agents logged in: a start from
        which random operations soon reach every state."""
        store = self.stores["n1"]
        for queue, queue_settings in QUEUES.items():
            assert self.run(store.configure_queue(T, queue, queue_settings)).ok
            for ext, penalty, skill in MEMBERS[queue]:
                assert self.run(store.add_member(T, queue, ext, penalty, skill=skill)).ok
        for ext in AGENTS:
            self.run(store.register(T, ext, f"sip:{ext}@192.0.2.1", 3600))
        for ext in sorted(logged_in):
            assert self.run(store.login(T, ext)).ok

    # ------------------------------------------------------------ helpers

    def registered(self, ext: str) -> bool:
        return bool(self.sync.exists(keys.agent_contact(T, ext)))

    def nothing_due(self) -> bool:
        now = self.now_ms
        return not any(self.sync.zrangebyscore(key, "-inf", bound, start=0, num=1)
                       for key, bound in ((keys.call_leases(T), f"({now}"),
                                          (keys.connected_leases(T), f"({now}"),
                                          (keys.reservation_leases(T), f"({now}"),
                                          (keys.wrapup_ends(T), now)))

    def agent_request(self, ext: str, event: AgentEvent, operation: Any) -> AcdResult:
        """Runs an agent request; when nothing is due, checks it against next_state."""
        predictable = self.nothing_due()
        before = AgentState(self.sync.hget(keys.agent_hash(T, ext), "state") or "OFFLINE")
        registered = self.registered(ext) and event is not AgentEvent.UNREGISTER
        result: AcdResult = self.run(operation)
        if predictable:
            expected = next_state(before, event, registered=registered)
            assert result.code == (expected.refusal or "ok"), (before, event, result)
            after = AgentState(self.sync.hget(keys.agent_hash(T, ext), "state") or "OFFLINE")
            # A READY agent may take a waiting call in the same step.
            allowed = {expected.state, AgentState.RESERVED} \
                if expected.state is AgentState.READY else {expected.state}
            assert after in allowed, (before, event, after)
        return result

    def reservations(self) -> list[tuple[str, str, int]]:
        """(call, agent, lease_until) of every reservation whose lease holds now (one that
        ran out is still stored until the next script settles it)."""
        out = []
        for ext in AGENTS:
            fields = self.sync.hgetall(keys.agent_hash(T, ext))
            if fields.get("state") == "RESERVED" and int(fields["lease_until"]) >= self.now_ms:
                out.append((fields["call"], ext, int(fields["lease_until"])))
        return out

    def skills_weighted_pick(self, queue: str) -> str | None:
        """Who a skills-weighted queue offers a new call to now: its best penalty, then the
        highest skill, then the longest idle (ms), then the extension; "-" for other
        strategies."""
        if QUEUES[queue].strategy is not Strategy.SKILLS_WEIGHTED:
            return "-"
        members = self.sync.hgetall(keys.queue_members(T, queue))
        skills = self.sync.hgetall(keys.queue_skills(T, queue))
        ready = [ext for ext in self.sync.zrange(keys.queue_ready(T, queue), 0, -1)
                 if self.registered(ext)]
        ranked = sorted(ready, key=lambda ext: (
            int(members[ext]), -int(skills[ext]),
            int(self.sync.hget(keys.agent_hash(T, ext), "last_ended") or 0), ext))
        return ranked[0] if ranked else None

    def connected(self) -> list[str]:
        """CONNECTED calls whose lease holds now (one that ran out is still stored until
        the next script settles it: the call ends then)."""
        return [c for c in self.calls_in("CONNECTED")
                if int(self.sync.hget(keys.acd_call(T, c), "lease_until")) >= self.now_ms]

    def calls_in(self, *states: str) -> list[str]:
        return [c for c in self.calls
                if self.sync.hget(keys.acd_call(T, c), "state") in states]

    # ------------------------------------------------------------ registration

    @rule(ext=agent_ids, change=st.sampled_from(["register", "expire", "unregister"]),
          node=nodes)
    def registration(self, ext: str, change: str, node: str) -> None:
        """A REGISTER; a registration whose TTL ran out (no script runs, the contact key is
        just gone); or a REGISTER with Expires: 0 (the unregister script)."""
        if change == "register":  # what Kamailio's KEMI writes: no script runs
            self.sync.set(keys.agent_contact(T, ext), f"sip:{ext}@192.0.2.1", ex=3600)
            self.expired.discard(ext)
        elif change == "expire":
            if self.sync.delete(keys.agent_contact(T, ext)):
                self.expired.add(ext)
        else:
            self.agent_request(ext, AgentEvent.UNREGISTER, self.stores[node].unregister(T, ext))
            self.expired.discard(ext)

    # ------------------------------------------------------------ agent requests

    @rule(node=nodes, ext=agent_ids)
    def login(self, node: str, ext: str) -> None:
        self.agent_request(ext, AgentEvent.LOGIN, self.stores[node].login(T, ext))

    @rule(node=nodes, ext=agent_ids, force=st.booleans())
    def logout(self, node: str, ext: str, force: bool) -> None:
        event = AgentEvent.FORCE_LOGOUT if force else AgentEvent.LOGOUT
        self.agent_request(ext, event, self.stores[node].logout(T, ext, force=force))

    @rule(node=nodes, ext=agent_ids, reason=st.sampled_from(["lunch", "training", ""]))
    def pause(self, node: str, ext: str, reason: str) -> None:
        self.agent_request(ext, AgentEvent.PAUSE, self.stores[node].pause(T, ext, reason))

    @rule(node=nodes, ext=agent_ids)
    def unpause(self, node: str, ext: str) -> None:
        self.agent_request(ext, AgentEvent.UNPAUSE, self.stores[node].unpause(T, ext))

    @rule(queue=queue_names, ext=agent_ids, penalty=st.integers(0, 3),
          skill=st.sampled_from([0, 50, 90, 100]), join=st.booleans())
    def change_membership(self, queue: str, ext: str, penalty: int, skill: int,
                          join: bool) -> None:
        store = self.stores["n2"]
        if join:
            assert self.run(store.add_member(T, queue, ext, penalty, skill=skill)).ok
        else:
            self.run(store.remove_member(T, queue, ext))

    # ------------------------------------------------------------ calls

    @rule(node=nodes, arrivals=st.lists(st.tuples(queue_names, st.integers(0, 2)),
                                        min_size=1, max_size=3))
    def enqueue(self, node: str, arrivals: list[tuple[str, int]]) -> None:
        for queue, priority in arrivals:
            call = f"c{len(self.calls)}"
            skilled = self.skills_weighted_pick(queue) if self.nothing_due() else "-"
            result = self.run(self.stores[node].enqueue(T, call, queue, caller="+1555",
                                                        did="100", priority=priority))
            assert result.code in ("ok", "queue_full", "no_agents"), result
            if skilled != "-" and result.ok:
                assert [o.agent for o in result.offers] == ([skilled] if skilled else []), \
                    (queue, skilled, result)
            if result.ok:
                self.calls.append(call)

    @precondition(lambda self: self.reservations())
    @rule(node=nodes, data=st.data(), fenced=st.booleans())
    def answer(self, node: str, data: st.DataObject, fenced: bool) -> None:
        call, ext, lease = data.draw(st.sampled_from(self.reservations()))
        result = self.run(self.stores[node].answer(
            T, call, ext, lease_until_ms=lease if fenced else None))
        assert result.ok, result  # its lease holds: nothing can have taken it

    @precondition(lambda self: self.calls)
    @rule(node=nodes, call_index=st.integers(0), ext=agent_ids)
    def stray_answer(self, node: str, call_index: int, ext: str) -> None:
        """A late or mistaken answer: it never connects a call the agent does not hold."""
        call = self.calls[call_index % len(self.calls)]
        held = (call, ext) in {(c, a) for c, a, _ in self.reservations()}
        predictable = self.nothing_due()
        result = self.run(self.stores[node].answer(T, call, ext))
        if predictable:
            assert result.ok == held, result

    @precondition(lambda self: self.reservations())
    @rule(node=nodes, data=st.data(), outcome=st.sampled_from(list(NoAnswerOutcome)),
          pause_reason=st.sampled_from(["", "", "not answering"]))
    def no_answer(self, node: str, data: st.DataObject, outcome: NoAnswerOutcome,
                  pause_reason: str) -> None:
        call, ext, lease = data.draw(st.sampled_from(self.reservations()))
        result = self.run(self.stores[node].no_answer(T, call, ext, outcome, pause_reason,
                                                      lease_until_ms=lease))
        assert result.ok, result

    @precondition(lambda self: self.connected())
    @rule(node=nodes, data=st.data(), reason=st.sampled_from(["caller", "agent"]))
    def hangup(self, node: str, data: st.DataObject, reason: str) -> None:
        call = data.draw(st.sampled_from(self.connected()))
        result = self.run(self.stores[node].hangup(T, call, reason))
        assert result.ok, result

    @precondition(lambda self: self.calls)
    @rule(node=nodes, call_index=st.integers(0))
    def late_hangup(self, node: str, call_index: int) -> None:
        """A hangup reported twice, or for a call that never connected: refused."""
        call = self.calls[call_index % len(self.calls)]
        connected = call in self.connected()
        result = self.run(self.stores[node].hangup(T, call))
        assert result.ok == connected, result

    @precondition(lambda self: self.calls)
    @rule(node=nodes, data=st.data(), abandon=st.booleans())
    def caller_leaves(self, node: str, data: st.DataObject, abandon: bool) -> None:
        """The caller hangs up (abandon), or its session sends it to failover (max wait)."""
        call = data.draw(st.sampled_from(self.calls_in("WAITING", "RESERVED") or self.calls))
        store = self.stores[node]
        self.run(store.abandon(T, call) if abandon else store.fail_over(T, call, "max_wait"))

    @precondition(lambda self: self.calls)
    @rule(node=nodes, data=st.data(), adopt=st.booleans())
    def renew_or_adopt(self, node: str, data: st.DataObject, adopt: bool) -> None:
        call = data.draw(st.sampled_from(self.calls_in("WAITING", "RESERVED") or self.calls))
        store = self.stores[node]
        self.run(store.adopt(T, call) if adopt else store.renew_call_lease(T, call))

    # ------------------------------------------------------------ time

    @rule(node=nodes)
    def tick(self, node: str) -> None:
        assert self.run(self.stores[node].tick(T)).ok

    @rule(node=nodes)
    def renew_connected(self, node: str) -> None:
        """A node's FastAGI server vouches for the connected calls it holds."""
        held = [c for c in self.connected()
                if self.sync.hget(keys.acd_call(T, c), "node") == node]
        predictable = self.nothing_due()
        result = self.run(self.stores[node].renew_connected_calls(T))
        if predictable:
            assert result.extra["renewed"] == str(len(held)), (held, result)

    @rule(ms=st.sampled_from([1, 999, 999, 5_000, 5_000, 10_000, 15_001, 20_001, 30_001]),
          sessions_alive=st.sampled_from([True, True, False]))
    def time_passes(self, ms: int, sessions_alive: bool) -> None:
        """Time moves on; while their sessions live, the nodes renew their calls' leases
        first (a session renews every third of its lease, a node its connected calls);
        else connected calls may end by their lease too."""
        if sessions_alive:
            for call in self.calls_in("WAITING", "RESERVED"):
                node = self.sync.hget(keys.acd_call(T, call), "node")
                self.run(self.stores[node].renew_call_lease(T, call))
            for node in NODES:
                self.run(self.stores[node].renew_connected_calls(T))
        self.now_ms += ms

    # ------------------------------------------------------------ the promises

    @invariant()
    def promises_hold(self) -> None:
        events = read_all_events(self.sync, T, self.last_event)
        if events:
            self.last_event = events[-1]["id"]
        self.replay.feed(events)
        for event in events:
            if event["event"] == "call_reserved":
                ext = event["agent"]
                assert self.registered(ext), f"{ext} reserved while unregistered: {event}"
        for ext in AGENTS:
            state = self.sync.hget(keys.agent_hash(T, ext), "state")
            if state == "READY" and ext not in self.expired:
                assert self.registered(ext), f"{ext} READY but not registered"
        if self.settled_at_ms == self.now_ms:
            # A script ran at this very time: nothing that was due is left unsettled.
            assert self.nothing_due(), "a lease or wrap-up that ended is still in force"
        assert redis_problems(self.sync, T) == []
        assert replay_matches_redis(self.replay, self.sync, T) == []
        assert set(self.replay.call_state) == set(self.calls)


def test_random_operations_from_several_clients_keep_every_promise(
        acd_redis: RedisServer) -> None:  # noqa: F811
    AcdMachine.server = acd_redis
    run_state_machine_as_test(AcdMachine, settings=settings(
        max_examples=100, stateful_step_count=80, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
