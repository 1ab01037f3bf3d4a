"""omnicc/timeconditions.py: time groups in a timezone, across daylight-saving changes,
holidays and midnight; time conditions with an injected clock; bad input."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from omnicc.timeconditions import (
    DateSpec,
    TimeCondition,
    TimeConditionError,
    TimeDecision,
    TimeGroup,
    TimeRange,
    TimeRule,
    Weekdays,
    load_zone,
    system_clock,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def group(timezone_name: str, *rules: dict[str, object],
          except_dates: tuple[str, ...] = ()) -> TimeGroup:
    return TimeGroup.from_dict({"name": "test", "timezone": timezone_name,
                                "rules": list(rules), "except_dates": list(except_dates)})


def minutes_matching(g: TimeGroup, start: datetime, hours: int) -> int:
    """How many minutes of real (UTC) time in [start, start + hours) the group matches."""
    return sum(g.contains(start + timedelta(minutes=m)) for m in range(hours * 60))


OFFICE_NY = group("America/New_York", {"weekdays": "mon-fri", "times": "09:00-18:00"})
OFFICE_MADRID = group("Europe/Madrid", {"weekdays": "mon-fri", "times": "09:00-14:00"},
                      except_dates=("01-01", "12-25", "2026-04-03"))


# ---------------------------------------------------------------- daylight saving

# New York: EST (UTC-5) until 2026-03-08 02:00, EDT (UTC-4) until 2026-11-01 02:00.
NEW_YORK_MOMENTS = [
    (utc(2026, 3, 6, 13, 30), False),   # Fri 08:30 EST
    (utc(2026, 3, 6, 14, 0), True),     # Fri 09:00 EST
    (utc(2026, 3, 6, 22, 59), True),    # Fri 17:59 EST
    (utc(2026, 3, 6, 23, 0), False),    # Fri 18:00 EST
    (utc(2026, 3, 9, 13, 0), True),     # Mon 09:00 EDT: the same UTC hour was closed before
    (utc(2026, 3, 9, 12, 59), False),   # Mon 08:59 EDT
    (utc(2026, 3, 9, 21, 59), True),    # Mon 17:59 EDT
    (utc(2026, 3, 9, 22, 0), False),    # Mon 18:00 EDT: open at this UTC time before
    (utc(2026, 10, 30, 13, 0), True),   # Fri 09:00 EDT
    (utc(2026, 11, 2, 13, 0), False),   # Mon 08:00 EST after falling back
    (utc(2026, 11, 2, 14, 0), True),    # Mon 09:00 EST
    (utc(2026, 3, 7, 15, 0), False),    # Saturday
    (utc(2026, 3, 8, 15, 0), False),    # Sunday, the day of the change
]


@pytest.mark.parametrize(("moment", "open_"), NEW_YORK_MOMENTS)
def test_office_hours_follow_new_york_daylight_saving(moment: datetime, open_: bool) -> None:
    assert OFFICE_NY.contains(moment) is open_


def test_a_working_day_is_nine_hours_on_both_sides_of_each_change() -> None:
    for day in (utc(2026, 3, 6), utc(2026, 3, 9), utc(2026, 10, 30), utc(2026, 11, 2)):
        assert minutes_matching(OFFICE_NY, day, 24) == 9 * 60


def test_the_skipped_hour_never_happens_when_clocks_go_forward() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:xx does not exist that night.
    small_hours = group("America/New_York", {"times": "02:00-03:00"})
    assert minutes_matching(small_hours, utc(2026, 3, 7, 5), 24) == 60  # the night before
    assert minutes_matching(small_hours, utc(2026, 3, 8, 5), 24) == 0
    assert minutes_matching(small_hours, utc(2026, 3, 9, 4), 24) == 60  # the night after


def test_the_repeated_hour_matches_twice_when_clocks_go_back() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:xx happens twice, 05:00-07:00 UTC.
    one_am = group("America/New_York", {"times": "01:00-02:00"})
    assert minutes_matching(one_am, utc(2026, 11, 1, 4), 24) == 120
    assert one_am.contains(utc(2026, 11, 1, 5, 30))   # 01:30 EDT
    assert one_am.contains(utc(2026, 11, 1, 6, 30))   # 01:30 EST
    assert not one_am.contains(utc(2026, 11, 1, 7, 0))  # 02:00 EST


def test_a_night_shift_is_an_hour_shorter_or_longer_on_the_change_nights() -> None:
    night = group("America/New_York", {"times": "22:00-06:00"})
    assert minutes_matching(night, utc(2026, 3, 8, 3), 8) == 7 * 60   # 22:00 EST -> 06:00 EDT
    assert minutes_matching(night, utc(2026, 11, 1, 2), 9) == 9 * 60  # 22:00 EDT -> 06:00 EST
    assert minutes_matching(night, utc(2026, 3, 12, 2), 8) == 8 * 60  # an ordinary night


MADRID_MOMENTS = [
    # CET (UTC+1) until 2026-03-29 02:00, CEST (UTC+2) until 2026-10-25 03:00.
    (utc(2026, 3, 27, 7, 30), False),   # Fri 08:30 CET
    (utc(2026, 3, 27, 8, 0), True),     # Fri 09:00 CET
    (utc(2026, 3, 30, 7, 0), True),     # Mon 09:00 CEST
    (utc(2026, 3, 30, 6, 59), False),   # Mon 08:59 CEST
    (utc(2026, 3, 30, 12, 0), False),   # Mon 14:00 CEST: 13:00 CET would still be open
    (utc(2026, 3, 27, 12, 59), True),   # Fri 13:59 CET
    (utc(2026, 10, 23, 11, 59), True),  # Fri 13:59 CEST
    (utc(2026, 10, 26, 12, 59), True),  # Mon 13:59 CET
    (utc(2026, 10, 26, 13, 0), False),  # Mon 14:00 CET
    # holidays: a yearly date, and Good Friday 2026 as a one-off
    (utc(2026, 12, 25, 10, 0), False),  # Fri 11:00, Christmas
    (utc(2027, 12, 24, 10, 0), True),   # Fri 11:00, Christmas Eve is a working day
    (utc(2027, 1, 1, 10, 0), False),    # Fri, New Year
    (utc(2026, 4, 3, 10, 0), False),    # Good Friday 2026
    (utc(2027, 4, 2, 10, 0), True),     # not Good Friday in 2027 (a one-off date)
    (utc(2026, 4, 2, 10, 0), True),     # the Thursday before
]


@pytest.mark.parametrize(("moment", "open_"), MADRID_MOMENTS)
def test_madrid_office_hours_and_holidays(moment: datetime, open_: bool) -> None:
    assert OFFICE_MADRID.contains(moment) is open_


def test_the_moment_may_come_in_any_timezone() -> None:
    # 09:30 in Madrid, given as New York time and as a fixed offset: the same instant.
    moment = utc(2026, 3, 27, 8, 30)
    assert OFFICE_MADRID.contains(moment.astimezone(load_zone("America/New_York")))
    assert OFFICE_MADRID.contains(moment.astimezone(timezone(timedelta(hours=-7))))


# ---------------------------------------------------------------- midnight

NIGHT_FRIDAY = group("UTC", {"weekdays": "fri", "times": "22:00-06:00"})


@pytest.mark.parametrize(("moment", "inside"), [
    (utc(2026, 3, 6, 21, 59), False),  # Fri before the start
    (utc(2026, 3, 6, 22, 0), True),    # Fri 22:00
    (utc(2026, 3, 6, 23, 59), True),
    (utc(2026, 3, 7, 0, 0), True),     # Sat 00:00, still Friday's shift
    (utc(2026, 3, 7, 5, 59), True),
    (utc(2026, 3, 7, 6, 0), False),    # the end is excluded
    (utc(2026, 3, 6, 3, 0), False),    # Fri 03:00 belongs to Thursday's night: not listed
    (utc(2026, 3, 7, 22, 30), False),  # Sat evening
])
def test_a_range_past_midnight_belongs_to_the_day_it_starts(moment: datetime,
                                                            inside: bool) -> None:
    assert NIGHT_FRIDAY.contains(moment) is inside


def test_weekend_wraps_past_sunday() -> None:
    weekend = group("UTC", {"weekdays": "fri-mon"})
    days = [weekend.contains(utc(2026, 3, day, 12)) for day in range(2, 9)]  # Mon..Sun
    assert days == [True, False, False, False, True, True, True]


def test_a_holiday_closes_the_whole_local_day_even_inside_a_night_shift() -> None:
    night = group("UTC", {"times": "22:00-06:00"}, except_dates=("12-25",))
    assert night.contains(utc(2026, 12, 24, 23, 0))
    assert not night.contains(utc(2026, 12, 25, 2, 0))
    assert not night.contains(utc(2026, 12, 25, 23, 0))
    assert night.contains(utc(2026, 12, 26, 2, 0))


def test_all_day() -> None:
    all_day = group("UTC", {"weekdays": "sat", "times": "00:00-24:00"})
    assert minutes_matching(all_day, utc(2026, 3, 7), 24) == 24 * 60
    assert minutes_matching(all_day, utc(2026, 3, 8), 24) == 0


def test_rules_are_alternatives() -> None:
    shop = group("UTC", {"weekdays": "mon-fri", "times": "09:00-18:00"},
                 {"weekdays": "sat", "times": "10:00-14:00"})
    assert shop.contains(utc(2026, 3, 7, 11))       # Sat 11:00
    assert not shop.contains(utc(2026, 3, 7, 15))   # Sat 15:00
    assert shop.contains(utc(2026, 3, 6, 15))       # Fri 15:00
    assert not shop.contains(utc(2026, 3, 8, 11))   # Sun


def test_a_rule_with_dates_only_matches_those_days() -> None:
    sales = group("UTC", {"dates": ["11-27", "2026-12-24..2026-12-31"],
                          "times": "08:00-22:00"})
    assert sales.contains(utc(2026, 11, 27, 9))
    assert sales.contains(utc(2026, 12, 28, 21, 59))
    assert not sales.contains(utc(2026, 12, 28, 22))
    assert not sales.contains(utc(2026, 12, 23, 12))
    assert not sales.contains(utc(2027, 1, 1, 12))


# ---------------------------------------------------------------- the parts

@pytest.mark.parametrize(("text", "days"), [
    ("mon-fri", {0, 1, 2, 3, 4}),
    ("fri-mon", {4, 5, 6, 0}),
    ("sat", {5}),
    ("sun-sun", {6}),
    ("sat-fri", {0, 1, 2, 3, 4, 5, 6}),
    ("mon,wed,fri", {0, 2, 4}),
    ("Mon-Wed, fri", {0, 1, 2, 4}),
    ("monday-friday", {0, 1, 2, 3, 4}),
])
def test_weekdays(text: str, days: set[int]) -> None:
    assert Weekdays.parse(text).days == frozenset(days)


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("12-25", [date(2026, 12, 25), date(2031, 12, 25)], [date(2026, 12, 24)]),
    ("2026-12-25", [date(2026, 12, 25)], [date(2027, 12, 25)]),
    ("12-24..01-06", [date(2026, 12, 24), date(2026, 12, 31), date(2027, 1, 1),
                      date(2027, 1, 6)], [date(2026, 12, 23), date(2027, 1, 7)]),
    ("07-01..08-31", [date(2026, 7, 1), date(2026, 8, 31)], [date(2026, 9, 1)]),
    ("2026-12-24..2027-01-02", [date(2026, 12, 30), date(2027, 1, 2)],
     [date(2027, 1, 3), date(2025, 12, 30)]),
    ("02-29", [date(2028, 2, 29)], [date(2027, 2, 28), date(2027, 3, 1)]),
])
def test_dates(text: str, inside: list[date], outside: list[date]) -> None:
    spec = DateSpec.parse(text)
    assert all(day in spec for day in inside)
    assert not any(day in spec for day in outside)


# ---------------------------------------------------------------- bad input

# (a callable building the bad thing, a fragment of the error)
BAD_INPUT = [
    (lambda: group("Mars/Olympus", {}), "unknown timezone 'Mars/Olympus'"),
    (lambda: group("Europe/Madird", {}), "unknown timezone 'Europe/Madird'"),
    (lambda: group("../../etc/passwd", {}), "is not an IANA timezone name"),
    (lambda: group("/etc/localtime", {}), "is not an IANA timezone name"),
    (lambda: group("", {}), "is not an IANA timezone name"),
    (lambda: group("America", {}), "unknown timezone 'America'"),
    (lambda: TimeRange.parse("25:00-26:00"), "hour 25 is not 0 to 23"),
    (lambda: TimeRange.parse("09:00-24:30"), "hour 24 is not 0 to 23 (24:00 only ends"),
    (lambda: TimeRange.parse("24:00-06:00"), "24:00 only ends a range"),
    (lambda: TimeRange.parse("09:60-18:00"), "minute 60 is not 0 to 59"),
    (lambda: TimeRange.parse("9-18"), "'9' is not HH:MM"),
    (lambda: TimeRange.parse("09:00"), "expected HH:MM-HH:MM"),
    (lambda: TimeRange.parse("09:00-12:00-18:00"), "expected HH:MM-HH:MM"),
    (lambda: TimeRange.parse("09:00-09:00"), "starts where it ends"),
    (lambda: Weekdays.parse("mnd-fri"), "unknown weekday 'mnd'"),
    (lambda: Weekdays.parse("mon-"), "unknown weekday ''"),
    (lambda: Weekdays.parse("lunes"), "unknown weekday 'lunes'"),
    (lambda: Weekdays.parse(""), "expected e.g. 'mon-fri'"),
    (lambda: DateSpec.parse("02-30"), "date '02-30': no such day"),
    (lambda: DateSpec.parse("2026-13-01"), "no such day"),
    (lambda: DateSpec.parse("2027-02-29"), "no such day"),
    (lambda: DateSpec.parse("25/12"), "'25/12' is not YYYY-MM-DD or MM-DD"),
    (lambda: DateSpec.parse("2026-12-26..2026-12-24"), "the range ends before it starts"),
    (lambda: DateSpec.parse("12-24..2026-12-26"), "both ends need a year, or neither"),
    (lambda: group("UTC"), "needs at least one rule"),
    (lambda: group("UTC", {"weekday": "mon"}), "rules[0]: unknown key 'weekday'"),
    (lambda: group("UTC", {"times": "08:00-25:00"}), "rules[0]: times '08:00-25:00'"),
    (lambda: group("UTC", {}, except_dates=("12-32",)), "except_dates: date '12-32'"),
    (lambda: TimeGroup.from_dict({"name": "x", "rules": [{}]}), "needs a timezone"),
    (lambda: TimeGroup.from_dict({"timezone": "UTC", "rules": [{}]}), "needs a name"),
    (lambda: TimeGroup.from_dict({"name": "x", "timezone": "UTC", "rules": [{}],
                                  "holidays": []}), "unknown key 'holidays'"),
    (lambda: OFFICE_NY.contains(datetime(2026, 3, 9, 10, 0)), "must carry a timezone"),
    (lambda: TimeCondition("open", OFFICE_NY, matched="queue:sales", unmatched=""),
     "unmatched needs a destination"),
]


@pytest.mark.parametrize(("build", "problem"), BAD_INPUT)
def test_bad_input_is_a_clear_error(build, problem: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TimeConditionError) as caught:
        build()
    assert problem in str(caught.value)


# ---------------------------------------------------------------- conditions and the clock


def test_time_condition_with_an_injected_clock() -> None:
    condition = TimeCondition("business-hours", OFFICE_NY, matched="queue:sales",
                              unmatched="ivr:closed")
    now = [utc(2026, 3, 9, 13, 0)]  # Mon 09:00 EDT
    decision = condition.decide(clock=lambda: now[0])
    assert decision == TimeDecision("business-hours", True, "queue:sales",
                                    datetime(2026, 3, 9, 9, 0,
                                             tzinfo=load_zone("America/New_York")))
    assert decision.local_time.utcoffset() == timedelta(hours=-4)
    now[0] = utc(2026, 3, 9, 22, 0)  # Mon 18:00 EDT
    assert condition.decide(clock=lambda: now[0]).destination == "ivr:closed"


def test_an_explicit_moment_wins_over_the_clock() -> None:
    condition = TimeCondition("tc", OFFICE_NY, matched="a", unmatched="b")

    def clock() -> datetime:
        raise AssertionError("the clock is not read when a moment is given")

    assert condition.decide(utc(2026, 3, 9, 13, 0), clock=clock).destination == "a"


def test_the_system_clock_is_aware() -> None:
    assert system_clock().tzinfo is not None
    TimeCondition("tc", OFFICE_NY, matched="a", unmatched="b").decide()  # no error


def test_rules_can_be_built_directly() -> None:
    rule = TimeRule(weekdays=Weekdays.parse("sun"), times=TimeRange.parse("10:00-11:00"))
    g = TimeGroup("sunday-mass", "Europe/Madrid", (rule,))
    assert g.contains(utc(2026, 3, 8, 9, 30))       # Sun 10:30 CET
    assert not g.contains(utc(2026, 3, 29, 9, 30))  # Sun 11:30 CEST
