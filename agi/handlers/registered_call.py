"""`registered_call?tenant=&trunk=&request_uri=&to_uri=`: a call a carrier sent to the
contact a registration trunk registered ([omnicc-from-registration]). Tenant and trunk are
the endpoint's (pjsip.conf set_var, from the config); the DID is read from the To URI's or
the Request-URI's user, as the trunk says, and checked (omnicc/trunk_registration.py).

OMNICC_STATUS=OK with OMNICC_DID, the checked DID: the dialplan then joins the inbound
route logic of [omnicc-from-kamailio]. Otherwise OMNICC_STATUS=ERROR with OMNICC_CAUSE 1
(404) and a registered_call_refused event (reason, trunk).
"""

from __future__ import annotations

import logging

from agi.handlers.route_answers import answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.trunk_registration import RegisteredCallRefused, registered_call_did

log = logging.getLogger("omnicc.agi.registered_call")


class RegisteredCall:
    def __init__(self, config: OmniccConfig, events: EventLog):
        self._config = config
        self._events = events

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        p = req.params
        tenant = self._config.tenant(p.get("tenant", ""))
        trunk = tenant.trunk(p.get("trunk", "")) if tenant is not None else None
        if tenant is None or trunk is None:
            # Only a pjsip.conf out of step with omnicc.yaml gets here.
            log.error("registered_call: no such tenant/trunk %r/%r (uniqueid %s)",
                      p.get("tenant"), p.get("trunk"), req.uniqueid)
            await answer_unrouted(session, "unknown registration trunk")
            return
        try:
            did = registered_call_did(trunk, p.get("request_uri", ""), p.get("to_uri", ""))
        except RegisteredCallRefused as exc:
            log.warning("call %s on trunk %s refused: %s", req.uniqueid, trunk.name, exc)
            await self._events.append(tenant.name, "registered_call_refused", reason=str(exc),
                                      trunk=trunk.name, uniqueid=req.uniqueid,
                                      caller=req.callerid)
            await answer_unrouted(session, str(exc))
            return
        await session.set_variable("OMNICC_DID", did)
        await session.set_variable("OMNICC_STATUS", "OK")
