"""`ivr_entry?tenant=&ivr=&entry=&attempt=&did=`: what an IVR does with what the caller
keyed. The dialplan ([omnicc-ivr]) plays the prompt and reads the entry with Read(); this
handler decides, over omnicc/routing.py decide_ivr_entry.

Answers OMNICC_DEST=ivr_retry (play the menu again, after OMNICC_IVR_NOTICE when not
empty; OMNICC_IVR_ATTEMPT counts the playings) or a destination as inbound_route does
(another IVR starts again at its first attempt). The entry is only compared with the
menu's option keys: nothing the caller keys reaches the dialplan. Each entry is appended to
the tenant's event stream (ivr_entry), and where it sent the call (call_routed, with route
"ivr:NAME").
"""

from __future__ import annotations

import logging

from agi.handlers.inbound_route import append_steps, destination_fields
from agi.handlers.route_answers import answer_decision, answer_unrouted
from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import Clock, RoutingError, decide_ivr_entry, system_clock

log = logging.getLogger("omnicc.agi.ivr")

# Read() reads at most max_digits (config: 10); a longer entry did not come from Read().
MAX_ENTRY = 32


class IvrEntry:
    def __init__(self, config: OmniccConfig, events: EventLog, clock: Clock = system_clock):
        self._config = config
        self._events = events
        self._clock = clock

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant_name = req.params.get("tenant", "")
        ivr_name = req.params.get("ivr", "")
        entry = req.params.get("entry", "")[:MAX_ENTRY]
        did = req.params.get("did", "")
        common = {"uniqueid": req.uniqueid, "did": did, "caller": req.callerid,
                  "channel": req.channel}
        tenant = self._config.tenant(tenant_name)
        try:
            if tenant is None:
                raise RoutingError(f"unknown tenant {tenant_name!r}")
            try:
                attempt = int(req.params.get("attempt", ""))
            except ValueError:
                raise RoutingError(f"IVR {ivr_name}: attempt "
                                   f"{req.params.get('attempt', '')!r} is not a number") from None
            step = decide_ivr_entry(tenant, ivr_name, entry, attempt, did, self._clock)
        except RoutingError as exc:
            log.warning("call %s: IVR entry not decided: %s", req.uniqueid, exc)
            if tenant is not None:
                await self._events.append(tenant.name, "call_unrouted", reason=str(exc),
                                          **common)
            await answer_unrouted(session, str(exc))
            return
        await self._events.append(
            tenant.name, "ivr_entry", ivr=step.ivr, entry=step.entry,
            attempt=str(step.attempt), outcome=step.outcome.value,
            retry="1" if step.retry else "0", next=step.destination, **common)
        if step.decision is None:
            await session.set_variable("OMNICC_DEST", "ivr_retry")
            await session.set_variable("OMNICC_IVR_NOTICE", step.notice)
            await session.set_variable("OMNICC_IVR_ATTEMPT", str(step.attempt + 1))
            await session.set_variable("OMNICC_STATUS", "OK")
            return
        decision = step.decision
        await append_steps(self._events, decision, common)
        await self._events.append(
            tenant.name, "call_routed", route=f"ivr:{step.ivr}",
            destination=decision.destination, agent=decision.agent,
            **destination_fields(decision), **common)
        await answer_decision(session, decision)
