"""Where a transferred call may go: pure decisions, no I/O.

A blind transfer (a REFER from the agent's phone) moves the caller's channel to the
dialplan context omnicc-transfer with the Refer-To's user part as the extension. Nothing
in it is trusted: it is checked as a dialled number, then looked up in the caller's own
tenant only: one of its agents, or one of its inbound routes' DIDs (a queue, an IVR, ...);
any other number is an OutsideTarget, for the tenant's outbound routes.

Who transfers (transferring_agent) comes from omnicc's own data, never from the phone: for
a call that came through a queue, the agent the ACD connected it to; else the agent its
inbound route sent it to.
"""

from __future__ import annotations

from enum import StrEnum

from omnicc.acd import CallStatus
from omnicc.agent_state import CallState
from omnicc.config import OmniccConfig, Tenant
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


def transferring_agent(tenant: Tenant, routed_agent: str, queue_call: str,
                       status: CallStatus | None) -> str:
    """The agent who transfers a call: `queue_call` (the call's ACD id, OMNICC_QCALL) set,
    the agent the ACD has it CONNECTED to (`status`, its record now); else `routed_agent`,
    the agent the call's route or an earlier transfer sent it to (OMNICC_AGENT). "" when
    not known: a queue call the ACD has not connected to an agent of the tenant (the
    dialplan's OMNICC_AGENT is only the first agent the queue offered it to, not
    necessarily the one who answered)."""
    if queue_call:
        if status is None or status.call != queue_call or status.state is not CallState.CONNECTED:
            return ""
        return status.agent if tenant.agent(status.agent) is not None else ""
    return routed_agent
