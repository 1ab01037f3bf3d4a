"""Inbound routing: which destination a DID reaches, and what a feature code an agent
dialled asks for. Pure logic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from omnicc.config import Destination, OmniccConfig, Tenant


class RoutingError(Exception):
    """The call cannot be routed (unknown tenant or DID); it goes to failover."""


@dataclass(frozen=True)
class InboundDecision:
    tenant: str
    did: str
    destination: str  # agent | queue | hangup
    agent: str = ""   # the agent extension, for agent destinations
    dial: str = ""    # the Asterisk Dial() target, built from the config only
    queue: str = ""   # the queue name, for queue destinations
    moh_class: str = ""  # the queue's music-on-hold class ("" : Asterisk's default)
    # The caller's priority in the queue; None leaves the channel's as it is (a failover
    # from one queue to another keeps the priority its route gave the call).
    priority: int | None = None


def agent_dial(tenant: Tenant, extension: str) -> str:
    """The Dial() target of an agent: through Kamailio, which looks up its registration."""
    return f"PJSIP/kamailio/sip:{extension}@{tenant.domain}"


def decide_destination(tenant: Tenant, did: str, dest: Destination,
                       priority: int | None = None) -> InboundDecision:
    """Where `dest` (an inbound route's, a queue's failover or overflow) sends the call;
    `priority` for a queue destination (None: keep the call's)."""
    if dest.kind == "agent":
        return InboundDecision(tenant=tenant.name, did=did, destination="agent",
                               agent=dest.target, dial=agent_dial(tenant, dest.target))
    if dest.kind == "queue":
        queue = tenant.queue(dest.target)
        if queue is None:
            raise RoutingError(f"no queue {dest.target!r} in tenant {tenant.name}")
        return InboundDecision(tenant=tenant.name, did=did, destination="queue",
                               queue=dest.target, moh_class=queue.moh_class or "",
                               priority=priority)
    return InboundDecision(tenant=tenant.name, did=did, destination=dest.kind)


def decide_inbound(config: OmniccConfig, tenant_name: str, did: str) -> InboundDecision:
    tenant = config.tenant(tenant_name)
    if tenant is None:
        raise RoutingError(f"unknown tenant {tenant_name!r}")
    route = tenant.inbound_route(did)
    if route is None:
        raise RoutingError(f"no inbound route for DID {did!r} in tenant {tenant.name}")
    return decide_destination(tenant, did, route.destination, route.priority)


def decide_agent_call(config: OmniccConfig, tenant_name: str, caller: str,
                      dialled: str) -> InboundDecision:
    """A call placed by agent `caller`: today, to another agent of the same tenant.
    Calls to outside numbers need outbound routes (later work) and are refused."""
    tenant = config.tenant(tenant_name)
    if tenant is None:
        raise RoutingError(f"unknown tenant {tenant_name!r}")
    if tenant.agent(caller) is None:
        raise RoutingError(f"caller {caller!r} is not an agent of tenant {tenant.name}")
    if tenant.agent(dialled) is None:
        raise RoutingError(f"{dialled!r} is not an agent of tenant {tenant.name} "
                           "(no outbound routes are configured)")
    return InboundDecision(
        tenant=tenant.name, did=dialled, destination="agent", agent=dialled,
        dial=agent_dial(tenant, dialled),
    )


class FeatureAction(StrEnum):
    LOGIN = "login"
    LOGOUT = "logout"
    PAUSE = "pause"
    UNPAUSE = "unpause"


@dataclass(frozen=True)
class FeatureRequest:
    action: FeatureAction
    reason: str = ""  # the pause reason, for PAUSE


def decide_feature_code(tenant: Tenant, dialled: str) -> FeatureRequest:
    """What the feature code `dialled` asks for, under the tenant's `feature_codes`. The
    agent it acts on is never taken from the digits: only the caller's own identity."""
    codes = tenant.feature_codes
    exact = {codes.login: FeatureAction.LOGIN, codes.logout: FeatureAction.LOGOUT,
             codes.unpause: FeatureAction.UNPAUSE}
    if dialled in exact:
        return FeatureRequest(exact[dialled])
    if dialled == codes.pause:
        return FeatureRequest(FeatureAction.PAUSE, codes.default_pause_reason)
    if dialled.startswith(codes.pause):
        reason = codes.pause_reasons.get(dialled[len(codes.pause):])
        if reason is not None:
            return FeatureRequest(FeatureAction.PAUSE, reason)
        raise RoutingError(f"{dialled!r}: no pause reason {dialled[len(codes.pause):]!r} "
                           f"in tenant {tenant.name}")
    raise RoutingError(f"{dialled!r} is not a feature code of tenant {tenant.name}")
