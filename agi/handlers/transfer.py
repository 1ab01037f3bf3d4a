"""`transfer?tenant=&target=&agent=&call=&transferer=`: a blind transfer (REFER) of a call.

Asterisk moved the transferred caller's channel to the omnicc-transfer context; `target`
is the Refer-To's user part, exactly as the phone sent it, `agent` the agent the call was
routed to (OMNICC_AGENT, may be empty), `call` the call's ACD id when it came through a
queue (OMNICC_QCALL), `transferer` Asterisk's BLINDTRANSFER (the agent's channel). The
transferring agent of a queue call is the one the ACD connected it to (omnicc/transfer.py
transferring_agent); a routed transfer ends that ACD call (the agent goes into wrap-up)
and clears OMNICC_QCALL, so the call's next transfer is the next agent's. The target is
checked and looked up in the channel's tenant only (omnicc/transfer.py): the answer is
the same as an inbound route's, and the dialplan carries it out at omnicc-from-kamailio's
`route` label. Any other number goes out by the
tenant's outbound routes as if the agent had dialled it (agi/handlers/outbound_call.py:
checked, routed, OMNICC_DEST=outbound once a trunk took it, carried out at
omnicc-from-agent's `outbound` label), when the tenant has outbound routes and the
transferring agent is one of its agents; when every trunk is full (or Redis fails) the
transfer is refused and the caller goes back to the agent. Either way
a `call_transferred` event says who transferred which call to what, and the outcome.

Attended transfers (REFER with Replaces) are carried out by Asterisk alone; the hang-up
handlers of the legs involved report them: `transfer_attended` (TransferAttended) when the
consultation's far-end leg ends bridged to the caller's call, `queue_transferred`
(QueueCallTransferred) when a queue call's agent leg was swapped out by its agent's
transfer.
"""

from __future__ import annotations

import logging
from typing import Protocol

from redis.exceptions import RedisError

from agi.handlers.outbound_call import SHOWN_DIALLED, OutboundCalls
from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.acd import AcdResult, CallStatus
from omnicc.agent_state import CallState
from omnicc.config import OmniccConfig, Tenant
from omnicc.events import EventLog
from omnicc.outbound import OutboundRefused
from omnicc.outbound_call import Q850_NO_CIRCUIT, REFUSAL_CAUSES
from omnicc.routing import RoutingError, agent_dial
from omnicc.transfer import (
    OutsideTarget,
    TransferKind,
    attended_target,
    decide_transfer,
    transferring_agent,
)

log = logging.getLogger("omnicc.agi.transfer")


class QueueCalls(Protocol):
    """What a transfer asks of the ACD (omnicc.acd.AcdStore)."""

    async def call_status(self, tenant: str, call: str) -> CallStatus | None: ...

    async def hangup(self, tenant: str, call: str, reason: str = "caller") -> AcdResult: ...


class Transfer:
    def __init__(self, config: OmniccConfig, events: EventLog,
                 outbound: OutboundCalls | None = None, acd: QueueCalls | None = None):
        self._config = config
        self._events = events
        self._outbound = outbound
        self._acd = acd

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant_name = req.params.get("tenant", "")
        target = req.params.get("target", "")
        tenant = self._config.tenant(tenant_name)
        queue_call = req.params.get("call", "")
        status = await self._queue_call(tenant, queue_call)
        from_agent = (transferring_agent(tenant, req.params.get("agent", ""), queue_call, status)
                      if tenant is not None else req.params.get("agent", ""))
        common = {"uniqueid": req.uniqueid, "kind": TransferKind.BLIND.value,
                  "from_agent": from_agent, "target": target,
                  "transferer": req.params.get("transferer", ""), "channel": req.channel}
        if status is not None and from_agent:
            common["from_queue"] = status.queue
        try:
            decision = decide_transfer(self._config, tenant_name, target)
        except OutsideTarget as exc:
            if (self._outbound is None or tenant is None or not tenant.outbound_routes
                    or tenant.agent(from_agent) is None):
                await self._refuse(session, tenant_name, target, exc, common)
                return
            try:
                await self._outbound.plan(tenant, target)
            except (OutboundRefused, RedisError) as refused:
                await self._refuse_outbound(session, tenant, target, refused, common)
                return
            # What omnicc-from-agent's outbound label and outbound_result read.
            await session.set_variable("OMNICC_DID", target)
            await session.set_variable("OMNICC_AGENT_FROM", from_agent)
            # A queue call goes out with its queue's caller_id, when it has one.
            if not await self._outbound.start(session, tenant, from_agent, target,
                                              queue=common.get("from_queue", "")):
                # Every trunk full, or Redis failed (outbound_failed says which): nothing
                # was dialled, and the caller goes back to the agent, not hung up on.
                await self._events.append(
                    tenant.name, "call_transferred", outcome="refused",
                    reason="no trunk of the outbound route could take the call",
                    returned_to=self._returnable(tenant, from_agent), **common)
                await self._return_to_agent(session, tenant, from_agent)
                return
            await self._events.append(tenant.name, "call_transferred", outcome="routed",
                                      destination="outbound", **common)
            await self._end_queue_call(session, tenant, queue_call, from_agent)
            return
        except RoutingError as exc:
            await self._refuse(session, tenant_name, target, exc, common)
            return
        await self._events.append(decision.tenant, "call_transferred", outcome="routed",
                                  destination=decision.destination, agent=decision.agent,
                                  queue=decision.queue, **common)
        if tenant is not None:
            await self._end_queue_call(session, tenant, queue_call, from_agent)
        await session.set_variable("OMNICC_DID", decision.did)
        await answer_decision(session, decision)

    async def _queue_call(self, tenant: Tenant | None, call: str) -> CallStatus | None:
        """The ACD's record of the queue call `call` (None: none, or it cannot be read)."""
        if not call or tenant is None or self._acd is None:
            return None
        try:
            return await self._acd.call_status(tenant.name, call)
        except (RedisError, ValueError) as exc:
            log.error("transfer: cannot read queue call %r: %s", call, exc)
            return None

    async def _end_queue_call(self, session: AGISession, tenant: Tenant, call: str,
                              agent: str) -> None:
        """The transferring agent's part of a queue call is over: the ACD ends it (the
        agent goes into wrap-up, as after a hang-up), and the channel forgets it."""
        if not call or not agent or self._acd is None:
            return
        try:
            result = await self._acd.hangup(tenant.name, call, "transferred")
        except (RedisError, ValueError) as exc:
            # The queue's hang-up handler ends it when the caller hangs up.
            log.error("transfer: cannot end queue call %s: %s", call, exc)
            return
        if not result.ok:
            log.warning("transfer: queue call %s not ended: %s", call, result.code)
        await session.set_variable("OMNICC_QCALL", "")

    @staticmethod
    def _returnable(tenant: Tenant | None, agent: str) -> str:
        """The agent a refused transfer goes back to: the transferring one, when known."""
        return agent if tenant is not None and agent and tenant.agent(agent) else ""

    async def _return_to_agent(self, session: AGISession, tenant: Tenant | None,
                               agent: str) -> None:
        """After a refusal (OMNICC_STATUS=ERROR, the error beep): the caller goes back to
        the agent who transferred it, a new call to its phone (the dialplan's refused
        label dials it as a route's agent destination), rather than being hung up on."""
        agent = self._returnable(tenant, agent)
        if tenant is None or not agent:
            return
        await session.set_variable("OMNICC_DEST", "agent")
        await session.set_variable("OMNICC_AGENT", agent)
        await session.set_variable("OMNICC_DIAL", agent_dial(tenant, agent))
        await session.set_variable("OMNICC_DID", agent)

    async def _refuse_outbound(self, session: AGISession, tenant: Tenant, target: str,
                               refused: OutboundRefused | RedisError,
                               common: dict[str, str]) -> None:
        """An outside number the outbound routes refuse (or Redis could not check): nothing
        is dialled; the events an agent's refused call has, then back to the agent."""
        req = session.request
        from_agent = common["from_agent"]
        log.info("transfer of %s to %r refused: %s", req.uniqueid, target, refused)
        await self._events.append(tenant.name, "call_transferred", outcome="refused",
                                  reason=str(refused),
                                  returned_to=self._returnable(tenant, from_agent), **common)
        outbound = {"uniqueid": req.uniqueid, "agent": from_agent, "channel": req.channel,
                    "dialled": target[:SHOWN_DIALLED]}
        if isinstance(refused, OutboundRefused):
            await self._events.append(tenant.name, "outbound_refused",
                                      refusal=refused.refusal.value, reason=str(refused),
                                      **outbound)
            await answer_unrouted(session, str(refused), REFUSAL_CAUSES[refused.refusal])
        else:
            await self._events.append(tenant.name, "outbound_failed", reason="redis_error",
                                      **outbound)
            await answer_unrouted(session, f"cannot check the do-not-call list: {refused}",
                                  Q850_NO_CIRCUIT)
        await self._return_to_agent(session, tenant, from_agent)

    async def _refuse(self, session: AGISession, tenant_name: str, target: str,
                      exc: RoutingError, common: dict[str, str]) -> None:
        req = session.request
        log.info("transfer of %s to %r refused: %s", req.uniqueid, target, exc)
        tenant = self._config.tenant(tenant_name)
        if tenant is not None:
            await self._events.append(
                tenant_name, "call_transferred", outcome="refused", reason=str(exc),
                returned_to=self._returnable(tenant, common["from_agent"]), **common)
        await answer_unrouted(session, str(exc))
        await self._return_to_agent(session, tenant, common["from_agent"])


class TransferAttended:
    """`transfer_attended?tenant=&agent=&target=&call=&consultation=&leg=&queue=&answering=
    &queue_call=`: an attended transfer, seen when the consultation call's far-end leg
    hangs up bridged to another call than its own (omnicc-agent-leg-hangup,
    omnicc-queue-leg-hangup): agent `agent` had called `target` (the consultation, linkedid
    `consultation`) and REFERred the caller's call (linkedid `call`) to it with Replaces;
    Asterisk bridged the two. `leg` says what the consultation reached (omnicc/transfer.py
    ConsultedLeg): an agent, an outside number (the trunk's leg), or a queue (`queue`, its
    agent `answering`, its ACD call `queue_call`). The parameters come from the dialplan
    and the config, never from the phone; the event is logged only when they hold together
    in the tenant (attended_target). A queue's ACD call, kept open when the consultation's
    own channel was hung up by the transfer (omnicc-queue-hangup), ends now: its agent
    talked with the transferred caller until this leg ended."""

    def __init__(self, config: OmniccConfig, events: EventLog, acd: QueueCalls | None = None):
        self._config = config
        self._events = events
        self._acd = acd

    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        tenant = self._config.tenant(p.get("tenant", ""))
        if tenant is None:
            log.warning("transfer_attended ignored: unknown tenant %r", p.get("tenant", ""))
            return
        if p.get("queue_call"):
            await _end_queue_call(self._acd, tenant, p["queue_call"], "caller")
        agent, dialled = p.get("agent", ""), p.get("target", "")
        try:
            if tenant.agent(agent) is None:
                raise RoutingError(f"{agent!r} is not an agent of tenant {tenant.name}")
            target = attended_target(tenant, p.get("leg", ""), dialled,
                                     queue=p.get("queue", ""), answering=p.get("answering", ""))
        except RoutingError as exc:
            log.warning("transfer_attended ignored: %s", exc)
            return
        fields = {"uniqueid": p.get("call", ""), "kind": TransferKind.ATTENDED.value,
                  "from_agent": agent, "target": dialled, "destination": target.destination,
                  "agent": target.agent, "queue": target.queue, "outcome": "bridged",
                  "consultation": p.get("consultation", ""),
                  "channel": session.request.channel}
        if target.route:
            fields.update(route=target.route, number=target.number)
        await self._events.append(tenant.name, "call_transferred", **fields)


class QueueCallTransferred:
    """`queue_transferred?tenant=&call=`: the agent's leg of queue call `call` was hung up
    by an attended transfer its agent made (Asterisk set ATTENDEDTRANSFER on that leg;
    omnicc-queue-leg-hangup). The caller talks on with the consultation's far end, so the
    agent's part is over: the ACD ends the call with reason `transferred` (the agent goes
    into wrap-up now, as after a blind transfer, not when the caller hangs up later)."""

    def __init__(self, config: OmniccConfig, acd: QueueCalls):
        self._config = config
        self._acd = acd

    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        tenant = self._config.tenant(p.get("tenant", ""))
        if tenant is None or not p.get("call"):
            log.warning("queue_transferred ignored: tenant %r, call %r", p.get("tenant", ""),
                        p.get("call", ""))
            return
        await _end_queue_call(self._acd, tenant, p["call"], "transferred")


async def _end_queue_call(acd: QueueCalls | None, tenant: Tenant, call: str,
                          reason: str) -> None:
    """Ends ACD call `call` when it is CONNECTED (its agent goes into wrap-up); a call
    already ended, or one the ACD does not know, is left alone."""
    if acd is None:
        return
    try:
        status = await acd.call_status(tenant.name, call)
        if status is None or status.state is not CallState.CONNECTED:
            return
        result = await acd.hangup(tenant.name, call, reason)
    except (RedisError, ValueError) as exc:
        # Its lease ends it if this node stops vouching for it.
        log.error("cannot end queue call %r: %s", call, exc)
        return
    if not result.ok:
        log.warning("queue call %s not ended: %s", call, result.code)
