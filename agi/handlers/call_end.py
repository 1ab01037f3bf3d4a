"""`call_end?tenant=&did=&dest=&agent=&dialstatus=&cause=&answered=`: how a call ended.

Called from the channel's hangup handler, on a channel that is already gone: it only
records, it sends no command.
"""

from __future__ import annotations

import logging

from agi.protocol import AGISession
from omnicc.config import OmniccConfig
from omnicc.events import EventLog

log = logging.getLogger("omnicc.agi.call_end")


class CallEnd:
    def __init__(self, config: OmniccConfig, events: EventLog):
        self._config = config
        self._events = events

    async def __call__(self, session: AGISession) -> None:
        p = session.request.params
        tenant = p.get("tenant", "")
        if self._config.tenant(tenant) is None:
            log.warning("call_end for unknown tenant %r (uniqueid %s)", tenant,
                        session.request.uniqueid)
            return
        await self._events.append(
            tenant, "call_ended", uniqueid=session.request.uniqueid, did=p.get("did", ""),
            destination=p.get("dest", ""), agent=p.get("agent", ""),
            dialstatus=p.get("dialstatus", ""), cause=p.get("cause", ""),
            answered_seconds=p.get("answered", "") or "0",
        )
