"""Inbound routing: which destination a DID reaches. Pure logic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

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


def agent_dial(tenant: Tenant, extension: str) -> str:
    """The Dial() target of an agent: through Kamailio, which looks up its registration."""
    return f"PJSIP/kamailio/sip:{extension}@{tenant.domain}"


def decide_destination(tenant: Tenant, did: str, dest: Destination) -> InboundDecision:
    """Where `dest` (an inbound route's, a queue's failover or overflow) sends the call."""
    if dest.kind == "agent":
        return InboundDecision(tenant=tenant.name, did=did, destination="agent",
                               agent=dest.target, dial=agent_dial(tenant, dest.target))
    if dest.kind == "queue":
        if tenant.queue(dest.target) is None:
            raise RoutingError(f"no queue {dest.target!r} in tenant {tenant.name}")
        return InboundDecision(tenant=tenant.name, did=did, destination="queue",
                               queue=dest.target)
    return InboundDecision(tenant=tenant.name, did=did, destination=dest.kind)


def decide_inbound(config: OmniccConfig, tenant_name: str, did: str) -> InboundDecision:
    tenant = config.tenant(tenant_name)
    if tenant is None:
        raise RoutingError(f"unknown tenant {tenant_name!r}")
    route = tenant.inbound_route(did)
    if route is None:
        raise RoutingError(f"no inbound route for DID {did!r} in tenant {tenant.name}")
    return decide_destination(tenant, did, route.destination)


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
