"""Time groups and time conditions: is it office hours (in the tenant's timezone), and so
which destination takes the call. Pure logic, no I/O: the moment is always passed in (or
read from an injected clock), so tests can stand anywhere in time, on either side of a
daylight-saving change.

A time group is a list of rules and a list of excluded dates (holidays), in one IANA
timezone. A rule matches when all its parts match, a part left out matching always:

    weekdays   "mon-fri", "sat", "fri-mon" (wraps past Sunday), "mon,wed,fri", "mon-wed,fri"
    times      "09:00-18:00"; "22:00-06:00" runs past midnight; "00:00-24:00" all day.
               A start is included, an end is not: 18:00 is outside 09:00-18:00.
    dates      any of "2026-12-25" (one day), "12-25" (every year),
               "2026-12-24..2027-01-02" (a range), "12-24..01-06" (every year, may wrap
               past New Year). "02-29" matches in leap years only.

The group matches when any rule matches and the local date is not an excluded date.

A time range past midnight belongs to the day it starts: "fri 22:00-06:00" covers Friday
22:00 to Saturday 06:00, and not Friday 00:00-06:00. (Asterisk's GotoIfTime checks the
weekday and the time separately, so the same words there mean Friday 00:00-06:00 and
Friday 22:00-24:00, which is rarely what an admin means by a night shift on Friday.)
Excluded dates are whole local calendar days: a holiday on 12-25 closes 12-25 00:00 to
24:00, including the part of a night shift that began on the 24th.

Local time is the wall clock in the group's timezone. On the night clocks go forward, the
skipped hour never happens (a range inside it never matches that night); on the night they
go back, the repeated hour happens twice and matches both times.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MINUTES_PER_DAY = 24 * 60

_TIME_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_FULL_DATE_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_YEARLY_DATE_RE = re.compile(r"([0-9]{2})-([0-9]{2})")
_ZONE_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class TimeConditionError(ValueError):
    """A time group, rule or condition that cannot be used; the message says which part."""


# ---------------------------------------------------------------------------- parts


def _weekday(name: str, text: str) -> int:
    key = name.strip().lower()
    if key in WEEKDAYS:
        return WEEKDAYS.index(key)
    if key in _FULL_NAMES:
        return _FULL_NAMES.index(key)
    raise TimeConditionError(f"weekdays {text!r}: unknown weekday {name.strip()!r} "
                             f"(use {', '.join(WEEKDAYS)})")


@dataclass(frozen=True)
class Weekdays:
    days: frozenset[int]  # 0 is Monday, as date.weekday()
    text: str

    @classmethod
    def parse(cls, text: str) -> Weekdays:
        if not isinstance(text, str) or not text.strip():
            raise TimeConditionError(f"weekdays {text!r}: expected e.g. 'mon-fri' or 'sat'")
        days: set[int] = set()
        for item in text.split(","):
            first, dash, last = item.partition("-")
            start = _weekday(first, text)
            end = _weekday(last, text) if dash else start
            # A range wraps past Sunday: fri-mon is Friday, Saturday, Sunday, Monday.
            span = (end - start) % 7
            days.update((start + offset) % 7 for offset in range(span + 1))
        return cls(frozenset(days), text)

    def __contains__(self, day: object) -> bool:
        return day in self.days


def _minute_of(text: str, whole: str, allow_24: bool) -> int:
    found = _TIME_RE.fullmatch(text.strip())
    if not found:
        raise TimeConditionError(f"times {whole!r}: {text.strip()!r} is not HH:MM")
    hours, minutes = int(found.group(1)), int(found.group(2))
    if hours == 24 and minutes == 0 and allow_24:
        return MINUTES_PER_DAY
    if hours > 23:
        raise TimeConditionError(f"times {whole!r}: hour {hours} is not 0 to 23"
                                 + (" (24:00 only ends a range)" if hours == 24 else ""))
    if minutes > 59:
        raise TimeConditionError(f"times {whole!r}: minute {minutes} is not 0 to 59")
    return hours * 60 + minutes


@dataclass(frozen=True)
class TimeRange:
    start: int  # minutes after midnight, included
    end: int    # minutes after midnight, excluded; below start: the range ends the next day
    text: str

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        if not isinstance(text, str) or text.count("-") != 1:
            raise TimeConditionError(f"times {text!r}: expected HH:MM-HH:MM, e.g. 09:00-18:00")
        first, last = text.split("-")
        start = _minute_of(first, text, allow_24=False)
        end = _minute_of(last, text, allow_24=True)
        if start == end:
            raise TimeConditionError(f"times {text!r}: starts where it ends (for the whole "
                                     "day write 00:00-24:00, or leave times out)")
        return cls(start, end, text)

    @property
    def past_midnight(self) -> bool:
        return self.end < self.start


def _check_day(year: int, month: int, day: int, text: str) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        raise TimeConditionError(f"date {text!r}: no such day") from None


@dataclass(frozen=True)
class DateSpec:
    """One day or a range of days, of one year or of every year."""

    first: tuple[int, int, int]  # (year, month, day); year 0 for every year
    last: tuple[int, int, int]
    text: str

    @classmethod
    def parse(cls, text: str) -> DateSpec:
        if not isinstance(text, str):
            raise TimeConditionError(f"date {text!r}: expected e.g. '2026-12-25' or '12-25'")
        first_text, dots, last_text = text.partition("..")
        first = cls._one(first_text.strip(), text)
        last = cls._one(last_text.strip(), text) if dots else first
        if (first[0] == 0) != (last[0] == 0):
            raise TimeConditionError(f"date {text!r}: both ends need a year, or neither")
        if first[0] and last < first:
            raise TimeConditionError(f"date {text!r}: the range ends before it starts")
        return cls(first, last, text)

    @staticmethod
    def _one(part: str, text: str) -> tuple[int, int, int]:
        full = _FULL_DATE_RE.fullmatch(part)
        if full:
            day = _check_day(int(full.group(1)), int(full.group(2)), int(full.group(3)), text)
            return (day.year, day.month, day.day)
        yearly = _YEARLY_DATE_RE.fullmatch(part)
        if yearly:
            month, day = int(yearly.group(1)), int(yearly.group(2))
            _check_day(2000, month, day, text)  # a leap year: 02-29 is a real yearly date
            return (0, month, day)
        raise TimeConditionError(f"date {text!r}: {part!r} is not YYYY-MM-DD or MM-DD")

    @property
    def yearly(self) -> bool:
        return self.first[0] == 0

    def __contains__(self, day: object) -> bool:
        if not isinstance(day, date):
            return False
        if not self.yearly:
            return self.first <= (day.year, day.month, day.day) <= self.last
        this = (day.month, day.day)
        first, last = self.first[1:], self.last[1:]
        if first <= last:
            return first <= this <= last
        return this >= first or this <= last  # wraps past New Year: 12-24..01-06


# ---------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class TimeRule:
    weekdays: Weekdays | None = None
    times: TimeRange | None = None
    dates: tuple[DateSpec, ...] = ()

    def _day_matches(self, day: date) -> bool:
        if self.weekdays is not None and day.weekday() not in self.weekdays:
            return False
        return not self.dates or any(day in spec for spec in self.dates)

    def matches(self, local: datetime) -> bool:
        """Whether the wall-clock moment `local` falls in this rule."""
        day = local.date()
        if self.times is None:
            return self._day_matches(day)
        minute = local.hour * 60 + local.minute
        start, end = self.times.start, self.times.end
        if not self.times.past_midnight:
            return start <= minute < end and self._day_matches(day)
        # Past midnight: the evening belongs to today, the early morning to yesterday.
        if minute >= start and self._day_matches(day):
            return True
        return minute < end and self._day_matches(day - timedelta(days=1))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "rule") -> TimeRule:
        if not isinstance(data, Mapping):
            raise TimeConditionError(f"{where}: expected a mapping of weekdays, times, dates")
        unknown = sorted(set(data) - {"weekdays", "times", "dates"})
        if unknown:
            raise TimeConditionError(f"{where}: unknown key {unknown[0]!r}")
        try:
            weekdays = data.get("weekdays")
            times = data.get("times")
            return cls(
                weekdays=Weekdays.parse(weekdays) if weekdays is not None else None,
                times=TimeRange.parse(times) if times is not None else None,
                dates=_date_specs(data.get("dates", ())),
            )
        except TimeConditionError as exc:
            raise TimeConditionError(f"{where}: {exc}") from None


def _date_specs(values: str | Iterable[str]) -> tuple[DateSpec, ...]:
    if isinstance(values, str):
        values = [values]
    return tuple(DateSpec.parse(v) for v in values)


def load_zone(key: str) -> ZoneInfo:
    """The IANA timezone `key` ("Europe/Madrid"), or a TimeConditionError naming it."""
    if not isinstance(key, str) or not _ZONE_KEY_RE.fullmatch(key):
        raise TimeConditionError(f"timezone {key!r} is not an IANA timezone name such as "
                                 "'Europe/Madrid'")
    try:
        return ZoneInfo(key)
    except (KeyError, ValueError, OSError):
        raise TimeConditionError(f"unknown timezone {key!r} (an IANA name such as "
                                 "'America/New_York')") from None


@dataclass(frozen=True)
class TimeGroup:
    name: str
    timezone: str
    rules: tuple[TimeRule, ...]
    except_dates: tuple[DateSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "except_dates", tuple(self.except_dates))
        if not self.rules:
            raise TimeConditionError(f"time group {self.name!r}: needs at least one rule")
        try:
            load_zone(self.timezone)
        except TimeConditionError as exc:
            raise TimeConditionError(f"time group {self.name!r}: {exc}") from None

    @property
    def zone(self) -> ZoneInfo:
        return load_zone(self.timezone)  # ZoneInfo caches: this is a dict look-up

    def local_time(self, now: datetime) -> datetime:
        if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
            # A naive time would be read in the server's zone, silently: refuse it.
            raise TimeConditionError(f"time group {self.name!r}: the moment must carry a "
                                     f"timezone, got {now!r}")
        return now.astimezone(self.zone)

    def contains(self, now: datetime) -> bool:
        local = self.local_time(now)
        if any(local.date() in spec for spec in self.except_dates):
            return False
        return any(rule.matches(local) for rule in self.rules)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimeGroup:
        """From the config shape docs/routing.md proposes:
        {name, timezone, rules: [{weekdays, times, dates}], except_dates: [...]}."""
        if not isinstance(data, Mapping):
            raise TimeConditionError("a time group is a mapping")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise TimeConditionError("a time group needs a name")
        unknown = sorted(set(data) - {"name", "timezone", "rules", "except_dates"})
        if unknown:
            raise TimeConditionError(f"time group {name!r}: unknown key {unknown[0]!r}")
        if "timezone" not in data:
            raise TimeConditionError(f"time group {name!r}: needs a timezone")
        rules = data.get("rules", ())
        if not isinstance(rules, Sequence) or isinstance(rules, str):
            raise TimeConditionError(f"time group {name!r}: rules is a list")
        try:
            except_dates = _date_specs(data.get("except_dates", ()))
        except TimeConditionError as exc:
            raise TimeConditionError(f"time group {name!r}: except_dates: {exc}") from None
        return cls(
            name=name,
            timezone=data["timezone"],
            rules=tuple(TimeRule.from_dict(r, f"time group {name!r}: rules[{i}]")
                        for i, r in enumerate(rules)),
            except_dates=except_dates,
        )


@dataclass(frozen=True)
class TimeDecision:
    condition: str
    matched: bool
    destination: str
    local_time: datetime  # the moment as the group's wall clock read it (for the event log)


@dataclass(frozen=True)
class TimeCondition:
    """A time group and two destinations (as the config writes them: ``queue:sales``,
    ``hangup``, ...): one while the group matches, the other otherwise."""

    name: str
    group: TimeGroup
    matched: str
    unmatched: str

    def __post_init__(self) -> None:
        for key in ("matched", "unmatched"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise TimeConditionError(f"time condition {self.name!r}: {key} needs a "
                                         "destination")

    def decide(self, now: datetime | None = None, clock: Clock = system_clock) -> TimeDecision:
        moment = clock() if now is None else now
        local = self.group.local_time(moment)
        matched = self.group.contains(moment)
        return TimeDecision(self.name, matched, self.matched if matched else self.unmatched,
                            local)
