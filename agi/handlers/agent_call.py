"""`agent_call?dialled=&tenant=&agent=`: a call an authenticated agent placed.

Kamailio vouches for `agent` (X-Omnicc-Agent is set only after authentication and
stripped from everything else). To another agent's extension: OMNICC_DIAL and
OMNICC_AGENT. Anything else goes out by the tenant's outbound routes
(agi/handlers/outbound_call.py): checked, routed, OMNICC_DEST=outbound; or refused with
OMNICC_STATUS=ERROR and OMNICC_CAUSE (28 -> 484 not a number, 1 -> 404 no route or no
such agent, 21 -> 403 do-not-call), nothing dialled.
"""

from __future__ import annotations

import logging

from agi.handlers.outbound_call import OutboundCalls
from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import RoutingError, decide_agent_call

log = logging.getLogger("omnicc.agi.agent_call")


class AgentCall:
    def __init__(self, config: OmniccConfig, events: EventLog,
                 outbound: OutboundCalls | None = None):
        self._config = config
        self._events = events
        self._outbound = outbound or OutboundCalls(config, events, None)

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant_name = req.params.get("tenant", "")
        caller = req.params.get("agent", "")
        dialled = req.params.get("dialled", "")
        tenant = self._config.tenant(tenant_name)
        # A tenant without outbound routes keeps the agent-only answer (404 for anything
        # that is not an agent); with routes, every other number is checked and routed.
        if (tenant is not None and tenant.outbound_routes
                and tenant.agent(caller) is not None and tenant.agent(dialled) is None):
            await self._outbound.start(session, tenant, caller, dialled)
            return
        common = {"uniqueid": req.uniqueid, "from_agent": caller, "dialled": dialled,
                  "channel": req.channel}
        try:
            decision = decide_agent_call(self._config, tenant_name, caller, dialled)
        except RoutingError as exc:
            log.info("agent call %s not routed: %s", req.uniqueid, exc)
            if tenant is not None:
                await self._events.append(tenant_name, "agent_call_unrouted", reason=str(exc),
                                          **common)
            await answer_unrouted(session, str(exc))
            return
        await self._events.append(decision.tenant, "agent_call_routed", agent=decision.agent,
                                  **common)
        await answer_decision(session, decision)
