"""`agent_call?dialled=&tenant=&agent=`: a call an authenticated agent placed.

Kamailio vouches for `agent` (X-Omnicc-Agent is set only after authentication and
stripped from everything else). Sets OMNICC_DIAL and OMNICC_AGENT for an agent-to-agent
call, or OMNICC_STATUS=ERROR with OMNICC_CAUSE 1 (404) when the number has no route.
"""

from __future__ import annotations

import logging

from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import RoutingError, decide_agent_call

log = logging.getLogger("omnicc.agi.agent_call")


class AgentCall:
    def __init__(self, config: OmniccConfig, events: EventLog):
        self._config = config
        self._events = events

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant = req.params.get("tenant", "")
        caller = req.params.get("agent", "")
        dialled = req.params.get("dialled", "")
        common = {"uniqueid": req.uniqueid, "from_agent": caller, "dialled": dialled,
                  "channel": req.channel}
        try:
            decision = decide_agent_call(self._config, tenant, caller, dialled)
        except RoutingError as exc:
            log.info("agent call %s not routed: %s", req.uniqueid, exc)
            if self._config.tenant(tenant) is not None:
                await self._events.append(tenant, "agent_call_unrouted", reason=str(exc),
                                          **common)
            await answer_unrouted(session, str(exc))
            return
        await self._events.append(decision.tenant, "agent_call_routed", agent=decision.agent,
                                  **common)
        await answer_decision(session, decision)
