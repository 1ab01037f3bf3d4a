"""Which caller ID a call presents on a trunk. Pure logic, no I/O; the AGI face sets
CALLERID(num) from it before each Dial() on a trunk (agi/handlers/outbound_call.py), so a
failover to the next trunk presents that trunk's number.

The precedence (docs/routing.md "Caller ID"), most specific first:

1. A forwarded outside caller (an inbound call sent on by an external: or pbx:
   destination) on a trunk that passes forwarded callers through (a PBX by default): the
   caller's own number. A PBX wants to see who is calling.
2. The queue's caller_id, when the call went out as one of a queue's calls.
3. The outbound route's caller_id.
4. The trunk's own number (what the carrier assigned; many refuse any other From).
5. The caller's own number: the agent's extension, or the outside caller's.

Every configured number was checked as a dialled number when the file loaded; the caller's
own number is whatever Asterisk already had, and is only ever put back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CallerIdSource(StrEnum):
    """Where the presented number came from (the events name it)."""

    CALLER = "caller"  # the caller's own number, unchanged or put back
    QUEUE = "queue"
    ROUTE = "route"
    TRUNK = "trunk"


@dataclass(frozen=True)
class TrunkPolicy:
    """What a trunk says about caller ID: its own number ("" : none), and whether a
    forwarded outside caller's number is passed through rather than replaced."""

    number: str = ""
    pass_forwarded: bool = False


@dataclass(frozen=True)
class CallerId:
    number: str
    source: CallerIdSource


def passes_forwarded(kind: str, forwarded: str | None) -> bool:
    """Whether a trunk of `kind` passes a forwarded caller's number through: `forwarded`
    ("pass" or "replace") when the file says, else a PBX passes, a carrier replaces."""
    if forwarded is not None:
        return forwarded == "pass"
    return kind == "pbx"


def choose_caller_id(trunk: TrunkPolicy, *, caller: str, forwarded: bool,
                     queue: str = "", route: str = "") -> CallerId:
    """The number presented on `trunk` for a call whose own caller number is `caller`;
    `forwarded` for an outside caller's call sent out again, `queue` and `route` the
    caller IDs of the call's queue and outbound route ("" : none)."""
    if forwarded and trunk.pass_forwarded:
        return CallerId(caller, CallerIdSource.CALLER)
    for number, source in ((queue, CallerIdSource.QUEUE), (route, CallerIdSource.ROUTE),
                           (trunk.number, CallerIdSource.TRUNK)):
        if number:
            return CallerId(number, source)
    return CallerId(caller, CallerIdSource.CALLER)
