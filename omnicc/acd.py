"""The ACD store: agents, queues and calls in Redis, moved only by the atomic scripts of
omnicc/acd_lua.py (read that module's docstring for the model).

`AcdStore` wraps an asyncio redis client for the FastAGI server: one typed method per
transition, each one script run returning an `AcdResult`; reads for supervisors
(`agent_status`, `call_status`, `queue_stats`); and `wait_for_offer`, the event-driven wait
of a queued caller's session. Every node (FastAGI server) has its own store, named after
the node: a call belongs to the node whose session holds its caller. `AcdSync` runs the
agent requests over a synchronous client (KEMI, CLI).

Time: the scripts read Redis TIME. A store built with `clock=` passes that clock's ms to
every script instead; that is for deterministic tests only.

The dataclasses and functions above `AcdStore` are pure (no I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from omnicc import keys
from omnicc.acd_lua import (
    DEFAULT_SKILL,
    MAX_PENALTY,
    MAX_PRIORITY,
    MAX_SKILL,
    SCORE_TIER,
    SCRIPTS,
)
from omnicc.agent_state import AgentState, CallState, effective_state
from omnicc.config import EXTENSION_RE, NAME_RE

log = logging.getLogger("omnicc.acd")

CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
MAX_TEXT = 200  # caller, DID, reasons: enough for a SIP display name, bounded for the stream


class Strategy(StrEnum):
    """Which READY member a queue offers a call to (omnicc/acd_lua.py says how)."""

    LONGEST_IDLE = "longest-idle"
    FEWEST_CALLS = "fewest-calls"
    ROUND_ROBIN_MEMORY = "round-robin-memory"
    RANDOM = "random"
    LINEAR = "linear"
    RINGALL = "ringall"
    SKILLS_WEIGHTED = "skills-weighted"


class NoAnswerOutcome(StrEnum):
    """How a ring at a reserved agent ended without an answer (the dialplan's DIALSTATUS)."""

    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    BUSY = "busy"


@dataclass(frozen=True)
class QueueSettings:
    """A queue's settings as the scripts use them (all times in ms)."""

    strategy: Strategy = Strategy.LONGEST_IDLE
    wrapup_ms: int = 0  # after-call work; an agent's own wrapup_ms overrides it
    # How long a reservation holds without an answer: the ring timeout plus a margin.
    reservation_lease_ms: int = 30_000
    # How long a WAITING call stays queued without its holder renewing it.
    call_lease_ms: int = 30_000
    auto_pause_reason: str = ""  # non-empty: an agent who does not answer is paused so
    service_level_ms: int = 20_000  # answered within this counts towards the service level
    max_waiting: int = 0  # 0: no limit; else a call finding this many waiting overflows
    overflow_when_no_agents: bool = False  # a call finding no member logged in overflows

    def __post_init__(self) -> None:
        for name in ("wrapup_ms", "reservation_lease_ms", "call_lease_ms", "service_level_ms",
                     "max_waiting"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        if self.reservation_lease_ms == 0 or self.call_lease_ms == 0:
            raise ValueError("a lease must last more than 0 ms")
        _check_text(self.auto_pause_reason, "auto_pause_reason")

    def redis_fields(self) -> dict[str, str]:
        return {
            "strategy": str(self.strategy),
            "wrapup_ms": str(self.wrapup_ms),
            "reservation_lease_ms": str(self.reservation_lease_ms),
            "call_lease_ms": str(self.call_lease_ms),
            "auto_pause_reason": self.auto_pause_reason,
            "service_level_ms": str(self.service_level_ms),
            "max_waiting": str(self.max_waiting),
            "overflow_when_no_agents": "1" if self.overflow_when_no_agents else "0",
        }


@dataclass(frozen=True)
class Offer:
    """A reservation: `agent` rings for `call` until `lease_until_ms` unless answered."""

    call: str
    agent: str
    queue: str
    node: str  # the node holding the call's caller, which dials the agent
    lease_until_ms: int


@dataclass(frozen=True)
class AcdResult:
    """What a script did. `code` is "ok" or a refusal (omnicc.agent_state.Refusal);
    `state` is the agent's or call's state afterwards (unchanged when refused); `offers`
    are the reservations this step made, from either side."""

    code: str
    state: str
    offers: tuple[Offer, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code == "ok"


@dataclass(frozen=True)
class AgentStatus:
    extension: str
    state: AgentState  # as stored
    effective_state: AgentState  # a wrap-up that is over shows as ended
    registered: bool
    reason: str  # the pause reason
    since_ms: int | None
    call: str
    lease_until_ms: int | None
    wrapup_until_ms: int | None
    calls_taken: int
    queues: tuple[str, ...]


@dataclass(frozen=True)
class CallStatus:
    call: str
    queue: str
    state: CallState
    priority: int
    enqueued_at_ms: int
    caller: str
    did: str
    node: str
    agent: str  # the connected agent
    ringing: tuple[str, ...]  # agents holding a reservation
    lease_until_ms: int | None
    position: int | None  # 1 = next to be offered; None unless WAITING


@dataclass(frozen=True)
class QueueStats:
    """What a supervisor asks of a queue, now and since its counters began."""

    queue: str
    calls_waiting: int
    longest_wait_seconds: float
    agents_logged_in: int
    agents_ready: int
    agents_ringing: int
    agents_on_call: int
    agents_in_wrapup: int
    agents_paused: int
    calls_offered: int
    calls_answered: int
    calls_answered_within_service_level: int
    calls_abandoned: int
    calls_abandoned_within_service_level: int
    calls_failed_over: int
    calls_overflowed: int
    calls_ended: int
    rings_unanswered: int
    # Answered within the threshold, of the calls answered or abandoned (None: no calls yet).
    service_level_percent: float | None
    average_speed_of_answer_seconds: float | None
    average_talk_seconds: float | None
    agents_offline: int = 0  # members not logged in
    # How long abandoned callers waited before hanging up, on average (None: none yet).
    average_abandon_seconds: float | None = None


@dataclass(frozen=True)
class MemberStatus:
    """A queue member as a supervisor sees it (omnicc queue show)."""

    extension: str
    penalty: int
    skill: int
    state: AgentState
    reason: str  # the pause reason
    registered: bool
    call: str  # the call it rings for or talks on


@dataclass(frozen=True)
class WaitingCall:
    """A WAITING call of a queue, in the order it will be offered (position 1 first)."""

    position: int
    call: str
    priority: int
    waited_seconds: float
    caller: str
    did: str
    node: str


# ---------------------------------------------------------------------------- pure


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or _s(value) == "" else int(float(_s(value)))


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {what}: {value!r}")
    return value


def _check_text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT or any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"invalid {what}: one line of at most {MAX_TEXT} characters")
    return value


def _token(lease_until_ms: int | None) -> str:
    return "" if lease_until_ms is None else str(int(lease_until_ms))


def decode_result(raw: Sequence[Any]) -> AcdResult:
    """A script's reply ``{code, state, offers, extra}`` as an AcdResult."""
    code, state, offers, extra = raw
    pairs = [_s(v) for v in extra]
    return AcdResult(
        code=_s(code), state=_s(state),
        offers=tuple(
            Offer(_s(c), _s(a), _s(q), _s(n), int(_s(lease))) for c, a, q, n, lease in offers
        ),
        extra=dict(zip(pairs[::2], pairs[1::2], strict=True)),
    )


def waiting_score(priority: int, enqueued_at_ms: int) -> int:
    """A waiting call's score: lower is offered first (higher priority, then longest wait)."""
    return -priority * SCORE_TIER + enqueued_at_ms


def enqueued_at_from_score(score: float) -> int:
    return int(score) % SCORE_TIER


def parse_offer_message(data: str) -> list[Offer]:
    """An offers-channel message ``<call> <agent,agent...> <queue> <lease_until>``; the
    node is the channel's, filled in by the listener."""
    call, agents, queue, lease_until = data.split(" ")
    return [Offer(call, agent, queue, "", int(lease_until)) for agent in agents.split(",")]


def tenant_of_offers_channel(channel: str) -> str:
    # "{t:<tenant>}:node:<node>:offers"
    return channel[len("{t:"):channel.index("}")]


def summarize_queue(queue: str, waiting: Sequence[tuple[str, float]],
                    agent_states: Mapping[str, str], counters: Mapping[str, str],
                    now_ms: int) -> QueueStats:
    """QueueStats from the queue's raw Redis data: its waiting set (member, score), its
    per-state member counts and its counters hash."""

    def count(name: str) -> int:
        return int(counters.get(name, 0) or 0)

    def agents(state: AgentState) -> int:
        return int(agent_states.get(state, 0) or 0)

    oldest = min((enqueued_at_from_score(score) for _, score in waiting), default=None)
    answered = count("calls_answered")
    abandoned = count("calls_abandoned")
    ended = count("calls_ended")
    return QueueStats(
        queue=queue,
        calls_waiting=len(waiting),
        longest_wait_seconds=0.0 if oldest is None else max(0, now_ms - oldest) / 1000,
        agents_logged_in=sum(agents(state) for state in AgentState
                             if state is not AgentState.OFFLINE),
        agents_ready=agents(AgentState.READY),
        agents_ringing=agents(AgentState.RESERVED),
        agents_on_call=agents(AgentState.ONCALL),
        agents_in_wrapup=agents(AgentState.WRAPUP),
        agents_paused=agents(AgentState.PAUSED),
        calls_offered=count("calls_offered"),
        calls_answered=answered,
        calls_answered_within_service_level=count("calls_answered_within_service_level"),
        calls_abandoned=abandoned,
        calls_abandoned_within_service_level=count("calls_abandoned_within_service_level"),
        calls_failed_over=count("calls_failed_over"),
        calls_overflowed=count("calls_overflowed"),
        calls_ended=ended,
        rings_unanswered=count("rings_unanswered"),
        service_level_percent=(
            100 * count("calls_answered_within_service_level") / (answered + abandoned)
            if answered + abandoned else None),
        average_speed_of_answer_seconds=(
            count("wait_ms_answered_total") / answered / 1000 if answered else None),
        average_talk_seconds=count("talk_ms_total") / ended / 1000 if ended else None,
        agents_offline=agents(AgentState.OFFLINE),
        average_abandon_seconds=(
            count("wait_ms_abandoned_total") / abandoned / 1000 if abandoned else None),
    )


def agent_status_from(extension: str, fields: Mapping[str, str], registered: bool,
                      queues: Sequence[str], now_ms: int) -> AgentStatus:
    """AgentStatus from the agent's hash, whether its phone is registered, its queues."""
    state = AgentState(fields.get("state", AgentState.OFFLINE))
    wrapup_until = _int_or_none(fields.get("wrapup_until"))
    return AgentStatus(
        extension=extension, state=state,
        effective_state=effective_state(state, wrapup_until, now_ms, registered=registered),
        registered=registered, reason=fields.get("reason", ""),
        since_ms=_int_or_none(fields.get("since")), call=fields.get("call", ""),
        lease_until_ms=_int_or_none(fields.get("lease_until")),
        wrapup_until_ms=wrapup_until, calls_taken=int(fields.get("calls_taken", 0)),
        queues=tuple(sorted(queues)),
    )


def waiting_calls_from(waiting: Sequence[tuple[str, float]],
                       calls: Sequence[Mapping[str, str]], now_ms: int) -> list[WaitingCall]:
    """The queue's waiting set (member, score; in order) and each call's hash, as
    WaitingCalls; a call whose hash is gone is left out."""
    out = []
    for (call, score), fields in zip(waiting, calls, strict=True):
        if not fields:
            continue
        enqueued_at = enqueued_at_from_score(score)
        out.append(WaitingCall(
            position=len(out) + 1, call=call, priority=int(fields.get("priority", 0)),
            waited_seconds=max(0, now_ms - enqueued_at) / 1000,
            caller=fields.get("caller", ""), did=fields.get("did", ""),
            node=fields.get("node", "")))
    return out


# ---------------------------------------------------------------------------- I/O


class _OfferListener:
    """One pattern subscription per store to the offers of every tenant for its node; it
    wakes the sessions waiting for those calls."""

    def __init__(self, redis: aioredis.Redis, node: str):
        self._redis = redis
        self._node = node
        self._waiters: dict[tuple[str, str], set[asyncio.Future[list[Offer]]]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def started(self) -> None:
        """Returns once the subscription is confirmed, so a reservation published later is
        seen; raises ConnectionError when the subscription cannot be made."""
        if self._task is None or self._task.done():
            self._subscribed.clear()
            self._task = asyncio.create_task(self._read())
        if self._subscribed.is_set():
            return
        confirmed = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait({confirmed, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self._subscribed.is_set():
            confirmed.cancel()
            raise ConnectionError(f"cannot subscribe to the offers of node {self._node}")

    def expect(self, tenant: str, call: str) -> asyncio.Future[list[Offer]]:
        future: asyncio.Future[list[Offer]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((tenant, call), set()).add(future)
        return future

    def forget(self, tenant: str, call: str, future: asyncio.Future[list[Offer]]) -> None:
        waiting = self._waiters.get((tenant, call))
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiters[(tenant, call)]

    async def _read(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.psubscribe(keys.node_offers("*", self._node))
            async for message in pubsub.listen():
                kind = _s(message["type"])
                if kind == "psubscribe":
                    self._subscribed.set()
                elif kind == "pmessage":
                    self._deliver(_s(message["channel"]), _s(message["data"]))
        except RedisError as exc:
            # Waiters fall back on their timeout and re-read their call; the next wait
            # subscribes again.
            log.warning("offers subscription of node %s lost: %s", self._node, exc)
        finally:
            self._subscribed.clear()
            with contextlib.suppress(RedisError):
                await pubsub.aclose()

    def _deliver(self, channel: str, data: str) -> None:
        try:
            tenant = tenant_of_offers_channel(channel)
            offers = [Offer(o.call, o.agent, o.queue, self._node, o.lease_until_ms)
                      for o in parse_offer_message(data)]
        except ValueError:
            log.warning("malformed offer on %s: %r", channel, data)
            return
        for future in self._waiters.get((tenant, offers[0].call), ()):
            if not future.done():
                future.set_result(offers)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class AcdStore:
    """The ACD over an asyncio redis client, for node `node`."""

    def __init__(self, redis: aioredis.Redis, node: str, *,
                 clock: Callable[[], int] | None = None):
        self._redis = redis
        self.node = _check(NAME_RE, node, "node name")
        self._clock = clock
        self._scripts = {name: redis.register_script(source) for name, source in SCRIPTS.items()}
        self._listener: _OfferListener | None = None

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    async def _run(self, script: str, tenant: str, *args: str) -> AcdResult:
        _check(NAME_RE, tenant, "tenant name")
        now = "" if self._clock is None else str(int(self._clock()))
        raw = await self._scripts[script](
            keys=[keys.events_stream(tenant)], args=[tenant, self.node, now, *args])
        return decode_result(raw)

    async def _now_ms(self) -> int:
        if self._clock is not None:
            return int(self._clock())
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # ------------------------------------------------------------ queues and members

    async def configure_queue(self, tenant: str, queue: str,
                              settings: QueueSettings) -> AcdResult:
        _check(NAME_RE, queue, "queue name")
        pairs = [item for pair in settings.redis_fields().items() for item in pair]
        return await self._run("configure_queue", tenant, queue, *pairs)

    async def add_member(self, tenant: str, queue: str, extension: str,
                         penalty: int = 0, *, skill: int = DEFAULT_SKILL) -> AcdResult:
        """Adds the agent to the queue, or changes its penalty (lower is offered first) and
        its skill in this queue (higher is offered first by skills-weighted)."""
        _check(NAME_RE, queue, "queue name")
        _check(EXTENSION_RE, extension, "extension")
        if not 0 <= penalty <= MAX_PENALTY:
            raise ValueError(f"a penalty is 0 to {MAX_PENALTY}")
        if not 0 <= skill <= MAX_SKILL:
            raise ValueError(f"a skill is 0 to {MAX_SKILL}")
        return await self._run("add_member", tenant, queue, extension, str(penalty), str(skill))

    async def remove_member(self, tenant: str, queue: str, extension: str) -> AcdResult:
        _check(NAME_RE, queue, "queue name")
        _check(EXTENSION_RE, extension, "extension")
        return await self._run("remove_member", tenant, queue, extension)

    # ------------------------------------------------------------ agents

    async def register(self, tenant: str, extension: str, contact: str,
                       expires_seconds: int) -> None:
        """What Kamailio's KEMI does after each successful REGISTER (for tests and tools)."""
        _check(EXTENSION_RE, extension, "extension")
        await self._redis.set(keys.agent_contact(tenant, extension), contact,
                              ex=max(1, expires_seconds))

    async def unregister(self, tenant: str, extension: str) -> AcdResult:
        """The phone's registration ended: the agent goes OFFLINE unless on a call or in
        wrap-up (then it goes OFFLINE when that ends); a ringing reservation is withdrawn."""
        return await self._run("unregister", tenant, _check(EXTENSION_RE, extension, "extension"))

    async def login(self, tenant: str, extension: str) -> AcdResult:
        """OFFLINE -> READY (refused `not_registered` without a registered phone); the agent
        then takes the best waiting call of its queues."""
        return await self._run("login", tenant, _check(EXTENSION_RE, extension, "extension"))

    async def logout(self, tenant: str, extension: str, *, force: bool = False) -> AcdResult:
        """-> OFFLINE. A ringing reservation is withdrawn (the call keeps its place); an
        agent on a call is refused `on_call` unless `force` (a supervisor), which ends it."""
        _check(EXTENSION_RE, extension, "extension")
        return await self._run("logout", tenant, extension, "1" if force else "0")

    async def pause(self, tenant: str, extension: str, reason: str) -> AcdResult:
        """-> PAUSED(reason), from READY, WRAPUP, PAUSED (new reason) or RESERVED (the
        reservation is withdrawn); refused `on_call` during a call."""
        _check(EXTENSION_RE, extension, "extension")
        return await self._run("pause", tenant, extension, _check_text(reason, "reason"))

    async def unpause(self, tenant: str, extension: str) -> AcdResult:
        return await self._run("unpause", tenant, _check(EXTENSION_RE, extension, "extension"))

    async def set_agent_wrapup(self, tenant: str, extension: str, wrapup_ms: int | None) -> None:
        """The agent's own wrap-up time, overriding every queue's (None: the queue's)."""
        key = keys.agent_hash(tenant, _check(EXTENSION_RE, extension, "extension"))
        if wrapup_ms is None:
            await self._redis.hdel(key, "wrapup_ms")
        elif wrapup_ms < 0:
            raise ValueError("wrapup_ms cannot be negative")
        else:
            await self._redis.hset(key, "wrapup_ms", str(wrapup_ms))

    # ------------------------------------------------------------ calls

    async def enqueue(self, tenant: str, call: str, queue: str, *, caller: str = "",
                      did: str = "", priority: int = 0) -> AcdResult:
        """Queues a call held by this node; it is reserved at once if a member is READY.
        Refusals: `queue_full` and `no_agents` (overflow), `unknown_queue`, `call_exists`.
        extra["position"]: 1 = next in line, 0 = already reserved."""
        _check(CALL_ID_RE, call, "call id")
        _check(NAME_RE, queue, "queue name")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"a priority is 0 to {MAX_PRIORITY}")
        return await self._run("enqueue", tenant, call, queue, _check_text(caller, "caller"),
                               _check_text(did, "DID"), str(priority), self.node)

    async def answer(self, tenant: str, call: str, extension: str, *,
                     lease_until_ms: int | None = None) -> AcdResult:
        """The agent answered: ONCALL/CONNECTED only while its reservation holds (else
        `not_reserved`); with ringall the other ringing agents are READY again at once.
        `lease_until_ms`, the answered Offer's, fences the answer to that reservation: if
        it expired and the same agent was reserved for the call again, it is refused."""
        _check(CALL_ID_RE, call, "call id")
        _check(EXTENSION_RE, extension, "extension")
        return await self._run("answer", tenant, call, extension, _token(lease_until_ms))

    async def no_answer(self, tenant: str, call: str, extension: str,
                        outcome: NoAnswerOutcome = NoAnswerOutcome.NO_ANSWER,
                        pause_reason: str = "", *,
                        lease_until_ms: int | None = None) -> AcdResult:
        """The ring ended unanswered: the call goes back to its place (offered to others
        first), the agent READY again, or PAUSED with `pause_reason` or the queue's
        auto-pause reason. `lease_until_ms` fences it as for `answer`."""
        _check(CALL_ID_RE, call, "call id")
        _check(EXTENSION_RE, extension, "extension")
        return await self._run("no_answer", tenant, call, extension, _token(lease_until_ms),
                               str(outcome), _check_text(pause_reason, "pause reason"))

    async def hangup(self, tenant: str, call: str, reason: str = "caller") -> AcdResult:
        """A connected call ended: the agent goes into wrap-up (its own wrap-up time, else
        the call's queue's)."""
        _check(CALL_ID_RE, call, "call id")
        return await self._run("hangup", tenant, call, _check_text(reason, "reason"))

    async def abandon(self, tenant: str, call: str, reason: str = "caller_hangup") -> AcdResult:
        """The caller hung up while waiting or ringing: the call leaves the queue at once."""
        _check(CALL_ID_RE, call, "call id")
        return await self._run("abandon", tenant, call, _check_text(reason, "reason"))

    async def fail_over(self, tenant: str, call: str, reason: str) -> AcdResult:
        """The call leaves the queue for its failover destination (e.g. `max_wait`)."""
        _check(CALL_ID_RE, call, "call id")
        return await self._run("fail_over", tenant, call, _check_text(reason, "reason"))

    async def renew_call_lease(self, tenant: str, call: str) -> AcdResult:
        """The waiting session vouches for its caller. Refused `not_holder` once another
        node adopted the call, `call_over` once it left the queue."""
        return await self._run("renew_call_lease", tenant, _check(CALL_ID_RE, call, "call id"))

    async def adopt(self, tenant: str, call: str) -> AcdResult:
        """This node now holds the call (its node's session died); it keeps its place. The
        offers are its current reservations, for this node to dial."""
        return await self._run("adopt", tenant, _check(CALL_ID_RE, call, "call id"))

    async def tick(self, tenant: str) -> AcdResult:
        """Settles what is due (expired leases, wrap-ups over). Every script does so first;
        a periodic tick only matters when no other operation runs. extra: how many of each
        were settled (calls_failed_over, connected_calls_ended, reservations_expired,
        wrapups_ended)."""
        return await self._run("tick", tenant)

    async def renew_connected_calls(self, tenant: str) -> AcdResult:
        """This node vouches for the CONNECTED calls it holds: their leases start again
        (extra["renewed"]: how many). A node's FastAGI server runs it every third of the
        shortest call lease; when the node dies its calls end at their lease's end."""
        return await self._run("renew_connected_calls", tenant)

    async def wait_for_offer(self, tenant: str, call: str, timeout: float) -> list[Offer]:
        """The call's reservations, as soon as it has any; [] after `timeout` seconds or when
        the call is no longer queued. Event-driven: woken by the offers channel, never
        polling. A session loops: renew_call_lease, then wait_for_offer(lease / 3)."""
        if self._listener is None:
            self._listener = _OfferListener(self._redis, self.node)
        listener = self._listener
        await listener.started()
        future = listener.expect(tenant, call)
        try:
            status = await self.call_status(tenant, call)
            if status is None or status.state is not CallState.WAITING:
                return await self.current_offers(tenant, status)
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                return []
        finally:
            listener.forget(tenant, call, future)

    async def current_offers(self, tenant: str, status: CallStatus | None) -> list[Offer]:
        """The reservations a RESERVED call has now (none in any other state)."""
        if status is None or status.state is not CallState.RESERVED or not status.ringing:
            return []
        pipe = self._redis.pipeline(transaction=True)
        for agent in status.ringing:
            pipe.hget(keys.agent_hash(tenant, agent), "lease_until")
        lease_until = await pipe.execute()
        return [Offer(status.call, agent, status.queue, status.node, _int_or_none(lease) or 0)
                for agent, lease in zip(status.ringing, lease_until, strict=True)]

    # ------------------------------------------------------------ reads

    async def agent_status(self, tenant: str, extension: str) -> AgentStatus:
        _check(EXTENSION_RE, extension, "extension")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(keys.agent_hash(tenant, extension))
        pipe.exists(keys.agent_contact(tenant, extension))
        pipe.smembers(keys.agent_queues(tenant, extension))
        raw, registered, queues = await pipe.execute()
        return agent_status_from(extension, {_s(k): _s(v) for k, v in raw.items()},
                                 bool(registered), [_s(q) for q in queues],
                                 await self._now_ms())

    async def call_status(self, tenant: str, call: str) -> CallStatus | None:
        _check(CALL_ID_RE, call, "call id")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(keys.acd_call(tenant, call))
        pipe.smembers(keys.call_ringing(tenant, call))
        raw, ringing = await pipe.execute()
        if not raw:
            return None
        fields = {_s(k): _s(v) for k, v in raw.items()}
        state = CallState(fields["state"])
        position = None
        if state is CallState.WAITING:
            rank = await self._redis.zrank(keys.queue_waiting(tenant, fields["queue"]), call)
            position = None if rank is None else int(rank) + 1
        return CallStatus(
            call=call, queue=fields["queue"], state=state,
            priority=int(fields.get("priority", 0)),
            enqueued_at_ms=int(fields.get("enqueued_at", 0)), caller=fields.get("caller", ""),
            did=fields.get("did", ""), node=fields.get("node", ""),
            agent=fields.get("agent", ""), ringing=tuple(sorted(_s(a) for a in ringing)),
            lease_until_ms=_int_or_none(fields.get("lease_until")), position=position,
        )

    async def queue_stats(self, tenant: str, queue: str) -> QueueStats:
        """The queue's numbers now. O(calls waiting) for the longest wait: a supervisor's
        read, not the call path. Wrap-ups past due count as wrap-up until settled."""
        _check(NAME_RE, queue, "queue name")
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrange(keys.queue_waiting(tenant, queue), 0, -1, withscores=True)
        pipe.hgetall(keys.queue_agent_states(tenant, queue))
        pipe.hgetall(keys.queue_stats(tenant, queue))
        waiting, states, counters = await pipe.execute()
        return summarize_queue(
            queue, [(_s(m), float(score)) for m, score in waiting],
            {_s(k): _s(v) for k, v in states.items()},
            {_s(k): _s(v) for k, v in counters.items()}, await self._now_ms())


class AcdSync:
    """The agent requests over a synchronous redis client, for callers that run no event
    loop: Kamailio's KEMI (a REGISTER with Expires: 0, a disabled agent) and the CLI.
    Same scripts, same results as AcdStore; and the supervisor's reads of the CLI."""

    def __init__(self, redis: Any, node: str):
        self.node = _check(NAME_RE, node, "node name")
        self._redis = redis
        self._scripts = {name: redis.register_script(SCRIPTS[name])
                         for name in ("login", "logout", "pause", "unpause", "unregister",
                                      "tick")}

    def _run(self, script: str, tenant: str, *args: str) -> AcdResult:
        _check(NAME_RE, tenant, "tenant name")
        return decode_result(self._scripts[script](
            keys=[keys.events_stream(tenant)], args=[tenant, self.node, "", *args]))

    def login(self, tenant: str, extension: str) -> AcdResult:
        return self._run("login", tenant, _check(EXTENSION_RE, extension, "extension"))

    def logout(self, tenant: str, extension: str, *, force: bool = False) -> AcdResult:
        _check(EXTENSION_RE, extension, "extension")
        return self._run("logout", tenant, extension, "1" if force else "0")

    def pause(self, tenant: str, extension: str, reason: str) -> AcdResult:
        _check(EXTENSION_RE, extension, "extension")
        return self._run("pause", tenant, extension, _check_text(reason, "reason"))

    def unpause(self, tenant: str, extension: str) -> AcdResult:
        return self._run("unpause", tenant, _check(EXTENSION_RE, extension, "extension"))

    def unregister(self, tenant: str, extension: str) -> AcdResult:
        """Deletes the contact key and takes the agent OFFLINE at once (see AcdStore)."""
        return self._run("unregister", tenant, _check(EXTENSION_RE, extension, "extension"))

    def tick(self, tenant: str) -> AcdResult:
        return self._run("tick", tenant)

    # ------------------------------------------------------------ reads (the CLI)

    def _now_ms(self) -> int:
        seconds, micros = self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def agent_status(self, tenant: str, extension: str) -> AgentStatus:
        _check(NAME_RE, tenant, "tenant name")
        _check(EXTENSION_RE, extension, "extension")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(keys.agent_hash(tenant, extension))
        pipe.exists(keys.agent_contact(tenant, extension))
        pipe.smembers(keys.agent_queues(tenant, extension))
        raw, registered, queues = pipe.execute()
        return agent_status_from(extension, {_s(k): _s(v) for k, v in raw.items()},
                                 bool(registered), [_s(q) for q in queues], self._now_ms())

    def queue_known(self, tenant: str, queue: str) -> bool:
        """Whether the ACD has the queue (a FastAGI server pushed it from the config)."""
        _check(NAME_RE, tenant, "tenant name")
        _check(NAME_RE, queue, "queue name")
        return bool(self._redis.hexists(keys.queue_settings(tenant, queue), "strategy"))

    def queue_stats(self, tenant: str, queue: str) -> QueueStats:
        """As AcdStore.queue_stats."""
        _check(NAME_RE, tenant, "tenant name")
        _check(NAME_RE, queue, "queue name")
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrange(keys.queue_waiting(tenant, queue), 0, -1, withscores=True)
        pipe.hgetall(keys.queue_agent_states(tenant, queue))
        pipe.hgetall(keys.queue_stats(tenant, queue))
        waiting, states, counters = pipe.execute()
        return summarize_queue(
            queue, [(_s(m), float(score)) for m, score in waiting],
            {_s(k): _s(v) for k, v in states.items()},
            {_s(k): _s(v) for k, v in counters.items()}, self._now_ms())

    def queue_members(self, tenant: str, queue: str) -> list[MemberStatus]:
        """The queue's members, by penalty, then extension."""
        _check(NAME_RE, tenant, "tenant name")
        _check(NAME_RE, queue, "queue name")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(keys.queue_members(tenant, queue))
        pipe.hgetall(keys.queue_skills(tenant, queue))
        penalties, skills = pipe.execute()
        penalty = {_s(k): int(_s(v)) for k, v in penalties.items()}
        skill = {_s(k): int(_s(v)) for k, v in skills.items()}
        members = sorted(penalty, key=lambda ext: (penalty[ext], ext))
        pipe = self._redis.pipeline(transaction=True)
        for ext in members:
            pipe.hgetall(keys.agent_hash(tenant, ext))
            pipe.exists(keys.agent_contact(tenant, ext))
        raw = iter(pipe.execute())
        out = []
        for ext in members:
            fields = {_s(k): _s(v) for k, v in next(raw).items()}
            out.append(MemberStatus(
                extension=ext, penalty=penalty[ext], skill=skill.get(ext, DEFAULT_SKILL),
                state=AgentState(fields.get("state", AgentState.OFFLINE)),
                reason=fields.get("reason", ""), registered=bool(next(raw)),
                call=fields.get("call", "")))
        return out

    def waiting_calls(self, tenant: str, queue: str) -> list[WaitingCall]:
        """The queue's WAITING calls in the order they will be offered."""
        _check(NAME_RE, tenant, "tenant name")
        _check(NAME_RE, queue, "queue name")
        waiting = [(_s(m), float(score)) for m, score in
                   self._redis.zrange(keys.queue_waiting(tenant, queue), 0, -1,
                                      withscores=True)]
        pipe = self._redis.pipeline(transaction=True)
        for call, _ in waiting:
            pipe.hgetall(keys.acd_call(tenant, call))
        calls = [{_s(k): _s(v) for k, v in raw.items()} for raw in pipe.execute()]
        return waiting_calls_from(waiting, calls, self._now_ms())
