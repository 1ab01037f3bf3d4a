"""The queue destination: the AGI scripts dialplan/omnicc.conf runs for a queued call.

- `queue_call?tenant=&queue=&call=&did=&priority=&announced=`: joins the queue (or, on a
  later entry with the same call id, keeps its place; a call another node held is adopted)
  and waits, event-driven, for a reservation: renew the call lease, then wait_for_offer (a
  third of the lease) raced against the caller's hang-up. Answers the dialplan with
  OMNICC_DEST=queue_agent (OMNICC_DIAL, OMNICC_AGENT, OMNICC_QUEUE_OFFERS
  ``EXT:LEASE_UNTIL/...``, OMNICC_QUEUE_RING, OMNICC_QUEUE_RECORDING: the file to record
  the answered call into, empty when the queue does not record), or the failover
  destination (max wait) or the overflow destination (queue full, no agent logged in) as
  inbound_route does (OMNICC_DEST agent | queue | hangup). A caller who hangs up while
  waiting is abandoned at once. In a queue with announcements, when one is due (a period
  after the call joined or after `announced`, ms) it returns OMNICC_DEST=queue_announce
  with OMNICC_ANNOUNCE_POSITION and OMNICC_ANNOUNCE_MINUTES (empty: not said; minutes 0:
  less than one) and OMNICC_QUEUE_ANNOUNCED; the dialplan plays it and comes back with
  the same call id, so the call keeps its place.
- `queue_answer?tenant=&call=&offers=&agent=&recording=`: run in Dial's U() subroutine on
  the agent's leg, before the bridge: confirms the reservation of `agent` (the leg's
  dialled extension; the only offer when empty), fenced by that offer's lease.
  OMNICC_STATUS=OK, or REFUSED when the reservation was lost (the dialplan hangs up the
  agent's leg). With `recording` (OMNICC_QUEUE_RECORDING) of this call, answered: sets
  OMNICC_RECORD to it (the dialplan starts MixMonitor; unset: no recording) and appends a
  call_recording event naming the file, for reports to index.
- `queue_result?tenant=&call=&offers=&dialstatus=`: after Dial returned. An unanswered
  ring goes back to the ACD (no_answer; the dialplan waits again, OMNICC_QUEUE_NEXT=wait);
  a connected call whose agent hung up ends (the agent goes into wrap-up,
  OMNICC_QUEUE_NEXT=end).
- `queue_end?tenant=&call=`: the caller channel's hang-up handler. A connected call ends
  (agent -> WRAPUP), a waiting or ringing one is abandoned, a finished one is left alone.

The ACD's scripts write the call events (call_enqueued, call_reserved, call_answered, ...);
these handlers only translate between the dialplan and omnicc.acd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Protocol

from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.acd import CALL_ID_RE, AcdResult, CallStatus, NoAnswerOutcome, Offer, QueueStats
from omnicc.agent_state import CallState, Refusal
from omnicc.announcements import Announcement, expected_wait_seconds, next_announcement_ms
from omnicc.config import EXTENSION_RE, Destination, OmniccConfig, Queue, Tenant
from omnicc.events import EventLog
from omnicc.routing import RoutingError, agent_dial, decide_destination

log = logging.getLogger("omnicc.agi.queue_call")

# Q.850 34 "no circuit available": the dialplan's failover for a request omnicc cannot serve.
Q850_NO_CIRCUIT = 34

_DIALSTATUS_OUTCOME = {
    "BUSY": NoAnswerOutcome.BUSY,
    "CHANUNAVAIL": NoAnswerOutcome.REJECTED,
    "CONGESTION": NoAnswerOutcome.REJECTED,
}


class QueueStore(Protocol):
    """What the queue handlers need of omnicc.acd.AcdStore (a fake one in unit tests)."""

    node: str

    async def call_status(self, tenant: str, call: str) -> CallStatus | None: ...

    async def enqueue(self, tenant: str, call: str, queue: str, *, caller: str = "",
                      did: str = "", priority: int = 0) -> AcdResult: ...

    async def adopt(self, tenant: str, call: str) -> AcdResult: ...

    async def renew_call_lease(self, tenant: str, call: str) -> AcdResult: ...

    async def wait_for_offer(self, tenant: str, call: str, timeout: float) -> list[Offer]: ...

    async def current_offers(self, tenant: str, status: CallStatus | None) -> list[Offer]: ...

    async def fail_over(self, tenant: str, call: str, reason: str) -> AcdResult: ...

    async def abandon(self, tenant: str, call: str, reason: str = "caller_hangup") -> AcdResult: ...

    async def answer(self, tenant: str, call: str, extension: str, *,
                     lease_until_ms: int | None = None) -> AcdResult: ...

    async def no_answer(self, tenant: str, call: str, extension: str,
                        outcome: NoAnswerOutcome = NoAnswerOutcome.NO_ANSWER,
                        pause_reason: str = "", *,
                        lease_until_ms: int | None = None) -> AcdResult: ...

    async def hangup(self, tenant: str, call: str, reason: str = "caller") -> AcdResult: ...

    async def queue_stats(self, tenant: str, queue: str) -> QueueStats: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


# Between the offers of OMNICC_QUEUE_OFFERS. Not a comma: the list is an argument of
# Dial's U() subroutine, where a comma would split it into several arguments.
OFFERS_SEPARATOR = "/"


def format_offers(offers: Sequence[Offer]) -> str:
    return OFFERS_SEPARATOR.join(f"{o.agent}:{o.lease_until_ms}" for o in offers)


def parse_offers(text: str) -> list[tuple[str, int | None]]:
    """``EXT:LEASE/...`` (from OMNICC_QUEUE_OFFERS; ``,`` between them is read too) as
    (extension, lease); bad items dropped."""
    out: list[tuple[str, int | None]] = []
    for item in text.replace(",", OFFERS_SEPARATOR).split(OFFERS_SEPARATOR):
        ext, _, lease = item.partition(":")
        if EXTENSION_RE.fullmatch(ext):
            out.append((ext, int(lease) if lease.isdigit() else None))
    return out


def offers_of(call: str, offers: Sequence[Offer]) -> list[Offer]:
    """The offers of `call` among those a script made. A script first settles what fell
    due (a wrap-up over, a lease run out), which can reserve agents for other calls too;
    their holders hear of those on their node's offers channel."""
    return [o for o in offers if o.call == call]


def no_answer_outcome(dialstatus: str) -> NoAnswerOutcome:
    return _DIALSTATUS_OUTCOME.get(dialstatus.upper(), NoAnswerOutcome.NO_ANSWER)


def _priority(text: str) -> int:
    return min(int(text), 99) if text.isdigit() else 0


def _caller(callerid: str) -> str:
    return "" if callerid in ("", "unknown") else callerid[:200]


def _ms_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 16 else None


def recording_file(tenant: str, queue: str, call: str, now_s: float) -> str:
    """Where an answered call of a recording queue is recorded, relative to Asterisk's
    monitor directory: {tenant}/{queue}/{date, UTC}/{call}.wav."""
    return f"{tenant}/{queue}/{time.strftime('%Y-%m-%d', time.gmtime(now_s))}/{call}.wav"


_RECORDING_RE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,31})/([a-z0-9][a-z0-9_-]{0,31})/"
                           r"[0-9]{4}-[0-9]{2}-[0-9]{2}/([A-Za-z0-9][A-Za-z0-9._-]{0,79})\.wav$")


def parse_recording_file(text: str) -> tuple[str, str, str] | None:
    """(tenant, queue, call) of a name recording_file made; None for anything else."""
    match = _RECORDING_RE.fullmatch(text)
    return None if match is None else (match[1], match[2], match[3])


class _Handler:
    def __init__(self, config: OmniccConfig, store: QueueStore,
                 events: EventLog | None = None):
        self._config = config
        self._store = store
        self._events = events

    async def _event(self, tenant: str, event: str, **fields: str) -> None:
        if self._events is not None:
            await self._events.append(tenant, event, **fields)

    def _target(self, session: AGISession) -> tuple[Tenant, str] | None:
        p = session.request.params
        tenant = self._config.tenant(p.get("tenant", ""))
        call = p.get("call", "")
        if tenant is None or not CALL_ID_RE.fullmatch(call):
            log.warning("%s: bad request %r (uniqueid %s)", session.request.script,
                        dict(p), session.request.uniqueid)
            return None
        return tenant, call


class QueueCall(_Handler):
    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        target = self._target(session)
        queue = target[0].queue(p.get("queue", "")) if target is not None else None
        if target is None or queue is None:
            await answer_unrouted(session, "queue_call: unknown tenant, queue or call id",
                                  Q850_NO_CIRCUIT)
            return
        tenant, call = target
        did = p.get("did", "")[:200]
        joined = await self._join(tenant, queue, call, _caller(session.request.callerid),
                                  did, _priority(p.get("priority", "")))
        if isinstance(joined, list) and not joined:
            joined = await self._wait(session, tenant, queue, call,
                                      _ms_or_none(p.get("announced", "")))
        if joined is None:  # the caller hung up: nothing more to tell the dialplan
            return
        if isinstance(joined, Destination):
            await self._route(session, tenant, did, joined)
            return
        if isinstance(joined, Announcement):
            await self._announce(session, tenant, queue, call, joined)
            return
        await self._dial(session, tenant, queue, call, joined)

    async def _join(self, tenant: Tenant, queue: Queue, call: str, caller: str, did: str,
                    priority: int) -> list[Offer] | Destination:
        """Offers to dial now, [] to wait, or where the call goes instead."""
        status = await self._store.call_status(tenant.name, call)
        if status is None:
            result = await self._store.enqueue(tenant.name, call, queue.name, caller=caller,
                                               did=did, priority=priority)
            if result.ok:
                return offers_of(call, result.offers)
            if result.code in (Refusal.QUEUE_FULL, Refusal.NO_AGENTS):
                log.info("call %s overflows queue %s: %s", call, queue.name, result.code)
                return queue.overflow_destination
            if result.code != Refusal.CALL_EXISTS:
                raise RuntimeError(f"enqueue of {call} in {queue.name}: {result.code}")
            status = await self._store.call_status(tenant.name, call)
            if status is None:
                raise RuntimeError(f"call {call} vanished")
        return await self._resume(tenant, queue, call, status)

    async def _resume(self, tenant: Tenant, queue: Queue, call: str,
                      status: CallStatus) -> list[Offer] | Destination:
        if status.state is CallState.FAILED_OVER:
            return queue.failover
        if status.state not in (CallState.WAITING, CallState.RESERVED):
            return Destination(kind="hangup")  # connected, ended or abandoned already
        if status.node != self._store.node:
            result = await self._store.adopt(tenant.name, call)
            if not result.ok:
                return Destination(kind="hangup")
            return offers_of(call, result.offers)
        return await self._store.current_offers(tenant.name, status)

    async def _wait(self, session: AGISession, tenant: Tenant, queue: Queue, call: str,
                    announced_ms: int | None = None,
                    ) -> list[Offer] | Destination | Announcement | None:
        """Waits for a reservation; None when the caller hung up (the call is abandoned).
        In a queue with announcements, returns the Announcement once one is due."""
        status = await self._store.call_status(tenant.name, call)
        if status is None:
            return Destination(kind="hangup")
        deadline_ms = status.enqueued_at_ms + queue.max_wait_seconds * 1000
        announce_ms = (next_announcement_ms(status.enqueued_at_ms, announced_ms,
                                            queue.announce_frequency_seconds)
                       if queue.announces else None)
        step = queue.call_lease_seconds / 3
        hung_up = asyncio.ensure_future(session.wait_for_hangup())
        try:
            while True:
                remaining_ms = deadline_ms - _now_ms()
                if remaining_ms <= 0:
                    result = await self._store.fail_over(tenant.name, call, "max_wait")
                    if result.ok:
                        return queue.failover
                else:
                    result = await self._store.renew_call_lease(tenant.name, call)
                if not result.ok:
                    status = await self._store.call_status(tenant.name, call)
                    if status is None:
                        return Destination(kind="hangup")
                    return await self._resume(tenant, queue, call, status)
                timeout_ms = remaining_ms
                if announce_ms is not None:
                    # Just renewed: the lease outlasts the announcement (config checks it).
                    if _now_ms() >= announce_ms:
                        return await self._announcement(tenant, queue, call)
                    timeout_ms = min(timeout_ms, announce_ms - _now_ms())
                offer = asyncio.ensure_future(self._store.wait_for_offer(
                    tenant.name, call, max(0.05, min(step, timeout_ms / 1000))))
                await asyncio.wait({offer, hung_up}, return_when=asyncio.FIRST_COMPLETED)
                if hung_up.done():
                    offer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await offer
                    await self._store.abandon(tenant.name, call, "caller_hangup")
                    return None
                offers = offer.result()
                if offers:
                    return offers
        finally:
            hung_up.cancel()

    async def _announcement(self, tenant: Tenant, queue: Queue,
                            call: str) -> Announcement | list[Offer] | Destination:
        """What to tell the caller now; the offers instead when an agent was just reserved."""
        status = await self._store.call_status(tenant.name, call)
        if status is None or status.state is not CallState.WAITING or status.position is None:
            if status is None:
                return Destination(kind="hangup")
            return await self._resume(tenant, queue, call, status)
        expected = None
        if queue.announce_expected_wait:
            stats = await self._store.queue_stats(tenant.name, queue.name)
            expected = expected_wait_seconds(status.position, stats, queue.wrapup_seconds)
        return Announcement(position=status.position if queue.announce_position else None,
                            expected_wait_seconds=expected)

    async def _announce(self, session: AGISession, tenant: Tenant, queue: Queue, call: str,
                        announcement: Announcement) -> None:
        def said(value: int | None) -> str:
            return "" if value is None else str(value)

        await self._event(tenant.name, "call_announced", call=call, queue=queue.name,
                          position=said(announcement.position),
                          expected_wait_seconds=said(announcement.expected_wait_seconds))
        await session.set_variable("OMNICC_DEST", "queue_announce")
        await session.set_variable("OMNICC_ANNOUNCE_POSITION", said(announcement.position))
        await session.set_variable("OMNICC_ANNOUNCE_MINUTES", said(announcement.minutes))
        await session.set_variable("OMNICC_QUEUE_ANNOUNCED", str(_now_ms()))
        await session.set_variable("OMNICC_STATUS", "OK")

    async def _route(self, session: AGISession, tenant: Tenant, did: str,
                     dest: Destination) -> None:
        try:
            decision = decide_destination(tenant, did, dest)
        except RoutingError as exc:
            await answer_unrouted(session, str(exc), Q850_NO_CIRCUIT)
            return
        await answer_decision(session, decision)

    async def _dial(self, session: AGISession, tenant: Tenant, queue: Queue, call: str,
                    offers: Sequence[Offer]) -> None:
        await session.set_variable("OMNICC_DEST", "queue_agent")
        await session.set_variable("OMNICC_AGENT", offers[0].agent)
        await session.set_variable("OMNICC_DIAL",
                                   "&".join(agent_dial(tenant, o.agent) for o in offers))
        await session.set_variable("OMNICC_QUEUE_OFFERS", format_offers(offers))
        await session.set_variable("OMNICC_QUEUE_RING", str(queue.ring_timeout_seconds))
        await session.set_variable(
            "OMNICC_QUEUE_RECORDING",
            recording_file(tenant.name, queue.name, call, time.time())
            if queue.record in ("always", "on_demand") else "")
        await session.set_variable("OMNICC_STATUS", "OK")


def answering_offer(offers: Sequence[tuple[str, int | None]],
                    agent: str) -> tuple[str, int | None] | None:
    """Which offer the answering leg holds: the one of `agent` (the leg's dialled
    extension), or the only one when the leg's extension is not known."""
    if agent:
        return next((o for o in offers if o[0] == agent), None)
    return offers[0] if len(offers) == 1 else None


class QueueAnswer(_Handler):
    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        target = self._target(session)
        offer = answering_offer(parse_offers(p.get("offers", "")), p.get("agent", ""))
        if target is None or offer is None:
            log.warning("queue_answer: no offer for agent %r in %r", p.get("agent", ""),
                        p.get("offers", ""))
            await session.set_variable("OMNICC_STATUS", "REFUSED")
            return
        tenant, call = target
        agent, lease = offer
        result = await self._store.answer(tenant.name, call, agent, lease_until_ms=lease)
        if not result.ok:
            log.info("answer of %s by %s refused: %s", call, agent, result.code)
        recording = p.get("recording", "")
        if result.ok and recording:
            # Only a name of this call's form: it becomes a file path and a report entry.
            parsed = parse_recording_file(recording)
            queue = tenant.queue(parsed[1]) if parsed is not None else None
            if parsed is None or queue is None or parsed[0] != tenant.name or parsed[2] != call:
                log.warning("queue_answer: recording %r is not one of call %s", recording, call)
            elif queue.record == "always":
                await self._event(tenant.name, "call_recording", call=call, queue=queue.name,
                                  agent=agent, recording=recording, mode="always")
                # The agent's leg is new for each Dial: nothing stale to clear.
                await session.set_variable("OMNICC_RECORD", recording)
            elif queue.record == "on_demand":
                # The agent's phone may start it (queue_record, the *3 feature).
                await session.set_variable("OMNICC_RECORD_ON_DEMAND", recording)
        await session.set_variable("OMNICC_STATUS", "OK" if result.ok else "REFUSED")


class QueueRecord(_Handler):
    """`queue_record?recording=&agent=&action=start|stop`: the agent pressed the on-demand
    recording code (features.conf applicationmap, dialplan omnicc-record-toggle) during an
    answered call of an `on_demand` queue. Start: OMNICC_RECORD is the file (the call's
    name, as queue_answer gave it; the dialplan MixMonitors into it, appending when it is
    started again) and a call_recording event indexes it with its call; stop: a
    call_recording_stopped event. Anything else: OMNICC_RECORD stays empty."""

    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        recording, agent, action = p.get("recording", ""), p.get("agent", ""), p.get("action")
        parsed = parse_recording_file(recording)
        tenant = self._config.tenant(parsed[0]) if parsed is not None else None
        queue = tenant.queue(parsed[1]) if tenant is not None and parsed is not None else None
        if (parsed is None or tenant is None or queue is None or queue.record != "on_demand"
                or action not in ("start", "stop") or not EXTENSION_RE.fullmatch(agent)):
            log.warning("queue_record: refused %r (uniqueid %s)", dict(p),
                        session.request.uniqueid)
            await session.set_variable("OMNICC_STATUS", "REFUSED")
            return
        call = parsed[2]
        if action == "start":
            await self._event(tenant.name, "call_recording", call=call, queue=queue.name,
                              agent=agent, recording=recording, mode="on_demand")
            await session.set_variable("OMNICC_RECORD", recording)
        else:
            await self._event(tenant.name, "call_recording_stopped", call=call,
                              queue=queue.name, agent=agent, recording=recording)
        await session.set_variable("OMNICC_STATUS", "OK")


class QueueResult(_Handler):
    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        target = self._target(session)
        if target is None:
            await session.set_variable("OMNICC_QUEUE_NEXT", "end")
            return
        tenant, call = target
        status = await self._store.call_status(tenant.name, call)
        state = status.state if status is not None else None
        if state is CallState.CONNECTED:
            await self._store.hangup(tenant.name, call, "agent")
            next_step = "end"
        elif state in (CallState.WAITING, CallState.RESERVED):
            outcome = no_answer_outcome(p.get("dialstatus", ""))
            for agent, lease in parse_offers(p.get("offers", "")):
                await self._store.no_answer(tenant.name, call, agent, outcome,
                                            lease_until_ms=lease)
            next_step = "wait"
        else:
            next_step = "end"
        await session.set_variable("OMNICC_QUEUE_NEXT", next_step)


class QueueEnd(_Handler):
    """Runs on a channel already gone: it only tells the ACD, it sends no command."""

    async def __call__(self, session: AGISession) -> None:
        target = self._target(session)
        if target is None:
            return
        tenant, call = target
        status = await self._store.call_status(tenant.name, call)
        if status is None:
            return
        if status.state is CallState.CONNECTED:
            await self._store.hangup(tenant.name, call, "caller")
        elif status.state in (CallState.WAITING, CallState.RESERVED):
            await self._store.abandon(tenant.name, call, "caller_hangup")
