"""Inbound routing: which destination a DID reaches, and what a feature code an agent
dialled asks for. Pure logic, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from omnicc.config import Destination, Ivr, OmniccConfig, Tenant

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class RoutingError(Exception):
    """The call cannot be routed (unknown tenant or DID); it goes to failover."""


@dataclass(frozen=True)
class TimeStep:
    """A time condition the call went through: its outcome, for the event stream."""

    condition: str
    time_group: str
    matched: bool
    local_time: str  # the group's wall clock, ISO 8601 with its offset
    destination: str  # where the outcome sent the call, as the config writes it


@dataclass(frozen=True)
class InboundDecision:
    tenant: str
    did: str
    destination: str  # agent | queue | hangup | busy | ivr | context | external | pbx
    agent: str = ""   # the agent extension, for agent destinations
    dial: str = ""    # the Asterisk Dial() target, built from the config only
    queue: str = ""   # the queue name, for queue destinations
    moh_class: str = ""  # the queue's music-on-hold class ("" : Asterisk's default)
    # The caller's priority in the queue; None leaves the channel's as it is (a failover
    # from one queue to another keeps the priority its route gave the call).
    priority: int | None = None
    # An IVR destination: the menu, what the dialplan plays and how it reads the entry.
    ivr: str = ""
    ivr_prompt: str = ""
    ivr_max_digits: int = 0
    ivr_timeout: int = 0
    # A context destination: the admin's context (declared in the config) and extension.
    context: str = ""
    context_exten: str = ""
    # An external: or pbx: destination: the call goes out again (omnicc/outbound_call.py
    # forward_plan), named as Tenant.forward_destination() names it (pbx:EXT@TRUNK).
    forward: str = ""
    # The time conditions passed through on the way, in order.
    steps: tuple[TimeStep, ...] = ()


def agent_dial(tenant: Tenant, extension: str) -> str:
    """The Dial() target of an agent: through Kamailio, which looks up its registration."""
    return f"PJSIP/kamailio/sip:{extension}@{tenant.domain}"


def decide_destination(tenant: Tenant, did: str, dest: Destination,
                       priority: int | None = None, clock: Clock = system_clock
                       ) -> InboundDecision:
    """Where `dest` (an inbound route's, a queue's failover or overflow, an IVR option)
    sends the call; `priority` for a queue destination (None: keep the call's). Time
    conditions are decided here on `clock` (the config refuses cycles among them)."""
    steps: list[TimeStep] = []
    while dest.kind == "time_condition":
        if len(steps) > len(tenant.time_conditions):
            raise RoutingError(f"time conditions of tenant {tenant.name} loop")
        dest, step = _pass_time_condition(tenant, dest.target, clock)
        steps.append(step)
    common = {"tenant": tenant.name, "did": did, "steps": tuple(steps)}
    if dest.kind == "agent":
        return InboundDecision(destination="agent", agent=dest.target,
                               dial=agent_dial(tenant, dest.target), **common)
    if dest.kind == "queue":
        queue = tenant.queue(dest.target)
        if queue is None:
            raise RoutingError(f"no queue {dest.target!r} in tenant {tenant.name}")
        return InboundDecision(destination="queue", queue=dest.target,
                               moh_class=queue.moh_class or "", priority=priority, **common)
    if dest.kind == "ivr":
        ivr = tenant.ivr(dest.target)
        if ivr is None:
            raise RoutingError(f"no IVR {dest.target!r} in tenant {tenant.name}")
        return InboundDecision(destination="ivr", ivr=ivr.name, ivr_prompt=ivr.prompt,
                               ivr_max_digits=ivr.max_digits,
                               ivr_timeout=ivr.timeout_seconds, **common)
    if dest.kind == "context":
        if dest.target not in tenant.dialplan_contexts:
            raise RoutingError(f"context {dest.target!r} is not declared in tenant "
                               f"{tenant.name}")
        return InboundDecision(destination="context", context=dest.target,
                               context_exten=dest.exten or "s", **common)
    if dest.kind in ("external", "pbx"):
        try:
            forward = tenant.forward_destination(dest)
        except ValueError as exc:
            raise RoutingError(f"{dest}: {exc}") from None
        return InboundDecision(destination=dest.kind, forward=str(forward), **common)
    return InboundDecision(destination=dest.kind, **common)


def _pass_time_condition(tenant: Tenant, name: str,
                         clock: Clock) -> tuple[Destination, TimeStep]:
    condition = tenant.time_condition(name)
    if condition is None:
        raise RoutingError(f"no time condition {name!r} in tenant {tenant.name}")
    group = tenant.time_group(condition.time_group)
    if group is None:
        raise RoutingError(f"no time group {condition.time_group!r} in tenant {tenant.name}")
    now = clock()
    matched = group.group.contains(now)
    dest = condition.matched if matched else condition.unmatched
    return dest, TimeStep(condition=name, time_group=group.name, matched=matched,
                          local_time=group.group.local_time(now).isoformat(),
                          destination=str(dest))


def decide_inbound(config: OmniccConfig, tenant_name: str, did: str,
                   clock: Clock = system_clock) -> InboundDecision:
    tenant = config.tenant(tenant_name)
    if tenant is None:
        raise RoutingError(f"unknown tenant {tenant_name!r}")
    route = tenant.inbound_route(did)
    if route is None:
        raise RoutingError(f"no inbound route for DID {did!r} in tenant {tenant.name}")
    return decide_destination(tenant, did, route.destination, route.priority, clock)


class IvrOutcome(StrEnum):
    OPTION = "option"    # the entry is one of the menu's options
    INVALID = "invalid"  # an entry that is none
    TIMEOUT = "timeout"  # no entry before the timeout


@dataclass(frozen=True)
class IvrStep:
    """What an IVR does with one entry: play the menu again (`retry`, after `notice` when
    not empty), or send the call on (`decision`)."""

    ivr: str
    entry: str
    attempt: int
    outcome: IvrOutcome
    retry: bool
    notice: str = ""
    destination: str = ""  # where the call goes on, as the config writes it
    decision: InboundDecision | None = None


# What Read() can hand over: DTMF digits. Anything else is no option, whatever it says.
_DTMF = frozenset("0123456789*#ABCD")


def decide_ivr_entry(tenant: Tenant, ivr_name: str, entry: str, attempt: int, did: str,
                     clock: Clock = system_clock) -> IvrStep:
    """The caller keyed `entry` ("" : nothing before the timeout) at the `attempt`-th
    playing of IVR `ivr_name` (1 the first)."""
    ivr = tenant.ivr(ivr_name)
    if ivr is None:
        raise RoutingError(f"no IVR {ivr_name!r} in tenant {tenant.name}")
    if attempt < 1:
        raise RoutingError(f"IVR {ivr_name}: attempt {attempt} is not 1 or more")
    dest = ivr.options.get(entry) if set(entry) <= _DTMF else None
    if dest is not None:
        return _ivr_on(tenant, ivr, entry, attempt, IvrOutcome.OPTION, dest, did, clock)
    outcome = IvrOutcome.INVALID if entry else IvrOutcome.TIMEOUT
    if attempt <= ivr.retries:
        return IvrStep(ivr=ivr.name, entry=entry, attempt=attempt, outcome=outcome,
                       retry=True, notice=ivr.invalid_prompt if entry else "")
    return _ivr_on(tenant, ivr, entry, attempt, outcome, ivr.default, did, clock)


def _ivr_on(tenant: Tenant, ivr: Ivr, entry: str, attempt: int, outcome: IvrOutcome,
            dest: Destination, did: str, clock: Clock) -> IvrStep:
    return IvrStep(ivr=ivr.name, entry=entry, attempt=attempt, outcome=outcome, retry=False,
                   destination=str(dest),
                   decision=decide_destination(tenant, did, dest, clock=clock))


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
