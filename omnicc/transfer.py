"""Where a transferred call may go: pure decisions, no I/O.

A blind transfer (a REFER from the agent's phone) moves the caller's channel to the
dialplan context omnicc-transfer with the Refer-To's user part as the extension. Nothing
in it is trusted: it is checked as a dialled number, then looked up in the caller's own
tenant only: one of its agents, or one of its inbound routes' DIDs (a queue, an IVR, ...);
any other number is an OutsideTarget, for the tenant's outbound routes.

Who transfers (transferring_agent) comes from omnicc's own data, never from the phone: for
a call that came through a queue, the agent the ACD connected it to; else the agent its
inbound route sent it to.

An attended transfer is carried out by Asterisk (the caller bridged with the far end of
the agent's consultation call); attended_target says what that far end was, from the
values the dialplan kept (an agent, an outside number, a queue reached by its DID:
queue_of_did), checked against the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class ConsultedLeg(StrEnum):
    """What the consultation call of an attended transfer dialled, as the dialplan knows
    it (the leg whose hang-up handler reports the transfer)."""

    AGENT = "agent"        # another agent's extension (omnicc-from-agent's Dial)
    OUTBOUND = "outbound"  # an outside number, by the outbound routes (a trunk's leg)
    QUEUE = "queue"        # a queue's DID; the leg of the queue's agent who answered


@dataclass(frozen=True)
class AttendedTarget:
    """Where an attended transfer sent the caller: `destination` agent, outbound or queue;
    the agent who talks with the caller now (agent, queue), the queue, and for an outside
    number the route that carried the consultation and the number it sent."""

    destination: str
    agent: str = ""
    queue: str = ""
    route: str = ""
    number: str = ""


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


def queue_of_did(tenant: Tenant, dialled: str) -> str:
    """The queue an agent's own call reaches by dialling `dialled` (the consultation call
    of an attended transfer to a queue): a DID the tenant's inbound routes write exactly
    (`did:`, not a pattern, which could take numbers meant for outside) whose destination
    is `queue:NAME`. "" for any other number: it is dialled as before (an agent, or out by
    the outbound routes)."""
    route = tenant.inbound_route(dialled)
    if route is None or route.did != dialled or route.destination.kind != "queue":
        return ""
    return route.destination.target


def attended_target(tenant: Tenant, leg: str, target: str, *, queue: str = "",
                    answering: str = "") -> AttendedTarget:
    """The target of an attended transfer from the values the dialplan kept on the
    consultation's far-end leg (never from the phone's REFER): `leg` (ConsultedLeg; "" is
    an agent, as before legs were told apart), `target` what the agent dialled (checked by
    agent_call then), `queue` the queue its call joined and `answering` the queue's agent
    who answered. RoutingError when they do not hold together in this tenant."""
    if leg in ("", ConsultedLeg.AGENT):
        if tenant.agent(target) is None:
            raise RoutingError(f"{target!r} is not an agent of tenant {tenant.name}")
        return AttendedTarget(destination="agent", agent=target)
    if leg == ConsultedLeg.OUTBOUND:
        try:
            plan = tenant.plan_outbound(target)
        except OutboundRefused as exc:
            raise RoutingError(f"consultation to {target!r}: {exc}") from exc
        return AttendedTarget(destination="outbound", route=plan.route, number=plan.number)
    if leg == ConsultedLeg.QUEUE:
        if tenant.queue(queue) is None or not queue_of_did(tenant, target):
            raise RoutingError(f"{target!r} is not a queue DID of tenant {tenant.name} "
                               f"(queue {queue!r})")
        return AttendedTarget(destination="queue", queue=queue,
                              agent=answering if tenant.agent(answering) else "")
    raise RoutingError(f"unknown consultation leg {leg!r}")


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
