"""Outbound calls on the call path: the Dial() target of a trunk, which trunks are left
after one failed, and which Q.850 cause the agent's call ends with. Pure logic, no I/O;
the AGI face is agi/handlers/outbound_call.py, the routing rules omnicc/outbound.py.

Asterisk sends an outbound call straight to the carrier, through a PJSIP endpoint per
trunk that has a `dial_host` (pjsip.conf.j2), named ``trunk.<tenant>.<trunk>``: names are
lower-case letters, digits, '-' and '_', so the dots keep tenant and trunk apart. The Dial()
string is built only from those names and a number that passed check_dialled_number().
"""

from __future__ import annotations

import re

from omnicc.caller_id import CallerId, TrunkPolicy, choose_caller_id, passes_forwarded
from omnicc.config import Destination, Tenant, Trunk
from omnicc.outbound import (
    FailoverDecision,
    NextStep,
    OutboundPlan,
    Refusal,
    check_dialled_number,
)

# Q.850 causes the dialplan hangs up with; Asterisk's PJSIP answers the agent with the SIP
# response beside each (chan_pjsip hangup_cause2sip).
Q850_UNALLOCATED_NUMBER = 1      # 404 Not Found
Q850_NORMAL_CLEARING = 16
Q850_USER_BUSY = 17              # 486 Busy Here
Q850_NO_ANSWER = 19              # 480 Temporarily Unavailable
Q850_CALL_REJECTED = 21          # 403 Forbidden
Q850_INVALID_NUMBER_FORMAT = 28  # 484 Address Incomplete
Q850_NO_CIRCUIT = 34             # 503 Service Unavailable: this node could not serve
# 503 too, but final: the call was routed on this node and no trunk carried it (every
# trunk failed or was full). Kamailio tries the next Asterisk node after a 503 carrying 34
# (the node could not serve), never after one carrying 42: that node would dial the same
# carriers again (omnicc/node_failover.py reads the Reason header Asterisk adds).
Q850_TRUNKS_FAILED = 42          # 503 Service Unavailable, Reason: Q.850;cause=42

# A number that is not dialled: why -> cause (docs/routing.md).
REFUSAL_CAUSES = {
    Refusal.INVALID_NUMBER: Q850_INVALID_NUMBER_FORMAT,
    Refusal.NO_ROUTE: Q850_UNALLOCATED_NUMBER,
    Refusal.DO_NOT_CALL: Q850_CALL_REJECTED,
}
# A Dial() that stopped the call (decide_after_dial's reason) -> cause, when the trunk's
# channel reported none of its own.
STOP_CAUSES = {
    "busy": Q850_USER_BUSY,
    "no_answer": Q850_NO_ANSWER,
    "caller_hung_up": Q850_NORMAL_CLEARING,
    "number_invalid": Q850_UNALLOCATED_NUMBER,
    "declined": Q850_CALL_REJECTED,
}


def trunk_endpoint(tenant: str, trunk: str) -> str:
    """The PJSIP endpoint of a tenant's outbound trunk (rendered by pjsip.conf.j2)."""
    return f"trunk.{tenant}.{trunk}"


def trunk_dial(tenant: str, trunk: str, number: str) -> str:
    """The Dial() target for `number` on a trunk. The number is checked again here, so no
    caller of this function can put anything else into a Dial string."""
    return f"PJSIP/{check_dialled_number(number)}@{trunk_endpoint(tenant, trunk)}"


def trunks_after(plan: OutboundPlan, trunk: str) -> tuple[str, ...]:
    """The plan's trunks after `trunk`, in failover order; ValueError when `trunk` is not
    one of them (a request that names a trunk the route does not use)."""
    if trunk not in plan.trunks:
        raise ValueError(f"trunk {trunk!r} is not a trunk of route {plan.route}")
    return plan.trunks[plan.trunks.index(trunk) + 1:]


def dialled_trunk_channel(hangupcause_keys: str, tenant: str, trunk: str) -> str | None:
    """The channel Dial() opened on `trunk`, among HANGUPCAUSE_KEYS() (a comma-separated
    list of the channels this call dialled): the last one of that trunk's endpoint."""
    # PJSIP names a channel <endpoint>-<8 hex digits>: trunk "carrier" is not "carrier-b".
    name = re.compile(re.escape(f"PJSIP/{trunk_endpoint(tenant, trunk)}") + r"-[0-9a-f]{8}")
    found = [key.strip() for key in hangupcause_keys.split(",")
             if name.fullmatch(key.strip())]
    return found[-1] if found else None


def stop_cause(decision: FailoverDecision, trunk_cause: int | None) -> int:
    """The cause the agent's call ends with after `decision` stopped it: the trunk
    channel's own Q.850 cause when it had one, else the reason's."""
    if decision.step is NextStep.ANSWERED:
        return Q850_NORMAL_CLEARING
    if decision.step is NextStep.TRY_NEXT_TRUNK:
        return Q850_TRUNKS_FAILED  # the last trunk failed too: no trunk could carry the call
    if trunk_cause == Q850_NO_CIRCUIT:
        return Q850_TRUNKS_FAILED  # 34 would send the call to the next node, dialled again
    if trunk_cause:
        return trunk_cause
    return STOP_CAUSES.get(decision.reason, Q850_CALL_REJECTED)


def forward_plan(tenant: Tenant, dest: Destination) -> OutboundPlan:
    """What to dial for an inbound call sent out again. `external:NUMBER`: the tenant's
    outbound routes, exactly as if an agent had dialled NUMBER (OutboundRefused when they
    refuse it). `pbx:EXT@TRUNK`: EXT on that PBX trunk alone, no route (ValueError when the
    tenant has no such trunk). The config checked both when it loaded."""
    if dest.kind == "external":
        return tenant.plan_outbound(dest.target)
    if dest.kind == "pbx":
        trunk = tenant.pbx_trunk(dest.trunk)
        return OutboundPlan(route=f"pbx:{trunk.name}", dialled=dest.target,
                            number=check_dialled_number(dest.target), trunks=(trunk.name,),
                            caller_id="")
    raise ValueError(f"{dest} is not a destination that goes out again")


def trunk_policy(trunk: Trunk) -> TrunkPolicy:
    return TrunkPolicy(number=trunk.caller_id.number,
                       pass_forwarded=passes_forwarded(trunk.kind, trunk.caller_id.forwarded))


def trunk_caller_id(trunk: Trunk, plan: OutboundPlan, *, caller: str, forwarded: bool,
                    queue_caller_id: str = "") -> CallerId:
    """The caller ID an attempt on `trunk` presents (omnicc/caller_id.py's precedence)."""
    return choose_caller_id(trunk_policy(trunk), caller=caller, forwarded=forwarded,
                            queue=queue_caller_id, route=plan.caller_id)
