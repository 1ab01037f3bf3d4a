"""`agent_call?dialled=&tenant=&agent=`: a call an authenticated agent placed.

Kamailio vouches for `agent` (X-Omnicc-Agent is set only after authentication and
stripped from everything else). To another agent's extension: OMNICC_DIAL and
OMNICC_AGENT. To a DID of the tenant routed to a queue (written exactly: omnicc/transfer.py
queue_of_did): OMNICC_DEST=queue, OMNICC_QUEUE, OMNICC_DID, the queue joined as by an
inbound call (an agent consulting a queue before an attended transfer). Anything else goes
out by the tenant's outbound routes (agi/handlers/outbound_call.py): checked, routed,
OMNICC_DEST=outbound; or refused with OMNICC_STATUS=ERROR and OMNICC_CAUSE (28 -> 484 not
a number, 1 -> 404 no route or no such agent, 21 -> 403 do-not-call), nothing dialled.
"""

from __future__ import annotations

import logging

from agi.handlers.outbound_call import OutboundCalls
from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import RoutingError, decide_agent_call, decide_inbound
from omnicc.transfer import queue_of_did

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
        # A queue's DID (omnicc/transfer.py queue_of_did): the call joins that queue, as
        # an inbound call to the DID would (a consultation before an attended transfer).
        if (tenant is not None and tenant.agent(caller) is not None
                and tenant.agent(dialled) is None and queue_of_did(tenant, dialled)):
            await self._join_queue(session, tenant_name, caller, dialled)
            return
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

    async def _join_queue(self, session: AGISession, tenant_name: str, caller: str,
                          did: str) -> None:
        """The DID's inbound route decides (its queue, priority, music on hold); the
        dialplan carries it out at omnicc-from-kamailio's route label, OMNICC_DID the DID."""
        req = session.request
        decision = decide_inbound(self._config, tenant_name, did)
        await self._events.append(decision.tenant, "agent_call_routed", uniqueid=req.uniqueid,
                                  from_agent=caller, dialled=did, channel=req.channel,
                                  destination=decision.destination, queue=decision.queue,
                                  agent="")
        await session.set_variable("OMNICC_DID", decision.did)
        await answer_decision(session, decision)
