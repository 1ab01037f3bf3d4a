"""Outbound routing: which trunks carry a dialled number, what they are sent, and whether a
failed attempt moves on to the next trunk. Pure logic, no I/O.

A call out goes through three steps, all here:

1. check_dialled_number(): what an agent (or a caller, through an IVR) dialled is checked
   before anything else. Only digits, a leading '+', '*' and '#', at most
   MAX_DIALLED_LENGTH characters. This is the guard against the CVE-2010-0685 class of
   dialplan injection (a dialled `555&PJSIP/x@evil` turning one Dial() into two, `1,2`
   adding Dial() options, `5551)` closing a function): nothing a caller sends ever becomes
   dialplan, because only those characters can reach a Dial string.
2. OutboundRouter.plan(): the route whose pattern matches best (Asterisk's ordering,
   omnicc.dialpatterns) strips and prepends digits and names its ordered trunks and caller
   ID; a do-not-call predicate may refuse the number; emergency numbers are never refused
   by it (nor by channel limits: the plan says `emergency` and omnicc.channel_limit
   forces them through).
3. decide_after_dial(): after each Dial() on one trunk, its DIALSTATUS, HANGUPCAUSE (Q.850)
   and the SIP response (HANGUPCAUSE(<channel>,tech), "SIP 503 Service Unavailable") decide
   whether to try the next trunk. Move on when the trunk failed; stop when the called party
   answered, was busy, did not answer, or the number itself is wrong — another carrier
   would ring the same busy phone again. The table is in docs/routing.md.

Routes are matched across the whole list by pattern specificity, not in list order: the
list order only breaks ties between equally specific patterns (FreePBX, by contrast, tries
its routes in order and the first with any matching pattern wins).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from omnicc.dialpatterns import DialPattern, PatternError, PatternTable

MAX_DIALLED_LENGTH = 32
DIALLED_CHARACTERS = frozenset("0123456789*#")
ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
TRUNK_NAME_RE = ROUTE_NAME_RE


class Refusal(StrEnum):
    """Why a dialled number is not dialled. The AGI face maps each to a SIP reply."""

    INVALID_NUMBER = "invalid_number"   # 484 Address Incomplete
    NO_ROUTE = "no_route"               # 404 Not Found
    DO_NOT_CALL = "do_not_call"         # 403 Forbidden


class OutboundRefused(Exception):
    """A number that is not dialled, with the reason and a one-line explanation."""

    def __init__(self, refusal: Refusal, message: str):
        self.refusal = refusal
        super().__init__(message)


def _shown(number: object) -> str:
    """The number as an error message shows it: quoted, and cut when huge."""
    text = repr(number)
    return text if len(text) <= 40 else text[:36] + "...'"


def check_dialled_number(number: object) -> str:
    """`number` if it may be dialled, else OutboundRefused(INVALID_NUMBER) saying why."""
    if not isinstance(number, str):
        raise OutboundRefused(Refusal.INVALID_NUMBER,
                              f"dialled number {_shown(number)} is not text")
    if not number:
        raise OutboundRefused(Refusal.INVALID_NUMBER, "dialled number is empty")
    if len(number) > MAX_DIALLED_LENGTH:
        raise OutboundRefused(Refusal.INVALID_NUMBER,
                              f"dialled number {_shown(number)} has {len(number)} characters, "
                              f"more than {MAX_DIALLED_LENGTH}")
    for index, char in enumerate(number):
        if char == "+" and index == 0:
            continue
        if char == "+":
            raise OutboundRefused(Refusal.INVALID_NUMBER,
                                  f"dialled number {_shown(number)}: '+' is only allowed "
                                  "first")
        if char not in DIALLED_CHARACTERS:
            raise OutboundRefused(Refusal.INVALID_NUMBER,
                                  f"dialled number {_shown(number)}: character {char!r} at "
                                  f"position {index + 1} is not allowed (digits, a leading "
                                  "'+', '*' and '#' only)")
    if number == "+":
        raise OutboundRefused(Refusal.INVALID_NUMBER, "dialled number '+' has no digits")
    return number


def _check_config_number(value: str, what: str, allow_empty: bool) -> str:
    if value == "" and allow_empty:
        return value
    try:
        return check_dialled_number(value)
    except OutboundRefused as exc:
        raise ValueError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class OutboundRoute:
    """One outbound route. `pattern` is a dial pattern (string or compiled); `strip` removes
    that many leading characters of the dialled number, then `prepend` is put in front; the
    result goes to `trunks`, in order. `caller_id` replaces the caller's number when set."""

    name: str
    pattern: DialPattern | str
    trunks: tuple[str, ...]
    strip: int = 0
    prepend: str = ""
    caller_id: str = ""
    compiled: DialPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"outbound route {self.name!r}"
        if not isinstance(self.name, str) or not ROUTE_NAME_RE.fullmatch(self.name):
            raise ValueError(f"{where}: a route name is lower-case letters, digits, '-' and '_'")
        try:
            compiled = (self.pattern if isinstance(self.pattern, DialPattern)
                        else DialPattern.compile(self.pattern))
        except PatternError as exc:
            raise ValueError(f"{where}: {exc}") from None
        object.__setattr__(self, "compiled", compiled)
        trunks = tuple(self.trunks)
        object.__setattr__(self, "trunks", trunks)
        if not trunks:
            raise ValueError(f"{where}: needs at least one trunk")
        for trunk in trunks:
            if not isinstance(trunk, str) or not TRUNK_NAME_RE.fullmatch(trunk):
                raise ValueError(f"{where}: {trunk!r} is not a trunk name")
        if len(set(trunks)) != len(trunks):
            raise ValueError(f"{where}: a trunk is listed twice")
        if not isinstance(self.strip, int) or self.strip < 0:
            raise ValueError(f"{where}: strip is a number of characters, 0 or more")
        if self.strip >= compiled.min_length:
            # Whatever number the pattern matched, nothing of it would be left to send.
            raise ValueError(f"{where}: strip {self.strip} removes every character of a "
                             f"number matching {compiled.text} (at least "
                             f"{compiled.min_length} long)")
        if self.prepend not in ("", "+"):  # a lone '+' makes a national number E.164
            _check_config_number(self.prepend, f"{where}: prepend", allow_empty=False)
        _check_config_number(self.caller_id, f"{where}: caller_id", allow_empty=True)

    def rewrite(self, dialled: str) -> str:
        """The number the trunks receive for `dialled` (checked again: '+' must stay first)."""
        number = self.prepend + dialled[self.strip:]
        try:
            return check_dialled_number(number)
        except OutboundRefused as exc:
            raise OutboundRefused(
                Refusal.INVALID_NUMBER,
                f"route {self.name} turns {dialled!r} into an invalid number: {exc}") from None


@dataclass(frozen=True)
class OutboundPlan:
    """What to dial: `number` on each of `trunks` in turn until decide_after_dial() stops."""

    route: str
    dialled: str                 # as dialled (checked)
    number: str                  # after strip and prepend: what the trunks receive
    trunks: tuple[str, ...]
    caller_id: str               # "" keeps the caller's own (or the queue's)
    emergency: bool = False      # never refused by do-not-call or channel limits


DoNotCall = Callable[[str], bool]


class OutboundRouter:
    """A tenant's outbound routes and emergency numbers, compiled and ordered once."""

    def __init__(self, routes: Iterable[OutboundRoute],
                 emergency_numbers: Iterable[str] = ()):
        routes = list(routes)
        names = [r.name for r in routes]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"outbound route name {repeated[0]!r} is used twice")
        self.routes = tuple(routes)
        self._table: PatternTable[OutboundRoute] = PatternTable(
            (r.compiled, r) for r in routes)
        self.emergency_numbers = frozenset(
            _check_config_number(n, "emergency number", allow_empty=False)
            for n in emergency_numbers)
        for number in sorted(self.emergency_numbers):
            # An emergency call that finds no route is the one failure that must not wait
            # for someone to dial it: refuse the configuration instead.
            if self.route_for(number) is None:
                raise ValueError(f"emergency number {number} matches no outbound route")

    def route_for(self, dialled: str) -> OutboundRoute | None:
        found = self._table.lookup(dialled)
        return found[1] if found else None

    def is_emergency(self, dialled: str, number: str | None = None) -> bool:
        """An emergency number, as dialled (112) or as the route sends it (9112 -> 112)."""
        return dialled in self.emergency_numbers or number in self.emergency_numbers

    def plan(self, dialled: object, do_not_call: DoNotCall | None = None) -> OutboundPlan:
        """The plan for `dialled`, or OutboundRefused. `do_not_call(number)` is asked about
        the number as dialled and as sent; true refuses the call, unless it is an
        emergency number."""
        number_dialled = check_dialled_number(dialled)
        route = self.route_for(number_dialled)
        if route is None:
            raise OutboundRefused(Refusal.NO_ROUTE,
                                  f"no outbound route matches {number_dialled!r}")
        sent = route.rewrite(number_dialled)
        emergency = self.is_emergency(number_dialled, sent)
        if not emergency and do_not_call is not None:
            for candidate in dict.fromkeys((number_dialled, sent)):
                if do_not_call(candidate):
                    raise OutboundRefused(Refusal.DO_NOT_CALL,
                                          f"{candidate!r} is on the do-not-call list")
        return OutboundPlan(route=route.name, dialled=number_dialled, number=sent,
                            trunks=route.trunks, caller_id=route.caller_id,
                            emergency=emergency)


# ---------------------------------------------------------------------------- failover


class DialStatus(StrEnum):
    """Asterisk's DIALSTATUS after Dial()."""

    ANSWER = "ANSWER"
    BUSY = "BUSY"
    NOANSWER = "NOANSWER"
    CANCEL = "CANCEL"
    CONGESTION = "CONGESTION"
    CHANUNAVAIL = "CHANUNAVAIL"
    DONTCALL = "DONTCALL"
    TORTURE = "TORTURE"
    INVALIDARGS = "INVALIDARGS"


class NextStep(StrEnum):
    ANSWERED = "answered"           # the call is up: nothing more to dial
    TRY_NEXT_TRUNK = "try_next_trunk"
    STOP = "stop"                   # give the caller this outcome, try no other trunk


@dataclass(frozen=True)
class FailoverDecision:
    step: NextStep
    reason: str  # busy, no_answer, caller_hung_up, number_invalid, declined, sip_503, ...


# SIP final responses that say the *trunk* failed, not the called party: another carrier
# may well complete the call. 5xx are all of this kind and are not listed.
TRUNK_FAILURE_SIP = {
    401: "sip_401",  # our credentials refused by this carrier
    403: "sip_403",  # this carrier forbids us (account, credit, source address)
    407: "sip_407",
    408: "sip_408",  # no answer to the INVITE (Asterisk makes this one up on a timeout)
    488: "sip_488",  # no common codec with this carrier
}
# SIP final responses about the called party: the same answer would come from any carrier.
CALLED_PARTY_SIP = {
    486: "busy", 600: "busy",
    480: "no_answer",
    487: "caller_hung_up",
    404: "number_invalid", 410: "number_invalid", 484: "number_invalid",
    485: "number_invalid", 604: "number_invalid",
}
# Q.850 causes (Asterisk's HANGUPCAUSE) when no SIP code is known. Trunk failures: 3 no
# route to destination, 18 no user responding (a SIP 408), 20 subscriber absent (an
# unreachable PJSIP endpoint), 27 destination out of order (502), 29 facility rejected
# (501), 34 no circuit available (503), 38 network out of order (500), 41 temporary
# failure, 42 switching equipment congestion, 44 requested circuit not available, 47
# resource unavailable, 58 bearer capability not available (488), 63 service or option not
# available, 66 channel type not implemented, 69 facility not implemented, 79 service not
# implemented, 102 recovery on timer expiry (504), 127 interworking (other 4xx/5xx).
TRUNK_FAILURE_CAUSES = frozenset({3, 18, 20, 27, 29, 34, 38, 41, 42, 44, 47, 58, 63, 66, 69,
                                  79, 102, 127})
# About the called party: 1 unallocated number (404), 17 user busy (486, 600), 19 no answer
# (480), 21 call rejected (403, 603: without the SIP code, the callee's refusal is
# assumed), 22 number changed (410), 28 invalid number format (484).
CALLED_PARTY_CAUSES = {1: "number_invalid", 17: "busy", 19: "no_answer", 21: "declined",
                       22: "number_invalid", 28: "number_invalid"}

_SIP_CAUSE_RE = re.compile(r"SIP ([1-6][0-9][0-9])(?: .*)?", re.DOTALL)


def sip_code_from_cause(tech_cause: str | None) -> int | None:
    """The SIP code in Asterisk's HANGUPCAUSE(<channel>,tech), e.g. "SIP 503 Service
    Unavailable" -> 503; None when there is none."""
    if not tech_cause:
        return None
    found = _SIP_CAUSE_RE.fullmatch(tech_cause.strip())
    return int(found.group(1)) if found else None


def decide_after_dial(dialstatus: str, hangup_cause: int | str | None = None,
                      sip_code: int | None = None) -> FailoverDecision:
    """Whether to try the next trunk after Dial() on one trunk ended with `dialstatus`,
    `hangup_cause` (Q.850, HANGUPCAUSE) and `sip_code` (the trunk's final response)."""
    try:
        status = DialStatus(dialstatus)
    except ValueError:
        raise ValueError(f"unknown DIALSTATUS {dialstatus!r}") from None
    cause = _cause_number(hangup_cause)
    if sip_code is not None and (not isinstance(sip_code, int) or not 100 <= sip_code <= 699):
        raise ValueError(f"not a SIP response code: {sip_code!r}")

    if status is DialStatus.ANSWER:
        return FailoverDecision(NextStep.ANSWERED, "answered")
    if status is DialStatus.CANCEL:
        return FailoverDecision(NextStep.STOP, "caller_hung_up")
    # Busy and no answer are the called party's: never ring it again on another trunk,
    # whatever the cause says.
    if status is DialStatus.BUSY:
        return FailoverDecision(NextStep.STOP, "busy")
    if status is DialStatus.NOANSWER:
        return FailoverDecision(NextStep.STOP, "no_answer")
    if status in (DialStatus.DONTCALL, DialStatus.TORTURE):
        return FailoverDecision(NextStep.STOP, "declined")
    if status is DialStatus.INVALIDARGS:
        return FailoverDecision(NextStep.STOP, "invalid_dial_arguments")

    # CONGESTION or CHANUNAVAIL: Dial() reports most failures so (a 404 is CHANUNAVAIL
    # too), so the SIP response, else the cause, says whose failure it was.
    if sip_code is not None:
        if sip_code in CALLED_PARTY_SIP:
            return FailoverDecision(NextStep.STOP, CALLED_PARTY_SIP[sip_code])
        if sip_code in TRUNK_FAILURE_SIP or 500 <= sip_code <= 599:
            return FailoverDecision(NextStep.TRY_NEXT_TRUNK, f"sip_{sip_code}")
        if sip_code >= 600:
            # RFC 3261 21.6: a 6xx is definitive for every location of the called party.
            return FailoverDecision(NextStep.STOP, "declined")
        if 400 <= sip_code <= 499:
            return FailoverDecision(NextStep.STOP, f"rejected_sip_{sip_code}")
        # A 1xx/2xx/3xx as the last response of a failed dial: the trunk misbehaved.
        return FailoverDecision(NextStep.TRY_NEXT_TRUNK, f"sip_{sip_code}")
    if cause is not None:
        if cause in CALLED_PARTY_CAUSES:
            return FailoverDecision(NextStep.STOP, CALLED_PARTY_CAUSES[cause])
        if cause in TRUNK_FAILURE_CAUSES:
            return FailoverDecision(NextStep.TRY_NEXT_TRUNK, f"cause_{cause}")
    # No detail, or a cause not listed: Dial() itself says the channel failed.
    return FailoverDecision(NextStep.TRY_NEXT_TRUNK,
                            "congestion" if status is DialStatus.CONGESTION else "unavailable")


def _cause_number(hangup_cause: int | str | None) -> int | None:
    if hangup_cause is None or hangup_cause == "":
        return None
    if isinstance(hangup_cause, bool):
        raise ValueError(f"not a Q.850 cause: {hangup_cause!r}")
    if isinstance(hangup_cause, str):
        if not hangup_cause.strip().isdecimal() or not hangup_cause.strip().isascii():
            raise ValueError(f"not a Q.850 cause: {hangup_cause!r}")
        hangup_cause = int(hangup_cause)
    if not isinstance(hangup_cause, int) or not 0 <= hangup_cause <= 127:
        raise ValueError(f"not a Q.850 cause: {hangup_cause!r}")
    # 0 is Asterisk's "not defined": no information.
    return hangup_cause or None
