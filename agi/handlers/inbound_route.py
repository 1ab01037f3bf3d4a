"""`inbound_route?did=&tenant=&trunk=`: where does a call to this DID go?

First the caller's number is checked against the tenant's blacklist (Redis): a listed
caller goes to the tenant's blacklist destination (default: hung up, 403). Otherwise the
DID's route (exact, else the best pattern) decides, through any time conditions.

Sets OMNICC_DEST (agent | queue | hangup | busy | ivr | context | external | pbx) and
what the destination needs (agi/handlers/route_answers.py), and OMNICC_STATUS (OK, or
ERROR so the dialplan takes the failover path, with OMNICC_CAUSE the Q.850 cause to hang
up with; a Redis error on the blacklist check leaves the cause empty: 503, the carrier
tries elsewhere). Every decision is appended to the tenant's event stream: call_blacklisted, one
time_condition per time condition passed, call_routed (or call_unrouted), and for a
route with `record: always` a call_recording event naming the file (omnicc/recording.py)
that the dialplan records the call into (OMNICC_ROUTE_RECORDING). A route with a `lookup`
asks an HTTP service who the caller is first (omnicc/customer_lookup.py): OMNICC_CUSTOMER
and customer_identified, or customer_lookup_failed and the lookup's fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from agi.handlers.route_answers import Q850_NO_CIRCUIT, answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import InboundRoute as InboundRouteConfig
from omnicc.config import OmniccConfig, Tenant
from omnicc.customer_lookup import LookupFailed, look_up
from omnicc.events import EventLog
from omnicc.outbound import OutboundRefused, check_dialled_number
from omnicc.outbound_call import Q850_INVALID_NUMBER_FORMAT
from omnicc.recording import route_recording_file
from omnicc.routing import (
    Clock,
    InboundDecision,
    RoutingError,
    decide_destination,
    decide_inbound,
    system_clock,
)

log = logging.getLogger("omnicc.agi.inbound_route")

# (tenant, caller number) -> the reason it is blacklisted ("" when none given), or None.
BlacklistCheck = Callable[[str, str], Awaitable[str | None]]


class InboundRoute:
    def __init__(self, config: OmniccConfig, events: EventLog,
                 blacklist: BlacklistCheck | None = None, clock: Clock = system_clock):
        self._config = config
        self._events = events
        self._blacklist = blacklist
        self._clock = clock

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant_name = req.params.get("tenant", "")
        did = req.params.get("did", "")
        common = {
            "uniqueid": req.uniqueid, "did": did, "trunk": req.params.get("trunk", ""),
            "caller": req.callerid, "channel": req.channel,
        }
        tenant = self._config.tenant(tenant_name)
        try:
            # The DID is the Request-URI user a carrier or PBX sent, so anything a SIP URI
            # may hold (`5550100)U(x`, `%2C`); the dialplan later passes OMNICC_DID in Dial
            # option strings. Only a number goes on (the dialled-number check).
            check_dialled_number(did)
        except OutboundRefused as exc:
            log.warning("call %s not routed: invalid DID: %s", req.uniqueid, exc)
            if tenant is not None:
                await self._events.append(tenant.name, "call_unrouted",
                                          reason=f"invalid DID: {exc}", **common)
            await answer_unrouted(session, f"invalid DID: {exc}", Q850_INVALID_NUMBER_FORMAT)
            return
        try:
            if tenant is not None and self._blacklist is not None:
                reason = await self._blacklist(tenant.name, req.callerid)
                if reason is not None:
                    dest = tenant.blacklist.destination
                    decision = decide_destination(tenant, did, dest, clock=self._clock)
                    await self._events.append(
                        tenant.name, "call_blacklisted", reason=reason,
                        destination=str(dest), **common)
                    await self._routed(decision, "blacklist", common)
                    await answer_decision(session, decision)
                    return
            decision = decide_inbound(self._config, tenant_name, did, self._clock)
            route = tenant.inbound_route(did) if tenant is not None else None
            if tenant is not None and route is not None and route.lookup is not None:
                decision = await self._identify(session, tenant, route, did, common)
        except RedisError as exc:
            log.error("call %s: blacklist check failed: %s", req.uniqueid, exc)
            await answer_unrouted(session, f"blacklist check failed: {exc}", Q850_NO_CIRCUIT)
            return
        except RoutingError as exc:
            log.warning("call %s not routed: %s", req.uniqueid, exc)
            if tenant is not None:
                await self._events.append(tenant.name, "call_unrouted", reason=str(exc),
                                          **common)
            await answer_unrouted(session, str(exc))
            return
        await self._routed(decision, route.match if route else "", common)
        if route is not None and route.record == "always":
            await self._record(session, decision, route.match, common)
        if route is not None and route.account_entry is not None:
            # The dialplan reads the account number (customer_entry) before the call goes on.
            entry = route.account_entry
            await session.set_variable("OMNICC_ACCOUNT_PROMPT", entry.prompt)
            await session.set_variable("OMNICC_ACCOUNT_DIGITS", str(entry.max_digits))
            await session.set_variable("OMNICC_ACCOUNT_TIMEOUT", str(entry.timeout_seconds))
        await answer_decision(session, decision)

    async def _identify(self, session: AGISession, tenant: Tenant, route: InboundRouteConfig,
                        did: str, common: dict[str, Any]) -> InboundDecision:
        """Who is calling (the route's HTTP lookup): OMNICC_CUSTOMER and a
        customer_identified event, and the answer's destination or the route's; on any
        failure a customer_lookup_failed event and the lookup's fallback."""
        lookup = route.lookup
        assert lookup is not None
        try:
            answer = await look_up(tenant, lookup.url, session.request.callerid,
                                   lookup.timeout_ms)
        except LookupFailed as exc:
            log.warning("call %s: customer lookup failed, to %s: %s",
                        session.request.uniqueid, lookup.fallback, exc)
            await self._events.append(tenant.name, "customer_lookup_failed", reason=str(exc),
                                      route=route.match, destination=str(lookup.fallback),
                                      **common)
            return decide_destination(tenant, did, lookup.fallback, route.priority,
                                      clock=self._clock)
        dest = answer.destination or route.destination
        await session.set_variable("OMNICC_CUSTOMER", answer.customer_id)
        await self._events.append(tenant.name, "customer_identified",
                                  customer_id=answer.customer_id, route=route.match,
                                  destination=str(dest), **common)
        priority = route.priority if dest.kind == "queue" else None
        return decide_destination(tenant, did, dest, priority, clock=self._clock)

    async def _record(self, session: AGISession, decision: InboundDecision, route: str,
                      common: dict[str, Any]) -> None:
        """OMNICC_ROUTE_RECORDING: the dialplan MixMonitors the call's bridged parts."""
        recording = route_recording_file(decision.tenant, decision.did,
                                         session.request.uniqueid, time.time())
        if recording is None:
            log.warning("call %s: no recording, its DID or uniqueid is not a file name",
                        session.request.uniqueid)
            return
        await session.set_variable("OMNICC_ROUTE_RECORDING", recording)
        await self._events.append(
            decision.tenant, "call_recording", call=session.request.uniqueid, route=route,
            agent=decision.agent, queue=decision.queue, recording=recording, mode="always",
            **common)

    async def _routed(self, decision: InboundDecision, route: str,
                      common: dict[str, Any]) -> None:
        await append_steps(self._events, decision, common)
        await self._events.append(
            decision.tenant, "call_routed", route=route, destination=decision.destination,
            agent=decision.agent, **destination_fields(decision), **common,
        )


async def append_steps(events: EventLog, decision: InboundDecision,
                       common: dict[str, Any]) -> None:
    """One time_condition event for each time condition the decision went through."""
    for step in decision.steps:
        await events.append(
            decision.tenant, "time_condition", condition=step.condition,
            time_group=step.time_group, matched="1" if step.matched else "0",
            local_time=step.local_time, next=step.destination, **common)


def destination_fields(decision: InboundDecision) -> dict[str, str]:
    """The fields of where the call went, beyond `destination` and `agent`."""
    if decision.queue:
        return {"queue": decision.queue, "priority": str(decision.priority or 0)}
    if decision.ivr:
        return {"ivr": decision.ivr}
    if decision.context:
        return {"context": decision.context, "context_exten": decision.context_exten}
    if decision.forward:
        return {"forward": decision.forward}
    return {}
