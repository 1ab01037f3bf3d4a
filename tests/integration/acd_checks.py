"""Checks of the ACD's promises, shared by the property and the concurrency tests.

`EventReplay` replays a tenant's event stream in order and fails at the first event that
breaks a promise: an agent reserved or connected to two calls at once, a call offered to
an agent that was not READY (paused, in wrap-up, offline), a call answered twice, a call
that changes state from a final one. `redis_problems` reads the whole of a tenant's ACD
state and lists every inconsistency: agents and calls that do not point at each other,
calls in no place or two, stale indexes, per-queue counts and counters that do not
reconcile, a queue with a waiting call beside a READY registered member.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from omnicc import keys
from omnicc.acd import waiting_score
from omnicc.acd_lua import MAX_SKILL
from omnicc.agent_state import AgentState, CallState

FINAL = {"ENDED", "ABANDONED", "FAILED_OVER"}


class PromiseBroken(AssertionError):
    pass


@dataclass
class EventReplay:
    """The ACD as its event stream tells it, checked event by event."""

    agent_state: dict[str, str] = field(default_factory=dict)
    agent_holds: dict[str, str] = field(default_factory=dict)  # agent -> call reserved/connected
    call_state: dict[str, str] = field(default_factory=dict)
    call_queue: dict[str, str] = field(default_factory=dict)
    ringing: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    connected_agent: dict[str, str] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (queue, event) -> n
    events_seen: int = 0

    def feed(self, events: Iterable[Mapping[str, str]]) -> None:
        for event in events:
            self.apply(event)

    def _fail(self, event: Mapping[str, str], problem: str) -> None:
        raise PromiseBroken(f"event #{self.events_seen} {dict(event)}: {problem}")

    def apply(self, ev: Mapping[str, str]) -> None:
        self.events_seen += 1
        name = ev["event"]
        call, agent, queue = ev.get("call", ""), ev.get("agent", ""), ev.get("queue", "")
        if queue:
            self.counts[(queue, name)] += 1
        state_before = self.call_state.get(call)
        if name == "call_enqueued":
            if call in self.call_state:
                self._fail(ev, "a call enqueued twice")
            self.call_state[call] = "WAITING"
            self.call_queue[call] = queue
        elif name == "call_reserved":
            if state_before not in ("WAITING", "RESERVED"):
                self._fail(ev, f"reservation of a call in state {state_before}")
            if state_before == "RESERVED" and not self.ringing[call]:
                self._fail(ev, "reservation of a call already answered")
            if self.agent_holds.get(agent):
                self._fail(ev, f"agent {agent} already holds call {self.agent_holds[agent]}")
            if self.agent_state.get(agent) != "READY":
                self._fail(ev, f"agent {agent} was {self.agent_state.get(agent)}, not READY")
            self.agent_holds[agent] = call
            self.ringing[call].add(agent)
            self.call_state[call] = "RESERVED"
        elif name == "call_answered":
            if state_before != "RESERVED" or agent not in self.ringing[call]:
                self._fail(ev, f"answer of a call {state_before} not ringing at {agent}")
            if self.agent_holds.get(agent) != call:
                self._fail(ev, f"agent {agent} does not hold the call it answered")
            self.ringing[call].discard(agent)
            self.call_state[call] = "CONNECTED"
            self.connected_agent[call] = agent
        elif name == "call_released":
            if self.agent_holds.get(agent) != call or (
                    agent not in self.ringing[call] and state_before not in FINAL | {"CONNECTED"}):
                self._fail(ev, f"release of a reservation agent {agent} does not hold")
            if state_before == "CONNECTED" and self.connected_agent.get(call) == agent:
                self._fail(ev, "release of the connected agent")
            self.agent_holds.pop(agent, None)
            self.ringing[call].discard(agent)
        elif name == "call_requeued":
            if state_before != "RESERVED" or self.ringing[call]:
                self._fail(ev, f"requeue of a call {state_before} still ringing somewhere")
            self.call_state[call] = "WAITING"
        elif name == "call_ended":
            if state_before != "CONNECTED" or self.connected_agent.get(call) != agent:
                self._fail(ev, f"end of a call {state_before} not connected to {agent}")
            if self.agent_holds.get(agent) != call:
                self._fail(ev, f"agent {agent} did not hold the call that ended")
            self.agent_holds.pop(agent, None)
            self.call_state[call] = "ENDED"
        elif name in ("call_abandoned", "call_failed_over"):
            if state_before not in ("WAITING", "RESERVED"):
                self._fail(ev, f"{name} of a call in state {state_before}")
            self.call_state[call] = "ABANDONED" if name == "call_abandoned" else "FAILED_OVER"
        elif name == "call_adopted":
            if state_before not in ("WAITING", "RESERVED"):
                self._fail(ev, f"adoption of a call in state {state_before}")
        if agent and ev.get("agent_state"):
            new_state = ev["agent_state"]
            holds = self.agent_holds.get(agent)
            if new_state in ("READY", "PAUSED", "OFFLINE", "WRAPUP") and holds:
                self._fail(ev, f"agent {agent} is {new_state} while holding call {holds}")
            self.agent_state[agent] = new_state

    def live_calls(self) -> dict[str, str]:
        return {c: s for c, s in self.call_state.items() if s not in FINAL}


def read_all_events(client: redis.Redis, tenant: str, since: str = "-") -> list[dict[str, str]]:
    """Every event from stream id `since` on (exclusive when not "-"), oldest first."""
    out: list[dict[str, str]] = []
    start = since if since == "-" else "(" + since
    while True:
        rows = client.xrange(keys.events_stream(tenant), min=start, count=10_000)
        if not rows:
            return out
        for entry_id, fields in rows:
            row = {_s(k): _s(v) for k, v in fields.items()}
            row["id"] = _s(entry_id)
            out.append(row)
        start = "(" + _s(rows[-1][0])


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_problems(client: redis.Redis, tenant: str) -> list[str]:
    """Every inconsistency in the tenant's ACD state (an empty list when all is well)."""
    problems: list[str] = []
    agents = sorted(_s(a) for a in client.smembers(keys.tenant_agents(tenant)))
    queues = sorted(_s(q) for q in client.smembers(keys.tenant_queues(tenant)))
    pipe = client.pipeline(transaction=True)
    for ext in agents:
        pipe.hgetall(keys.agent_hash(tenant, ext))
        pipe.exists(keys.agent_contact(tenant, ext))
        pipe.smembers(keys.agent_queues(tenant, ext))
    for q in queues:
        pipe.hgetall(keys.queue_members(tenant, q))
        pipe.zrange(keys.queue_ready(tenant, q), 0, -1)
        pipe.zrange(keys.queue_waiting(tenant, q), 0, -1, withscores=True)
        pipe.hgetall(keys.queue_agent_states(tenant, q))
        pipe.hgetall(keys.queue_stats(tenant, q))
        pipe.hgetall(keys.queue_skills(tenant, q))
    pipe.zrange(keys.reservation_leases(tenant), 0, -1, withscores=True)
    pipe.zrange(keys.wrapup_ends(tenant), 0, -1, withscores=True)
    pipe.zrange(keys.call_leases(tenant), 0, -1, withscores=True)
    pipe.zrange(keys.connected_leases(tenant), 0, -1, withscores=True)
    node_keys = sorted(_s(k) for k in client.scan_iter(
        match=keys.node_connected(tenant, "*"), count=1000))
    for key in node_keys:
        pipe.smembers(key)
    call_keys = [_s(k) for k in client.scan_iter(match=keys.acd_call(tenant, "*"), count=1000)]
    # A call id has no ':' (omnicc.acd.CALL_ID_RE); "<id>:ringing" is its ringing set.
    call_ids = sorted(rest for rest in (k.split(":call:", 1)[1] for k in call_keys)
                      if ":" not in rest)
    for call in call_ids:
        pipe.hgetall(keys.acd_call(tenant, call))
        pipe.smembers(keys.call_ringing(tenant, call))
    raw = iter(pipe.execute())

    agent: dict[str, dict[str, str]] = {}
    registered: dict[str, bool] = {}
    member_of: dict[str, set[str]] = {}
    for ext in agents:
        agent[ext] = {_s(k): _s(v) for k, v in next(raw).items()}
        registered[ext] = bool(next(raw))
        member_of[ext] = {_s(q) for q in next(raw)}
    members: dict[str, set[str]] = {}
    ready: dict[str, list[str]] = {}
    waiting: dict[str, list[str]] = {}
    waiting_scores: dict[str, float] = {}
    state_counts: dict[str, dict[str, int]] = {}
    stats: dict[str, dict[str, int]] = {}
    for q in queues:
        members[q] = {_s(m) for m in next(raw)}
        ready[q] = [_s(m) for m in next(raw)]
        waiting_rows = [(_s(m), score) for m, score in next(raw)]
        waiting[q] = [m for m, _ in waiting_rows]
        waiting_scores.update(waiting_rows)
        state_counts[q] = {_s(k): int(v) for k, v in next(raw).items()}
        stats[q] = {_s(k): int(v) for k, v in next(raw).items()}
        skills = {_s(k): int(v) for k, v in next(raw).items()}
        if set(skills) != members[q] or not all(0 <= v <= MAX_SKILL for v in skills.values()):
            problems.append(f"queue {q}: skills {skills} do not match members {members[q]}")
    reservation_leases = {_s(m): int(s) for m, s in next(raw)}
    wrapup_ends = {_s(m): int(s) for m, s in next(raw)}
    call_leases = {_s(m): int(s) for m, s in next(raw)}
    connected_leases = {_s(m): int(s) for m, s in next(raw)}
    held_by_node: dict[str, set[str]] = {}  # node -> its CONNECTED calls
    for key in node_keys:
        node = key.split(":node:", 1)[1].removesuffix(":connected")
        held_by_node[node] = {_s(c) for c in next(raw)}
    call: dict[str, dict[str, str]] = {}
    ringing: dict[str, set[str]] = {}
    for c in call_ids:
        call[c] = {_s(k): _s(v) for k, v in next(raw).items()}
        ringing[c] = {_s(a) for a in next(raw)}

    def state_of(ext: str) -> str:
        return agent.get(ext, {}).get("state", AgentState.OFFLINE)

    # Agents
    pointing_at: dict[str, list[str]] = defaultdict(list)
    for ext in agents:
        a, state = agent[ext], state_of(ext)
        for q in member_of[ext]:
            if ext not in members.get(q, set()):
                problems.append(f"agent {ext} lists queue {q} which does not list it")
        in_ready = {q for q in queues if ext in ready[q]}
        expected_ready = member_of[ext] if state == "READY" else set()
        if in_ready != expected_ready:
            problems.append(f"agent {ext} {state} is in ready sets {sorted(in_ready)}, "
                            f"expected {sorted(expected_ready)}")
        held = a.get("call", "")
        if state in ("RESERVED", "ONCALL"):
            if not held:
                problems.append(f"agent {ext} {state} without a call")
            pointing_at[held].append(ext)
        elif held:
            problems.append(f"agent {ext} {state} still points at call {held}")
        if state == "RESERVED":
            if held and ext not in ringing.get(held, set()):
                problems.append(f"agent {ext} RESERVED for {held}, which does not ring it")
            if reservation_leases.get(ext) != int(a.get("lease_until", -1)):
                problems.append(f"agent {ext} RESERVED: lease index out of step")
        elif ext in reservation_leases:
            problems.append(f"agent {ext} {state} has a reservation lease")
        if state == "WRAPUP":
            if wrapup_ends.get(ext) != int(a.get("wrapup_until", -1)):
                problems.append(f"agent {ext} WRAPUP: wrap-up index out of step")
        elif ext in wrapup_ends:
            problems.append(f"agent {ext} {state} has a wrap-up end")
    # Calls
    for c in call_ids:
        cf = call[c]
        state, q = cf.get("state", ""), cf.get("queue", "")
        holders = pointing_at.get(c, [])
        places = [qq for qq in queues if c in waiting[qq]]
        if state == CallState.WAITING:
            if places != [q] or holders or ringing[c]:
                problems.append(f"call {c} WAITING: in waiting sets {places}, held by {holders}")
            if call_leases.get(c) != int(cf.get("lease_until", -1)):
                problems.append(f"call {c} WAITING: lease index out of step")
            # Its place: priority, then when it first arrived, however often it came back.
            place = waiting_score(int(cf.get("priority", 0)), int(cf.get("enqueued_at", 0)))
            if waiting_scores.get(c) != place:
                problems.append(f"call {c} WAITING at {waiting_scores.get(c)}, not {place}")
        else:
            if places:
                problems.append(f"call {c} {state} is still in waiting sets {places}")
            if c in call_leases:
                problems.append(f"call {c} {state} has a waiting lease")
        if state == CallState.WAITING:
            pass  # checked above
        elif state == CallState.RESERVED:
            if not ringing[c] or set(holders) != ringing[c]:
                problems.append(f"call {c} RESERVED: ringing {sorted(ringing[c])}, "
                                f"held by {sorted(holders)}")
            for ext in ringing[c]:
                if state_of(ext) != "RESERVED":
                    problems.append(f"call {c} rings agent {ext}, which is {state_of(ext)}")
        elif state == CallState.CONNECTED:
            if holders != [cf.get("agent")] or state_of(cf.get("agent", "")) != "ONCALL":
                problems.append(f"call {c} CONNECTED to {cf.get('agent')}, held by {holders}")
            if connected_leases.get(c) != int(cf.get("lease_until", -1)):
                problems.append(f"call {c} CONNECTED: lease index out of step")
            if c not in held_by_node.get(cf.get("node", ""), set()):
                problems.append(f"call {c} CONNECTED: not among node {cf.get('node')}'s calls")
        elif state in FINAL:
            if holders or ringing[c]:
                problems.append(f"call {c} {state} still held by {holders} / {ringing[c]}")
        else:
            problems.append(f"call {c} in unknown state {state!r}")
    for c in connected_leases:
        if call.get(c, {}).get("state") != CallState.CONNECTED:
            problems.append(f"call {c} has a connected lease but is not CONNECTED")
    for node, held in held_by_node.items():
        for c in held:
            if call.get(c, {}).get("state") != CallState.CONNECTED \
                    or call[c].get("node") != node:
                problems.append(f"node {node} holds call {c}, which is not its CONNECTED call")
    for held, holders in pointing_at.items():
        if held not in call:
            problems.append(f"agents {holders} point at a call that does not exist: {held}")
    for q in queues:
        for c in waiting[q]:
            if c not in call:
                problems.append(f"queue {q} waits for a call that does not exist: {c}")
        # A waiting call and a READY registered member never meet in a queue.
        ready_registered = [ext for ext in ready[q] if registered.get(ext)]
        if waiting[q] and ready_registered:
            problems.append(f"queue {q} has waiting calls {waiting[q][:3]} and READY "
                            f"members {ready_registered[:3]}")
        # Per-queue state counts reconcile with the members' states.
        actual = Counter(state_of(ext) for ext in members[q])
        for state in AgentState:
            if state_counts[q].get(state, 0) != actual.get(state, 0):
                problems.append(f"queue {q}: {state_counts[q].get(state, 0)} agents counted "
                                f"{state}, {actual.get(state, 0)} are")
        # Counters reconcile with the calls (finished calls are kept an hour).
        of_queue = Counter(call[c].get("state") for c in call_ids if call[c].get("queue") == q)
        expected = {
            "calls_offered": sum(of_queue.values()),
            "calls_answered": of_queue["CONNECTED"] + of_queue["ENDED"],
            "calls_ended": of_queue["ENDED"],
            "calls_abandoned": of_queue["ABANDONED"],
            "calls_failed_over": of_queue["FAILED_OVER"],
        }
        for counter, value in expected.items():
            if stats[q].get(counter, 0) != value:
                problems.append(f"queue {q}: {counter} is {stats[q].get(counter, 0)}, "
                                f"the calls say {value}")
    return problems


def replay_matches_redis(replay: EventReplay, client: redis.Redis, tenant: str) -> list[str]:
    """Calls whose state in Redis differs from their state in the replayed stream."""
    problems = []
    pipe = client.pipeline(transaction=False)
    calls = sorted(replay.call_state)
    for c in calls:
        pipe.hget(keys.acd_call(tenant, c), "state")
    for c, stored in zip(calls, pipe.execute(), strict=True):
        if stored is None:
            problems.append(f"call {c} ({replay.call_state[c]} in the stream) vanished")
        elif _s(stored) != replay.call_state[c]:
            problems.append(f"call {c} is {_s(stored)} in Redis, "
                            f"{replay.call_state[c]} in the stream")
    return problems
