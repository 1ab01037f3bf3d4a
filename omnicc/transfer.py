"""Where a transferred call may go: pure decisions, no I/O.

A blind transfer (a REFER from the agent's phone) moves the caller's channel to the
dialplan context omnicc-transfer with the Refer-To's user part as the extension. Nothing
in it is trusted: it is checked as a dialled number, then looked up in the caller's own
tenant only: one of its agents, or one of its inbound routes' DIDs (a queue, an IVR, ...);
any other number is an OutsideTarget, for the tenant's outbound routes.
"""

from __future__ import annotations

from enum import StrEnum

from omnicc.config import OmniccConfig
from omnicc.outbound import OutboundRefused, check_dialled_number
from omnicc.routing import (
    Clock,
    InboundDecision,
    RoutingError,
    agent_dial,
    decide_inbound,
    system_clock,
)


class OutsideTarget(RoutingError):
    """A well-formed number that is neither an agent nor a DID of the tenant: only the
    tenant's outbound routes may take it (agi/handlers/transfer.py)."""


class TransferKind(StrEnum):
    BLIND = "blind"
    ATTENDED = "attended"


def decide_transfer(config: OmniccConfig, tenant_name: str, target: str,
                    clock: Clock = system_clock) -> InboundDecision:
    """Where a call of tenant `tenant_name` transferred to `target` goes, or RoutingError."""
    tenant = config.tenant(tenant_name)
    if tenant is None:
        raise RoutingError(f"unknown tenant {tenant_name!r}")
    try:
        check_dialled_number(target)
    except OutboundRefused as exc:
        raise RoutingError(f"transfer target refused: {exc}") from exc
    if tenant.agent(target) is not None:
        return InboundDecision(tenant=tenant.name, did=target, destination="agent",
                               agent=target, dial=agent_dial(tenant, target))
    if tenant.inbound_route(target) is None:
        raise OutsideTarget(f"transfer target {target!r} is neither an agent nor a DID of "
                           f"tenant {tenant.name}")
    return decide_inbound(config, tenant.name, target, clock)
