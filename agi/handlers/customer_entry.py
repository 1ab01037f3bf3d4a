"""`customer_entry?tenant=&did=&entry=`: the caller keyed an account number at a route
with `account_entry` (the dialplan's Read(), after inbound_route set OMNICC_ACCOUNT_PROMPT,
OMNICC_ACCOUNT_DIGITS and OMNICC_ACCOUNT_TIMEOUT). Digits only, at most the route's
max_digits: OMNICC_CUSTOMER and a customer_identified event (method dtmf). Anything else
(nothing keyed, '*', too long): a customer_entry_invalid event and no customer. Either way
the call goes on to the destination inbound_route decided; OMNICC_STATUS=OK.
"""

from __future__ import annotations

import logging

from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.customer_lookup import account_id
from omnicc.events import EventLog

log = logging.getLogger("omnicc.agi.customer_entry")


class CustomerEntry:
    def __init__(self, config: OmniccConfig, events: EventLog):
        self._config = config
        self._events = events

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        p = req.params
        tenant = self._config.tenant(p.get("tenant", ""))
        did = p.get("did", "")
        route = tenant.inbound_route(did) if tenant is not None else None
        if tenant is None or route is None or route.account_entry is None:
            log.warning("customer_entry: no account entry for %r (uniqueid %s)", dict(p),
                        req.uniqueid)
            await session.set_variable("OMNICC_STATUS", "ERROR")
            return
        entry = p.get("entry", "")
        common = {"uniqueid": req.uniqueid, "did": did, "route": route.match,
                  "caller": req.callerid}
        customer = account_id(entry, route.account_entry.max_digits)
        if customer is None:
            # The entry itself is not logged: it may be a mistyped account number.
            await self._events.append(tenant.name, "customer_entry_invalid",
                                      length=str(len(entry)), **common)
        else:
            await session.set_variable("OMNICC_CUSTOMER", customer)
            await self._events.append(tenant.name, "customer_identified", customer_id=customer,
                                      method="dtmf", **common)
        await session.set_variable("OMNICC_STATUS", "OK")
