"""`inbound_route?did=&tenant=&trunk=`: where does a call to this DID go?

Sets OMNICC_DEST (agent | queue | hangup), OMNICC_AGENT and OMNICC_DIAL for agent
destinations, OMNICC_QUEUE, OMNICC_QUEUE_MOH and OMNICC_PRIORITY for queue destinations,
and OMNICC_STATUS (OK, or ERROR so the dialplan takes the failover path, with
OMNICC_CAUSE the Q.850 cause to hang up with).
Every decision is appended to the tenant's event stream.
"""

from __future__ import annotations

import logging

from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import InboundDecision, RoutingError, decide_inbound

log = logging.getLogger("omnicc.agi.inbound_route")


class InboundRoute:
    def __init__(self, config: OmniccConfig, events: EventLog):
        self._config = config
        self._events = events

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant = req.params.get("tenant", "")
        did = req.params.get("did", "")
        common = {
            "uniqueid": req.uniqueid, "did": did, "trunk": req.params.get("trunk", ""),
            "caller": req.callerid, "channel": req.channel,
        }
        try:
            decision = decide_inbound(self._config, tenant, did)
        except RoutingError as exc:
            log.warning("call %s not routed: %s", req.uniqueid, exc)
            if self._config.tenant(tenant) is not None:
                await self._events.append(tenant, "call_unrouted", reason=str(exc), **common)
            await answer_unrouted(session, str(exc))
            return
        await self._events.append(
            decision.tenant, "call_routed", destination=decision.destination,
            agent=decision.agent, **_queue_fields(decision), **common,
        )
        await answer_decision(session, decision)


def _queue_fields(decision: InboundDecision) -> dict[str, str]:
    if not decision.queue:
        return {}
    return {"queue": decision.queue, "priority": str(decision.priority or 0)}
