"""Outbound calls: an agent's call to a number that is not an agent's extension, and an
inbound call that an external: or pbx: destination sends out again (a forwarded call).

Three AGI steps on the calling channel (dialplan/omnicc.conf [omnicc-from-agent]):

- agent_call (agi/handlers/agent_call.py) hands the call to OutboundCalls.start(): the
  dialled number is checked and routed (Tenant.plan_outbound); refused numbers end with
  OMNICC_STATUS=ERROR and a cause (484 invalid, 404 no route, 403 do-not-call) and nothing
  is dialled. Otherwise the first trunk of the route with a free channel is chosen:
  OMNICC_DIAL, OMNICC_OUTBOUND_TRUNK, and only then OMNICC_DEST=outbound (a transfer
  whose trunks are all full is not sent out: it goes back to its agent). forward_call
  (agi/handlers/forward_call.py) hands a forwarded call to OutboundCalls.forward(): the
  same, from the destination (omnicc/outbound_call.py forward_plan), with no agent;
  OMNICC_OUTBOUND_FOR names the destination for the next steps.
  Each trunk attempt sets CALLERID(num) to the number omnicc/caller_id.py chooses for that
  trunk (queue, route, trunk, or the caller's own, which OMNICC_CALLER_NUM keeps so that a
  later trunk can put it back); OMNICC_OUTBOUND_QUEUE names the queue whose caller_id
  applies.
- `outbound_result?tenant=&dialled=&agent=&trunk=&dialstatus=&forward=&queue=&caller=`
  after each Dial() that returned: the trunk's SIP response (HANGUPCAUSE(<channel>,tech))
  and decide_after_dial() say whether the next trunk is tried (OMNICC_OUTBOUND_NEXT=dial
  and a new OMNICC_DIAL) or the call ends with OMNICC_CAUSE (busy 486 stays busy: never
  another carrier).
- `outbound_end?tenant=&trunk=[&channel=]` from a hang-up handler: the trunk channel is
  released. The trunk's own leg gives it back when it ends, naming the calling channel's
  uniqueid (`channel`): whatever the calling channel became meanwhile (an attended
  transfer hangs it up while the leg carries the customer on, with the same linkedid or
  another). The calling channel's handler gives back only a channel no leg holds.

Who gives a counted channel back (docs/routing.md "Channel limits"): the calling channel
holds it from acquire on, named by OMNICC_OUTBOUND_HELD. Before the first acquire the AGI
pushes the calling channel's hang-up handler (omnicc-outbound-hangup), so a hang-up
anywhere after it (in this AGI, or in the dialplan before Dial()) releases; an exception
in the AGI after an acquire releases at once. outbound_result releases after each Dial()
and clears OMNICC_OUTBOUND_HELD; the trunk leg that Dial() created releases when it ends.

The plan is made again from the config at each step, never carried in channel variables
a caller could influence. Trunks with max_channels are counted across all Asterisk nodes
(omnicc/channel_limit.py) while a call holds them; emergency numbers are never refused by
the limit (counted over it). Every decision is appended to the tenant's event stream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from agi.protocol import AGISession
from omnicc.channel_limit import ChannelGrant, Renewal
from omnicc.config import Destination, OmniccConfig, Tenant
from omnicc.events import EventLog
from omnicc.outbound import (
    NextStep,
    OutboundPlan,
    OutboundRefused,
    decide_after_dial,
    sip_code_from_cause,
)
from omnicc.outbound_call import (
    Q850_NO_CIRCUIT,
    Q850_TRUNKS_FAILED,
    REFUSAL_CAUSES,
    dialled_trunk_channel,
    forward_plan,
    stop_cause,
    trunk_caller_id,
    trunk_dial,
    trunks_after,
)

log = logging.getLogger("omnicc.agi.outbound")

# What an event shows of a dialled string (one refused may be hundreds of characters).
SHOWN_DIALLED = 64
# The calling channel's hang-up handler (dialplan/omnicc.conf): gives back the trunk
# channel OMNICC_OUTBOUND_HELD names, unless the trunk's answered leg will.
OUTBOUND_HANGUP_HANDLER = "omnicc-outbound-hangup,s,1"


@dataclass(frozen=True)
class CallOrigin:
    """Whose call goes out, as the caller ID precedence needs it: the caller's own number
    (before omnicc changed it), whether it is an outside caller's call forwarded, and the
    caller_id of the queue it went out of ("" : none)."""

    caller: str
    forwarded: bool = False
    queue_caller_id: str = ""


def own_number(callerid: str) -> str:
    """The caller's number as Asterisk gave it to the AGI ("unknown" when it had none)."""
    return "" if callerid == "unknown" else callerid


class ChannelStore(Protocol):
    """What outbound calls need of omnicc.channel_limit.AsyncChannelLimits."""

    lease_ms: int

    async def acquire(self, tenant: str, trunk: str, channel: str, limit: int,
                      force: bool = False) -> ChannelGrant: ...

    async def release(self, tenant: str, trunk: str, channel: str) -> bool: ...

    async def renew_many(self, tenant: str, trunk: str, channels: list[str]) -> Renewal: ...


class DoNotCallCheck(Protocol):
    """Which of `numbers` are on the tenant's do-not-call list (omnicc/do_not_call.py
    listed_numbers); RedisError when it cannot be asked."""

    async def __call__(self, tenant: str, numbers: tuple[str, ...]) -> frozenset[str]: ...


class HeldTrunkChannels:
    """The trunk channels this node's calls hold. A call sits in Dial() with no AGI session
    for as long as it lasts, so the server renews their leases itself, every third of a
    lease; a node that dies stops renewing and its channels leave the count at lease end."""

    def __init__(self, store: ChannelStore):
        self._store = store
        self._held: dict[tuple[str, str], set[str]] = {}

    @property
    def renew_interval(self) -> float:
        return self._store.lease_ms / 3000

    def held(self, tenant: str, trunk: str) -> frozenset[str]:
        return frozenset(self._held.get((tenant, trunk), ()))

    async def acquire(self, tenant: str, trunk: str, channel: str, limit: int,
                      force: bool = False) -> ChannelGrant:
        grant = await self._store.acquire(tenant, trunk, channel, limit, force)
        if grant.acquired:
            self._held.setdefault((tenant, trunk), set()).add(channel)
        return grant

    async def release(self, tenant: str, trunk: str, channel: str) -> bool:
        held = self._held.get((tenant, trunk))
        if held is not None:
            held.discard(channel)
            if not held:
                del self._held[(tenant, trunk)]
        return await self._store.release(tenant, trunk, channel)

    async def renew_all(self) -> int:
        """Renews every held channel's lease, one script per trunk; how many."""
        renewed = 0
        for (tenant, trunk), channels in list(self._held.items()):
            if channels:
                sent = sorted(channels)
                renewal = await self._store.renew_many(tenant, trunk, sent)
                renewed += len(sent)
                if renewal.lapsed:
                    log.warning("trunk %s/%s: leases of %s had lapsed; counted again",
                                tenant, trunk, ", ".join(renewal.lapsed))
                # A channel released while the renewal was in flight may have been
                # removed before the renewal (another connection) counted it again:
                # removed once more, it does not stay counted for a whole lease.
                for channel in set(sent) - self.held(tenant, trunk):
                    await self._store.release(tenant, trunk, channel)
        return renewed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                await self.renew_all()
            except RedisError as exc:
                log.error("cannot renew trunk channel leases: %s", exc)


class OutboundCalls:
    """The outbound steps, shared by agent_call, outbound_result and outbound_end."""

    def __init__(self, config: OmniccConfig, events: EventLog,
                 channels: HeldTrunkChannels | None,
                 do_not_call: DoNotCallCheck | None = None):
        self._config = config
        self._events = events
        # None: no Redis to count channels in (unit tests of routing alone); max_channels
        # is then not enforced.
        self._channels = channels
        # None: no do-not-call list is checked (unit tests of routing alone).
        self._do_not_call = do_not_call

    async def plan(self, tenant: Tenant, dialled: str) -> OutboundPlan:
        """The plan for `dialled`, the tenant's do-not-call list asked (one Redis round
        trip for the numbers as dialled and as sent) unless it is an emergency number;
        OutboundRefused, or RedisError when the list cannot be asked."""
        plan = tenant.plan_outbound(dialled)
        if plan.emergency or self._do_not_call is None:
            return plan
        listed = await self._do_not_call(tenant.name, (plan.dialled, plan.number))
        return tenant.plan_outbound(dialled, listed.__contains__) if listed else plan

    async def start(self, session: AGISession, tenant: Tenant, agent: str,
                    dialled: str, queue: str = "") -> bool:
        """Agent `agent` (checked by the caller of this) dialled `dialled`; `queue`: the
        queue whose caller_id applies (a transfer of one of its calls), "" none. True when
        a trunk takes the call (OMNICC_DEST=outbound, OMNICC_STATUS=OK); False when it is
        refused or no trunk can take it (OMNICC_STATUS=ERROR, OMNICC_CAUSE)."""
        req = session.request
        common = {"uniqueid": req.uniqueid, "agent": agent, "channel": req.channel}
        return await self._go_out(session, tenant, dialled, None, queue, common)

    async def forward(self, session: AGISession, tenant: Tenant, forward: str,
                      queue: str = "") -> bool:
        """An inbound call sent out again to `forward` (external:NUMBER or pbx:EXT@TRUNK,
        one of the tenant's own destinations: Tenant.forward_destinations), no agent;
        `queue`: the queue the call came through, whose caller_id applies. True as
        start()."""
        req = session.request
        common = {"uniqueid": req.uniqueid, "agent": "", "channel": req.channel,
                  "forward": forward[:SHOWN_DIALLED]}
        if forward not in tenant.forward_destinations:
            # Only routing answers set it, from the config: a bug, not a caller.
            log.error("call %s: %r is no forward destination of tenant %s", req.uniqueid,
                      forward, tenant.name)
            await _fail(session, f"{forward!r} is no forward destination", Q850_NO_CIRCUIT)
            return False
        dest = Destination.parse(forward)
        return await self._go_out(session, tenant, dest.target, dest, queue, common)

    async def _go_out(self, session: AGISession, tenant: Tenant, dialled: str,
                      forward: Destination | None, queue: str,
                      common: dict[str, str]) -> bool:
        req = session.request
        shown = dialled[:SHOWN_DIALLED]
        try:
            if forward is not None and forward.kind == "pbx":
                plan = forward_plan(tenant, forward)  # no route: the PBX trunk itself
            else:
                plan = await self.plan(tenant, dialled)
        except OutboundRefused as exc:
            log.info("outbound call %s refused: %s", req.uniqueid, exc)
            await self._events.append(tenant.name, "outbound_refused", dialled=shown,
                                      refusal=exc.refusal.value, reason=str(exc), **common)
            await _fail(session, str(exc), REFUSAL_CAUSES[exc.refusal])
            return False
        except RedisError as exc:
            # Never dialled unchecked; nothing was dialled, so another node may try.
            log.error("outbound call %s: cannot check the do-not-call list: %s",
                      req.uniqueid, exc)
            await self._events.append(tenant.name, "outbound_failed", dialled=shown,
                                      reason="redis_error", **common)
            await _fail(session, f"cannot check the do-not-call list: {exc}",
                        Q850_NO_CIRCUIT)
            return False
        except ValueError as exc:  # a PBX trunk gone: the config checked it at load
            log.error("call %s: %s", req.uniqueid, exc)
            await _fail(session, str(exc), Q850_NO_CIRCUIT)
            return False
        origin = CallOrigin(caller=own_number(req.callerid), forwarded=forward is not None,
                            queue_caller_id=self._queue_caller_id(tenant, queue))
        await self._events.append(
            tenant.name, "outbound_routed", dialled=plan.dialled, route=plan.route,
            number=plan.number, trunks=",".join(plan.trunks), caller_id=plan.caller_id,
            emergency="1" if plan.emergency else "0", queue=queue, **common)
        # What outbound_result needs to make the same choices again at the next trunk.
        await session.set_variable("OMNICC_CALLER_NUM", origin.caller)
        if forward is not None:
            await session.set_variable("OMNICC_OUTBOUND_FOR", str(forward))
        if queue:
            await session.set_variable("OMNICC_OUTBOUND_QUEUE", queue)
        if self._counts_channels(tenant, plan):
            # Before any channel is counted: from here on the channel's hang-up, wherever
            # it comes (this AGI, the dialplan before Dial()), gives back what it holds.
            await session.set_variable("CHANNEL(hangup_handler_push)",
                                       OUTBOUND_HANGUP_HANDLER)
        # OMNICC_DEST only once a trunk took the call: a transfer that finds none goes
        # back to its agent instead (agi/handlers/transfer.py).
        return await self._dial_first_free(
            session, tenant, plan, plan.trunks, common, origin, origin.caller,
            then=(("OMNICC_DEST", "outbound"), ("OMNICC_STATUS", "OK")))

    def _counts_channels(self, tenant: Tenant, plan: OutboundPlan) -> bool:
        """Whether a trunk of `plan` may hold a counted channel."""
        if self._channels is None:
            return False
        return any((trunk := tenant.trunk(name)) is not None and trunk.max_channels
                   for name in plan.trunks)

    def _queue_caller_id(self, tenant: Tenant, queue: str) -> str:
        found = tenant.queue(queue) if queue else None
        if queue and found is None:
            log.error("tenant %s has no queue %r: its caller ID is not used", tenant.name,
                      queue)
        return found.caller_id if found is not None else ""

    async def after_dial(self, session: AGISession) -> None:
        req = session.request
        p = req.params
        tenant = self._config.tenant(p.get("tenant", ""))
        agent, trunk = p.get("agent", ""), p.get("trunk", "")
        if tenant is None:
            log.error("outbound_result for unknown tenant %r (uniqueid %s)",
                      p.get("tenant", ""), req.uniqueid)
            await _stop(session, Q850_TRUNKS_FAILED)
            return
        common = {"uniqueid": req.uniqueid, "agent": agent, "channel": req.channel}
        forward, queue = p.get("forward", ""), p.get("queue", "")
        try:
            if forward:
                # A forwarded call: planned again from its destination, which must be one
                # of the tenant's own (never an agent's: no agent dialled anything).
                if forward not in tenant.forward_destinations:
                    raise ValueError(f"{forward!r} is no forward destination")
                common["forward"] = forward
                plan = forward_plan(tenant, Destination.parse(forward))
            else:
                plan = tenant.plan_outbound(p.get("dialled", ""))
            remaining = trunks_after(plan, trunk)
        except (OutboundRefused, ValueError) as exc:
            # The dialplan only asks about calls agent_call routed: a bug, not a caller.
            log.error("outbound_result %s: %s", req.uniqueid, exc)
            await self._release(tenant, trunk, req.uniqueid)
            await _stop(session, Q850_TRUNKS_FAILED)
            return
        if await self._release(tenant, trunk, req.uniqueid):
            # Given back: the hang-up handler has nothing left to (the next trunk's
            # acquire names its own).
            await session.set_variable("OMNICC_OUTBOUND_HELD", "")

        tech_cause, trunk_cause = await _trunk_causes(session, tenant.name, trunk)
        sip_code = sip_code_from_cause(tech_cause)
        dialstatus = p.get("dialstatus", "")
        try:
            decision = decide_after_dial(dialstatus, trunk_cause, sip_code)
        except ValueError as exc:
            log.error("outbound_result %s: %s", req.uniqueid, exc)
            await _stop(session, Q850_TRUNKS_FAILED)
            return
        await self._events.append(
            tenant.name, "outbound_dial_result", route=plan.route, trunk=trunk,
            dialstatus=dialstatus, sip_code="" if sip_code is None else str(sip_code),
            cause="" if trunk_cause is None else str(trunk_cause),
            decision=decision.step.value, reason=decision.reason, **common)
        if decision.step is NextStep.TRY_NEXT_TRUNK and remaining:
            origin = CallOrigin(caller=p.get("caller", ""), forwarded=bool(forward),
                                queue_caller_id=self._queue_caller_id(tenant, queue))
            tried = tenant.trunk(trunk)
            assert tried is not None  # trunks_after() found it in the plan
            # The number the channel presents now: the one chosen for the trunk just tried.
            current = trunk_caller_id(tried, plan, caller=origin.caller,
                                      forwarded=origin.forwarded,
                                      queue_caller_id=origin.queue_caller_id).number
            await self._dial_first_free(session, tenant, plan, remaining, common, origin,
                                        current, then=(("OMNICC_OUTBOUND_NEXT", "dial"),))
            return
        if decision.step is NextStep.TRY_NEXT_TRUNK:
            await self._events.append(tenant.name, "outbound_failed", route=plan.route,
                                      reason="all_trunks_failed", **common)
        await _stop(session, stop_cause(decision, trunk_cause))

    async def end(self, session: AGISession) -> None:
        p = session.request.params
        tenant = self._config.tenant(p.get("tenant", ""))
        # `channel`: the calling channel's uniqueid, when the trunk's own leg reports its
        # end (an attended transfer moved it into the caller's call: omnicc-agent-leg).
        channel = p.get("channel") or session.request.uniqueid
        if tenant is not None and p.get("trunk"):
            await self._release(tenant, p["trunk"], channel)

    async def _dial_first_free(self, session: AGISession, tenant: Tenant,
                               plan: OutboundPlan, candidates: tuple[str, ...],
                               common: dict[str, str], origin: CallOrigin,
                               current_number: str,
                               then: tuple[tuple[str, str], ...] = ()) -> bool:
        """Sets OMNICC_DIAL for the first of `candidates` with a free channel, and
        CALLERID(num) to that trunk's caller ID when it is not `current_number` already,
        then the variables `then` names, and says True; else ends the call with 503 (no
        circuit) and says False. A channel counted here is given back at once when
        anything after its acquire fails or the channel hangs up meanwhile."""
        channel = session.request.uniqueid
        for trunk_name in candidates:
            trunk = tenant.trunk(trunk_name)
            assert trunk is not None  # the config refuses routes naming unknown trunks
            held = False
            if trunk.max_channels and self._channels is not None:
                try:
                    grant = await self._channels.acquire(
                        tenant.name, trunk.name, channel, trunk.max_channels,
                        force=plan.emergency)
                except RedisError as exc:
                    if not plan.emergency:
                        log.error("trunk %s: cannot count channels: %s", trunk.name, exc)
                        await self._events.append(tenant.name, "outbound_failed",
                                                  route=plan.route, reason="redis_error",
                                                  **common)
                        # Nothing dialled yet: another node may try; else final.
                        await _fail(session, f"cannot count channels: {exc}",
                                    Q850_NO_CIRCUIT if candidates == plan.trunks
                                    else Q850_TRUNKS_FAILED)
                        return False
                    # An emergency call goes out uncounted rather than not at all.
                    log.error("trunk %s: emergency call %s dialled uncounted: %s",
                              trunk.name, channel, exc)
                else:
                    if not grant.acquired:
                        await self._events.append(
                            tenant.name, "outbound_trunk_full", route=plan.route,
                            trunk=trunk.name, in_use=str(grant.in_use),
                            limit=str(grant.limit), **common)
                        continue
                    held = True
            caller_id = trunk_caller_id(trunk, plan, caller=origin.caller,
                                        forwarded=origin.forwarded,
                                        queue_caller_id=origin.queue_caller_id)
            try:
                if held:
                    # Set at once: the calling channel's hang-up handler gives back what
                    # this names (the handler was pushed before: _go_out).
                    await session.set_variable("OMNICC_OUTBOUND_HELD", trunk.name)
                await session.set_variable("OMNICC_OUTBOUND_TRUNK", trunk.name)
                if caller_id.number != current_number:
                    # Configured numbers were checked at load; the caller's own is put back.
                    await session.set_variable("CALLERID(num)", caller_id.number)
                await session.set_variable("OMNICC_DIAL",
                                           trunk_dial(tenant.name, trunk.name, plan.number))
                await self._events.append(tenant.name, "outbound_trunk_dialled",
                                          route=plan.route, trunk=trunk.name,
                                          number=plan.number, caller_id=caller_id.number,
                                          caller_id_source=caller_id.source.value, **common)
                for name, value in then:
                    await session.set_variable(name, value)
            except BaseException:
                # A hang-up (AGIHangup) or a failure before the dialplan could Dial():
                # nothing else would give this channel back while this node renews it.
                if held:
                    await self._release(tenant, trunk.name, channel)
                raise
            return True
        await self._events.append(tenant.name, "outbound_failed", route=plan.route,
                                  reason="no_free_trunk", **common)
        await session.set_variable("OMNICC_OUTBOUND_TRUNK", "")
        # Final (42, not the node-failure 34): the other nodes share the count.
        await _fail(session, "every trunk of the route is at its channel limit",
                    Q850_TRUNKS_FAILED)
        return False

    async def _release(self, tenant: Tenant, trunk_name: str, channel: str) -> bool:
        """Gives back `channel` on the trunk (idempotent); whether the trunk is counted."""
        trunk = tenant.trunk(trunk_name)
        if trunk is None or not trunk.max_channels or self._channels is None:
            return False
        try:
            await self._channels.release(tenant.name, trunk.name, channel)
        except RedisError as exc:
            # Its lease ends it in time (this node no longer renews it).
            log.error("trunk %s: cannot release channel %s: %s", trunk.name, channel, exc)
        return True


async def _trunk_causes(session: AGISession, tenant: str,
                        trunk: str) -> tuple[str | None, int | None]:
    """The trunk channel's SIP response ("SIP 503 Service Unavailable") and Q.850 cause,
    from HANGUPCAUSE(); (None, None) when Dial() opened no channel on it."""
    keys = await session.get_variable("HANGUPCAUSE_KEYS()") or ""
    channel = dialled_trunk_channel(keys, tenant, trunk)
    if channel is None:
        return None, None
    tech = await session.get_variable(f"HANGUPCAUSE({channel},tech)")
    ast = await session.get_variable(f"HANGUPCAUSE({channel},ast)")
    cause = int(ast) if ast and ast.isdecimal() and int(ast) <= 127 else None
    return tech, cause or None


async def _fail(session: AGISession, reason: str, cause: int) -> None:
    await session.set_variable("OMNICC_ERROR", " ".join(reason.split()))
    await session.set_variable("OMNICC_CAUSE", str(cause))
    await session.set_variable("OMNICC_STATUS", "ERROR")


async def _stop(session: AGISession, cause: int) -> None:
    await session.set_variable("OMNICC_CAUSE", str(cause))


class OutboundResult:
    """`outbound_result`: after each Dial() on a trunk."""

    def __init__(self, calls: OutboundCalls):
        self._calls = calls

    async def __call__(self, session: AGISession) -> None:
        await self._calls.after_dial(session)


class OutboundEnd:
    """`outbound_end`: the hang-up handler gives back the trunk channel."""

    def __init__(self, calls: OutboundCalls):
        self._calls = calls

    async def __call__(self, session: AGISession) -> None:
        await self._calls.end(session)
