"""Inbound routing: which destination a DID reaches. Pure logic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from omnicc.config import OmniccConfig


class RoutingError(Exception):
    """The call cannot be routed (unknown tenant or DID); it goes to failover."""


@dataclass(frozen=True)
class InboundDecision:
    tenant: str
    did: str
    destination: str  # agent | hangup
    agent: str = ""   # the agent extension, for agent destinations
    dial: str = ""    # the Asterisk Dial() target, built from the config only


def decide_inbound(config: OmniccConfig, tenant_name: str, did: str) -> InboundDecision:
    tenant = config.tenant(tenant_name)
    if tenant is None:
        raise RoutingError(f"unknown tenant {tenant_name!r}")
    route = tenant.inbound_route(did)
    if route is None:
        raise RoutingError(f"no inbound route for DID {did!r} in tenant {tenant.name}")
    dest = route.destination
    if dest.kind == "agent":
        return InboundDecision(
            tenant=tenant.name,
            did=did,
            destination="agent",
            agent=dest.target,
            dial=f"PJSIP/kamailio/sip:{dest.target}@{tenant.domain}",
        )
    return InboundDecision(tenant=tenant.name, did=did, destination=dest.kind)


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
        dial=f"PJSIP/kamailio/sip:{dialled}@{tenant.domain}",
    )
