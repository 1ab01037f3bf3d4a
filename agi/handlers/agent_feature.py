"""`agent_feature?dialled=&tenant=&agent=`: a feature code an agent dialled from its phone
(login, logout, pause with a reason, unpause; the codes are the tenant's feature_codes).

The agent acted on is `agent`, the identity Kamailio authenticated (X-Omnicc-Agent is set
only after authentication and stripped from everything else); the digits only say what to
do. The ACD decides (only a registered agent can log in or unpause).

Answers the dialplan with OMNICC_STATUS=OK and OMNICC_PROMPT, the confirmation to play
(the dialplan answers, plays it and hangs up: 200 OK then BYE), or OMNICC_STATUS=ERROR
with OMNICC_CAUSE: 1 (404 Not Found) for a code that is not one, 21 (403 Forbidden) when
the ACD refused; OMNICC_ERROR says why. Every refusal is an agent_feature_refused event;
the ACD writes the events of the transitions it makes.
"""

from __future__ import annotations

import logging
from typing import Protocol

from agi.handlers.route_answers import Q850_UNALLOCATED_NUMBER, answer_unrouted
from agi.protocol import AGISession
from omnicc.acd import AcdResult
from omnicc.config import OmniccConfig
from omnicc.events import EventLog
from omnicc.routing import FeatureAction, FeatureRequest, RoutingError, decide_feature_code

log = logging.getLogger("omnicc.agi.agent_feature")

# Q.850 21 "call rejected": Asterisk answers 403 Forbidden.
Q850_CALL_REJECTED = 21

# Asterisk core sounds (asterisk-core-sounds-en, in the stack's Asterisk root).
PROMPTS = {
    FeatureAction.LOGIN: "agent-loginok",
    FeatureAction.LOGOUT: "agent-loggedoff",
    FeatureAction.PAUSE: "do-not-disturb&activated",
    FeatureAction.UNPAUSE: "do-not-disturb&de-activated",
}


class AgentStateStore(Protocol):
    """What the handler needs of omnicc.acd.AcdStore."""

    async def login(self, tenant: str, extension: str) -> AcdResult: ...

    async def logout(self, tenant: str, extension: str, *, force: bool = False) -> AcdResult: ...

    async def pause(self, tenant: str, extension: str, reason: str) -> AcdResult: ...

    async def unpause(self, tenant: str, extension: str) -> AcdResult: ...


async def perform(store: AgentStateStore, tenant: str, agent: str,
                  request: FeatureRequest) -> AcdResult:
    if request.action is FeatureAction.LOGIN:
        return await store.login(tenant, agent)
    if request.action is FeatureAction.LOGOUT:
        return await store.logout(tenant, agent)
    if request.action is FeatureAction.PAUSE:
        return await store.pause(tenant, agent, request.reason)
    return await store.unpause(tenant, agent)


class AgentFeature:
    def __init__(self, config: OmniccConfig, events: EventLog, store: AgentStateStore):
        self._config = config
        self._events = events
        self._store = store

    async def __call__(self, session: AGISession) -> None:
        req = session.request
        tenant = self._config.tenant(req.params.get("tenant", ""))
        agent = req.params.get("agent", "")
        dialled = req.params.get("dialled", "")
        if tenant is None or tenant.agent(agent) is None:
            log.warning("feature code %r from %r of tenant %r: not an agent", dialled, agent,
                        req.params.get("tenant", ""))
            await answer_unrouted(session, "not an agent of this tenant", Q850_CALL_REJECTED)
            return
        common = {"agent": agent, "dialled": dialled, "uniqueid": req.uniqueid}
        try:
            request = decide_feature_code(tenant, dialled)
        except RoutingError as exc:
            await self._events.append(tenant.name, "agent_feature_refused",
                                      reason="unknown_code", **common)
            await answer_unrouted(session, str(exc), Q850_UNALLOCATED_NUMBER)
            return
        result = await perform(self._store, tenant.name, agent, request)
        if not result.ok:
            log.info("feature %s of agent %s/%s refused: %s", request.action, tenant.name,
                     agent, result.code)
            await self._events.append(tenant.name, "agent_feature_refused", reason=result.code,
                                      action=str(request.action), agent_state=result.state,
                                      **common)
            await answer_unrouted(session, f"{request.action}: {result.code}",
                                  Q850_CALL_REJECTED)
            return
        await session.set_variable("OMNICC_PROMPT", PROMPTS[request.action])
        await session.set_variable("OMNICC_AGENT_STATE", result.state)
        await session.set_variable("OMNICC_STATUS", "OK")
