"""omnicc/outbound.py: dialled-number checks, route selection, do-not-call, emergency
numbers, and the failover decision after each Dial()."""

from __future__ import annotations

import pytest

from omnicc.outbound import (
    MAX_DIALLED_LENGTH,
    DialStatus,
    FailoverDecision,
    NextStep,
    OutboundPlan,
    OutboundRefused,
    OutboundRoute,
    OutboundRouter,
    Refusal,
    check_dialled_number,
    decide_after_dial,
    sip_code_from_cause,
)

# ---------------------------------------------------------------- the dialled number

ACCEPTED = ["0", "5551234", "+34911234567", "*11", "*21#", "#31#5551234", "112",
            "9" * MAX_DIALLED_LENGTH, "+" + "1" * (MAX_DIALLED_LENGTH - 1)]


@pytest.mark.parametrize("number", ACCEPTED)
def test_accepted_numbers(number: str) -> None:
    assert check_dialled_number(number) == number


# (dialled, a fragment of the reason). The first four are issue 5's own: the
# CVE-2010-0685 class, where dialled text became extra Dial() targets, options or syntax.
REFUSED = [
    ("555&PJSIP/x@evil", "character '&' at position 4 is not allowed"),
    ("1,2", "character ',' at position 2"),
    ("5551)", "character ')' at position 5"),
    ("1" * 300, "has 300 characters, more than 32"),
    ("", "is empty"),
    ("+", "'+' has no digits"),
    ("5+55", "'+' is only allowed first"),
    ("++34", "'+' is only allowed first"),
    ("555 1234", "character ' '"),
    ("555-1234", "character '-'"),
    ("555\n1234", "character '\\n'"),
    ("555\x001234", "character '\\x00'"),
    ("5551234;", "character ';'"),
    ("${EXTEN}", "character '$'"),
    ("555|1", "character '|'"),
    ("sip:1@evil", "character 's'"),
    ("١٢٣", "character '١'"),           # Arabic-Indic digits are not ASCII digits
    ("５５５", "character '５'"),         # nor are full-width ones
    ("1" * (MAX_DIALLED_LENGTH + 1), "more than 32"),
]


@pytest.mark.parametrize(("number", "reason"), REFUSED)
def test_refused_numbers_say_why(number: str, reason: str) -> None:
    with pytest.raises(OutboundRefused) as caught:
        check_dialled_number(number)
    assert caught.value.refusal is Refusal.INVALID_NUMBER
    assert reason in str(caught.value)


def test_a_huge_number_is_not_echoed_in_full() -> None:
    with pytest.raises(OutboundRefused) as caught:
        check_dialled_number("1" * 300)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize("number", [None, 5551234, b"5551234", ["5551234"]])
def test_a_number_must_be_text(number: object) -> None:
    with pytest.raises(OutboundRefused, match="is not text"):
        check_dialled_number(number)


# ---------------------------------------------------------------- routes

ROUTES = [
    OutboundRoute("local", "_9NXXXXXX", trunks=("carrier-a", "carrier-b"), strip=1),
    OutboundRoute("national", "_91NXXNXXXXXX", trunks=("carrier-b", "carrier-a"), strip=1,
                  prepend="+", caller_id="+15550100"),
    OutboundRoute("international", "_9011.", trunks=("carrier-b",), strip=4, prepend="+"),
    OutboundRoute("emergency", "_9911", trunks=("carrier-a", "carrier-b"), strip=1),
    OutboundRoute("emergency-direct", "911", trunks=("carrier-a", "carrier-b")),
    OutboundRoute("pbx", "_2XXX", trunks=("pbx",)),
]


@pytest.fixture
def router() -> OutboundRouter:
    return OutboundRouter(ROUTES, emergency_numbers=["911"])


# (dialled, route, number sent, trunks, caller ID)
PLANS = [
    ("95551234", "local", "5551234", ("carrier-a", "carrier-b"), ""),
    ("912125551234", "national", "+12125551234", ("carrier-b", "carrier-a"), "+15550100"),
    ("9011442071234567", "international", "+442071234567", ("carrier-b",), ""),
    ("2001", "pbx", "2001", ("pbx",), ""),
    ("911", "emergency-direct", "911", ("carrier-a", "carrier-b"), ""),
    ("9911", "emergency", "911", ("carrier-a", "carrier-b"), ""),
]


@pytest.mark.parametrize(("dialled", "route", "sent", "trunks", "caller_id"), PLANS)
def test_route_selection_strip_and_prepend(
    router: OutboundRouter, dialled: str, route: str, sent: str, trunks: tuple[str, ...],
    caller_id: str,
) -> None:
    plan = router.plan(dialled)
    assert (plan.route, plan.number, plan.trunks, plan.caller_id) == (
        route, sent, trunks, caller_id)
    assert plan.dialled == dialled


def test_the_most_specific_route_wins_whatever_the_list_order() -> None:
    catch_all = OutboundRoute("catch-all", "_X.", trunks=("cheap",))
    national = OutboundRoute("national", "_0NXXXXXXXX", trunks=("premium",))
    for routes in ([catch_all, national], [national, catch_all]):
        assert OutboundRouter(routes).plan("0212345678").route == "national"
        assert OutboundRouter(routes).plan("1234").route == "catch-all"


def test_equally_specific_routes_go_by_list_order() -> None:
    first = OutboundRoute("first", "_NXX", trunks=("a",))
    second = OutboundRoute("second", "_[2-9]XX", trunks=("b",))
    assert OutboundRouter([first, second]).plan("234").route == "first"
    assert OutboundRouter([second, first]).plan("234").route == "second"


def test_no_route(router: OutboundRouter) -> None:
    with pytest.raises(OutboundRefused, match="no outbound route matches '12345'") as caught:
        router.plan("12345")
    assert caught.value.refusal is Refusal.NO_ROUTE


@pytest.mark.parametrize("number", ["555&PJSIP/x@evil", "1,2", "5551)", "9" * 300])
def test_the_router_checks_the_number_before_anything_else(
    router: OutboundRouter, number: str
) -> None:
    asked: list[str] = []

    def do_not_call(candidate: str) -> bool:
        asked.append(candidate)
        return False

    with pytest.raises(OutboundRefused) as caught:
        router.plan(number, do_not_call=do_not_call)
    assert caught.value.refusal is Refusal.INVALID_NUMBER
    assert asked == []


def test_a_plus_in_the_middle_after_prepend_is_refused() -> None:
    # A route prepending digits to a number that already has its '+' would make an
    # invalid one: the rewritten number is checked like a dialled one.
    route = OutboundRoute("intl", "_00.", trunks=("a",), prepend="9")
    router = OutboundRouter([route])
    assert router.plan("0034911").number == "90034911"
    plus_route = OutboundRoute("plus", "_+X.", trunks=("a",), prepend="00")
    with pytest.raises(OutboundRefused, match="route plus turns '\\+34911' into an invalid"):
        OutboundRouter([plus_route]).plan("+34911")


# ---------------------------------------------------------------- do not call, emergency


def test_do_not_call_refuses_the_number_as_dialled_or_as_sent(router: OutboundRouter) -> None:
    with pytest.raises(OutboundRefused, match="'5551234' is on the do-not-call list") as caught:
        router.plan("95551234", do_not_call={"5551234"}.__contains__)
    assert caught.value.refusal is Refusal.DO_NOT_CALL
    with pytest.raises(OutboundRefused, match="'95551234' is on the do-not-call list"):
        router.plan("95551234", do_not_call={"95551234"}.__contains__)
    assert router.plan("95551234", do_not_call={"5559999"}.__contains__).route == "local"


@pytest.mark.parametrize("dialled", ["911", "9911"])
def test_emergency_numbers_are_never_blocked_by_do_not_call(
    router: OutboundRouter, dialled: str
) -> None:
    plan = router.plan(dialled, do_not_call=lambda number: True)
    assert plan.emergency is True
    assert plan.number == "911"


def test_ordinary_numbers_are_not_emergencies(router: OutboundRouter) -> None:
    assert router.plan("95551234").emergency is False


def test_an_emergency_number_without_a_route_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="emergency number 112 matches no outbound route"):
        OutboundRouter(ROUTES, emergency_numbers=["911", "112"])


def test_a_bad_emergency_number_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="emergency number: dialled number '9-1-1'"):
        OutboundRouter(ROUTES, emergency_numbers=["9-1-1"])


def test_plan_is_a_plain_value(router: OutboundRouter) -> None:
    assert router.plan("2001") == OutboundPlan(
        route="pbx", dialled="2001", number="2001", trunks=("pbx",), caller_id="")


# ---------------------------------------------------------------- route config errors

# (keyword arguments, a fragment of the error)
BAD_ROUTES = [
    ({"name": "Local"}, "a route name is lower-case"),
    ({"pattern": "_9[NXX"}, "dial pattern '_9[NXX': '[' at position 3 is never closed"),
    ({"trunks": ()}, "needs at least one trunk"),
    ({"trunks": ("a", "a")}, "a trunk is listed twice"),
    ({"trunks": ("Carrier A",)}, "'Carrier A' is not a trunk name"),
    ({"strip": -1}, "strip is a number of characters"),
    ({"strip": 4}, "strip 4 removes every character of a number matching _9XXX"),
    ({"prepend": "00&"}, "prepend: dialled number '00&'"),
    ({"prepend": "0+"}, "'+' is only allowed first"),
    ({"caller_id": "+1 555 0100"}, "caller_id: dialled number '+1 555 0100'"),
]


@pytest.mark.parametrize(("change", "problem"), BAD_ROUTES)
def test_bad_routes_are_refused(change: dict[str, object], problem: str) -> None:
    arguments: dict[str, object] = {"name": "local", "pattern": "_9XXX", "trunks": ("a",)}
    arguments.update(change)
    with pytest.raises(ValueError) as caught:
        OutboundRoute(**arguments)  # type: ignore[arg-type]
    assert problem in str(caught.value)


def test_route_names_are_unique() -> None:
    route = OutboundRoute("local", "_9XXX", trunks=("a",))
    with pytest.raises(ValueError, match="outbound route name 'local' is used twice"):
        OutboundRouter([route, OutboundRoute("local", "_8XXX", trunks=("a",))])


def test_strip_may_leave_one_character() -> None:
    route = OutboundRoute("short", "_9X.", trunks=("a",), strip=2)
    assert route.rewrite("912") == "2"


# ---------------------------------------------------------------- failover after Dial()

# (DIALSTATUS, HANGUPCAUSE, SIP code, next step, reason)
DIAL_RESULTS = [
    ("ANSWER", 16, 200, NextStep.ANSWERED, "answered"),
    ("CANCEL", 16, None, NextStep.STOP, "caller_hung_up"),
    # busy and no answer: never another trunk, whatever else is reported
    ("BUSY", 17, 486, NextStep.STOP, "busy"),
    ("BUSY", 17, None, NextStep.STOP, "busy"),
    ("BUSY", 34, 503, NextStep.STOP, "busy"),
    ("NOANSWER", 19, None, NextStep.STOP, "no_answer"),
    ("NOANSWER", 16, None, NextStep.STOP, "no_answer"),
    ("NOANSWER", None, 503, NextStep.STOP, "no_answer"),
    ("DONTCALL", None, None, NextStep.STOP, "declined"),
    ("TORTURE", None, None, NextStep.STOP, "declined"),
    ("INVALIDARGS", None, None, NextStep.STOP, "invalid_dial_arguments"),
    # 5xx: the trunk failed
    ("CONGESTION", 34, 503, NextStep.TRY_NEXT_TRUNK, "sip_503"),
    ("CHANUNAVAIL", 38, 500, NextStep.TRY_NEXT_TRUNK, "sip_500"),
    ("CHANUNAVAIL", 27, 502, NextStep.TRY_NEXT_TRUNK, "sip_502"),
    ("CHANUNAVAIL", 102, 504, NextStep.TRY_NEXT_TRUNK, "sip_504"),
    ("CONGESTION", 34, 580, NextStep.TRY_NEXT_TRUNK, "sip_580"),
    # 4xx that are the trunk's, not the called party's
    ("CHANUNAVAIL", 18, 408, NextStep.TRY_NEXT_TRUNK, "sip_408"),
    ("CHANUNAVAIL", 21, 403, NextStep.TRY_NEXT_TRUNK, "sip_403"),
    ("CHANUNAVAIL", 21, 401, NextStep.TRY_NEXT_TRUNK, "sip_401"),
    ("CHANUNAVAIL", 21, 407, NextStep.TRY_NEXT_TRUNK, "sip_407"),
    ("CHANUNAVAIL", 58, 488, NextStep.TRY_NEXT_TRUNK, "sip_488"),
    # the called party's answer, whichever carrier gave it
    ("CHANUNAVAIL", 17, 486, NextStep.STOP, "busy"),
    ("CHANUNAVAIL", 17, 600, NextStep.STOP, "busy"),
    ("CHANUNAVAIL", 19, 480, NextStep.STOP, "no_answer"),
    ("CHANUNAVAIL", 1, 404, NextStep.STOP, "number_invalid"),
    ("CHANUNAVAIL", 28, 484, NextStep.STOP, "number_invalid"),
    ("CHANUNAVAIL", 1, 604, NextStep.STOP, "number_invalid"),
    ("CHANUNAVAIL", 22, 410, NextStep.STOP, "number_invalid"),
    ("CHANUNAVAIL", 21, 603, NextStep.STOP, "declined"),
    ("CHANUNAVAIL", 58, 606, NextStep.STOP, "declined"),
    ("CHANUNAVAIL", 127, 405, NextStep.STOP, "rejected_sip_405"),
    ("CHANUNAVAIL", 127, 487, NextStep.STOP, "caller_hung_up"),
    # no SIP code: the Q.850 cause decides
    ("CONGESTION", 34, None, NextStep.TRY_NEXT_TRUNK, "cause_34"),
    ("CHANUNAVAIL", 38, None, NextStep.TRY_NEXT_TRUNK, "cause_38"),
    ("CHANUNAVAIL", 41, None, NextStep.TRY_NEXT_TRUNK, "cause_41"),
    ("CHANUNAVAIL", 42, None, NextStep.TRY_NEXT_TRUNK, "cause_42"),
    ("CHANUNAVAIL", 44, None, NextStep.TRY_NEXT_TRUNK, "cause_44"),
    ("CHANUNAVAIL", 47, None, NextStep.TRY_NEXT_TRUNK, "cause_47"),
    ("CHANUNAVAIL", 3, None, NextStep.TRY_NEXT_TRUNK, "cause_3"),
    ("CHANUNAVAIL", 20, None, NextStep.TRY_NEXT_TRUNK, "cause_20"),
    ("CHANUNAVAIL", "102", None, NextStep.TRY_NEXT_TRUNK, "cause_102"),
    ("CHANUNAVAIL", 17, None, NextStep.STOP, "busy"),
    ("CHANUNAVAIL", 19, None, NextStep.STOP, "no_answer"),
    ("CHANUNAVAIL", 1, None, NextStep.STOP, "number_invalid"),
    ("CHANUNAVAIL", 21, None, NextStep.STOP, "declined"),
    ("CHANUNAVAIL", "28", None, NextStep.STOP, "number_invalid"),
    # nothing more known: Dial() said the channel failed
    ("CONGESTION", None, None, NextStep.TRY_NEXT_TRUNK, "congestion"),
    ("CHANUNAVAIL", None, None, NextStep.TRY_NEXT_TRUNK, "unavailable"),
    ("CHANUNAVAIL", 0, None, NextStep.TRY_NEXT_TRUNK, "unavailable"),
    ("CHANUNAVAIL", "", None, NextStep.TRY_NEXT_TRUNK, "unavailable"),
    ("CHANUNAVAIL", 16, None, NextStep.TRY_NEXT_TRUNK, "unavailable"),
]


@pytest.mark.parametrize(("status", "cause", "sip", "step", "reason"), DIAL_RESULTS)
def test_failover_decision(
    status: str, cause: int | str | None, sip: int | None, step: NextStep, reason: str
) -> None:
    assert decide_after_dial(status, cause, sip) == FailoverDecision(step, reason)


def test_every_dialstatus_has_a_decision() -> None:
    for status in DialStatus:
        assert isinstance(decide_after_dial(status.value), FailoverDecision)


@pytest.mark.parametrize(("status", "cause", "sip", "problem"), [
    ("FAILED", None, None, "unknown DIALSTATUS 'FAILED'"),
    ("busy", None, None, "unknown DIALSTATUS 'busy'"),
    ("CHANUNAVAIL", "abc", None, "not a Q.850 cause: 'abc'"),
    ("CHANUNAVAIL", 300, None, "not a Q.850 cause: 300"),
    ("CHANUNAVAIL", -1, None, "not a Q.850 cause: -1"),
    ("CHANUNAVAIL", "３４", None, "not a Q.850 cause"),
    ("CHANUNAVAIL", True, None, "not a Q.850 cause: True"),
    ("CHANUNAVAIL", None, 99, "not a SIP response code: 99"),
    ("CHANUNAVAIL", None, 700, "not a SIP response code: 700"),
])
def test_bad_dial_results_are_errors(status: str, cause: object, sip: object,
                                     problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        decide_after_dial(status, cause, sip)  # type: ignore[arg-type]
    assert problem in str(caught.value)


@pytest.mark.parametrize(("text", "code"), [
    ("SIP 503 Service Unavailable", 503),
    ("SIP 486 Busy Here", 486),
    ("SIP 200", 200),
    (" SIP 404 Not Found ", 404),
    ("", None),
    (None, None),
    ("IAX2 34", None),
    ("SIP 5030 Bad", None),
    ("SIP abc", None),
])
def test_sip_code_from_asterisks_tech_cause(text: str | None, code: int | None) -> None:
    assert sip_code_from_cause(text) == code


def test_a_503_then_a_486_walk_through_the_trunk_list(router: OutboundRouter) -> None:
    # Issue 5's scenario, as the FastAGI handler will run it: carrier-b answers 503, so
    # carrier-a is tried; carrier-a answers 486, so the call stops there as busy.
    plan = router.plan("912125551234")
    results = {"carrier-b": ("CONGESTION", 34, "SIP 503 Service Unavailable"),
               "carrier-a": ("BUSY", 17, "SIP 486 Busy Here")}
    tried = []
    for trunk in plan.trunks:
        tried.append(trunk)
        status, cause, tech = results[trunk]
        decision = decide_after_dial(status, cause, sip_code_from_cause(tech))
        if decision.step is not NextStep.TRY_NEXT_TRUNK:
            break
    assert tried == ["carrier-b", "carrier-a"]
    assert decision == FailoverDecision(NextStep.STOP, "busy")
