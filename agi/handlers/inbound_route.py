"""`inbound_route?did=&tenant=&trunk=`: where does a call to this DID go?

Sets OMNICC_DEST (agent | hangup), OMNICC_AGENT and OMNICC_DIAL for agent destinations,
and OMNICC_STATUS (OK, or ERROR so the dialplan takes the failover path, with
OMNICC_CAUSE the Q.850 cause to hang up with). Every decision
is appended to the tenant's event stream.
"""

from __future__ import annotations

import logging

from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import RoutingError, decide_inbound

log = logging.getLogger("omnicc.agi.inbound_route")

# Hang-up cause for a DID omnicc has no route for: Asterisk answers 404 Not Found.
Q850_UNALLOCATED_NUMBER = 1


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
            # One line: a channel variable cannot hold a line break.
            await session.set_variable("OMNICC_ERROR", " ".join(str(exc).split()))
            await session.set_variable("OMNICC_CAUSE", str(Q850_UNALLOCATED_NUMBER))
            await session.set_variable("OMNICC_STATUS", "ERROR")
            return
        await self._events.append(
            decision.tenant, "call_routed", destination=decision.destination,
            agent=decision.agent, **common,
        )
        await session.set_variable("OMNICC_DEST", decision.destination)
        if decision.agent:
            await session.set_variable("OMNICC_AGENT", decision.agent)
            await session.set_variable("OMNICC_DIAL", decision.dial)
        await session.set_variable("OMNICC_STATUS", "OK")
