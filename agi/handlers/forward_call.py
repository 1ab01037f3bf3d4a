"""`forward_call?tenant=&forward=&queue=`: an inbound call that an external: or pbx:
destination sends out again.

Whichever routing step chose the destination (inbound_route, ivr_entry, a queue's failover
or overflow, a transfer to a DID routed so) answered OMNICC_DEST=external or pbx and
OMNICC_FORWARD, the destination as the config names it; the dialplan's route label brings
the call here. `queue` is OMNICC_QUEUE: the queue the call came through, if any, whose
caller_id then applies. OutboundCalls.forward() (agi/handlers/outbound_call.py) plans and
starts it like an agent's outbound call, without an agent; the dialplan then carries it out
at omnicc-from-agent's outbound label (trunk failover, channel limits, the hang-up handler).
"""

from __future__ import annotations

import logging

from agi.handlers.outbound_call import OutboundCalls
from agi.handlers.route_answers import Q850_NO_CIRCUIT, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig

log = logging.getLogger("omnicc.agi.forward_call")


class ForwardCall:
    def __init__(self, config: OmniccConfig, outbound: OutboundCalls):
        self._config = config
        self._outbound = outbound

    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        tenant = self._config.tenant(p.get("tenant", ""))
        if tenant is None:
            log.error("forward_call %s: unknown tenant %r", session.request.uniqueid,
                      p.get("tenant", ""))
            await answer_unrouted(session, "unknown tenant", Q850_NO_CIRCUIT)
            return
        await self._outbound.forward(session, tenant, p.get("forward", ""),
                                     p.get("queue", ""))
