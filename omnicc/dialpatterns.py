"""Asterisk-style dial patterns: parse once, match numbers, and pick the best of several
the way Asterisk does. Pure logic, no I/O.

Syntax (as Asterisk's extensions.conf; docs.asterisk.org "Pattern Matching"):

    1234        an exact extension: matches "1234" only
    _...        a pattern; after the underscore:
      0-9 + * #   that character
      X  Z  N     one digit 0-9, 1-9, 2-9 (lower case x z n too)
      [15-7]      one of the characters listed; a-b is a range of digits
      .           one or more characters (only at the end)
      !           zero or more characters (only at the end)
      -           ignored, for readability (_NXX-NXX-XXXX)

What Asterisk accepts silently and matches in surprising ways is refused here with a
PatternError naming the character: an unclosed or empty `[`, a range written backwards,
anything after `.` or `!`, letters other than X/Z/N, spaces, `\\`, `/` (a caller-ID
match, not supported). Exact extensions are digits, `+`, `*`, `#` (and `-`): no named
extensions such as `s` or `fax`.

Ordering (which pattern wins when several match) follows what Asterisk runs, main/pbx.c
of asterisk/asterisk:

- An exact extension beats every pattern ("Asterisk first looks for an extension that
  matches exactly", docs.asterisk.org Pattern Matching; ext_cmp() sorts non-patterns first).
- Patterns are compared position by position, left to right, like words in a dictionary;
  the first position where they differ decides, the smaller set winning. The pattern
  trie's comment in pbx.c: "1XXXXX" beats "X11111" because "1" is more specific than "X",
  whatever the rest. Each position scores as add_pattern_node() / ext_cmp_pattern_pos()
  compute it: a literal 1; a set [..] (members << 8) | lowest member; N 0x0832 (8
  members from '2'), Z 0x0931, X 0x0A30; `.` 0x18000; `!` 0x28000. So a set of fewer
  members beats a bigger one ([1-5] before Z, [15-7] before [1-5], [2-8] before N), and
  sets of as many members sort by their lowest member ([1-8] before N).
- A pattern that ends where the number ends beats one that goes on with `!` (which would
  match nothing more): new_find_extension() takes a pattern ending at the last digit before
  following the trie further.
- Equal scores (N and [2-9]; [13] and [14]; the same pattern twice): Asterisk's trie keeps
  them in the order they were inserted from a hash table, i.e. unspecified. Here the
  earlier one in the list given wins, so the outcome is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

MAX_PATTERN_LENGTH = 64

# The characters a number (and so a literal) may hold: what omnicc lets reach a Dial string.
NUMBER_CHARACTERS = frozenset("0123456789+*#")
DIGITS = "0123456789"

# Per-position scores, as Asterisk's main/pbx.c computes them (lower is more specific).
LITERAL_SCORE = 1
N_SCORE = 0x0832
Z_SCORE = 0x0931
X_SCORE = 0x0A30
DOT_SCORE = 0x18000
BANG_SCORE = 0x28000
# Where a pattern ends: it only competes with `!` (zero more characters); every other
# element needs one more character, so a number cannot match both. Lowest, so that a pattern
# ending with the number beats one continuing with `!`, as the trie matcher does.
END_SCORE = 0

_CLASSES = {"X": (DIGITS, X_SCORE), "Z": (DIGITS[1:], Z_SCORE), "N": (DIGITS[2:], N_SCORE)}


class PatternError(ValueError):
    """A dial pattern that cannot be used; the message names the pattern and the fault."""

    def __init__(self, pattern: str, problem: str):
        self.pattern = pattern
        self.problem = problem
        super().__init__(f"dial pattern {pattern!r}: {problem}")


@dataclass(frozen=True)
class _Element:
    members: str      # the characters it matches; "" for the wildcards
    score: int
    wildcard: str = ""  # "." or "!" for the wildcards


@dataclass(frozen=True)
class DialPattern:
    """One compiled pattern or exact extension. Build with DialPattern.compile()."""

    text: str
    is_pattern: bool
    # Per-position scores and the end marker: compared as tuples, lower wins.
    rank: tuple[int, ...] = field(repr=False)
    min_length: int = field(repr=False)     # the shortest number it matches
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def compile(cls, text: str) -> DialPattern:
        if not isinstance(text, str):
            raise PatternError(repr(text), "a dial pattern is a string")
        if not text:
            raise PatternError(text, "empty")
        if len(text) > MAX_PATTERN_LENGTH:
            raise PatternError(text[:MAX_PATTERN_LENGTH] + "...",
                               f"longer than {MAX_PATTERN_LENGTH} characters")
        if text.startswith("_"):
            elements = _parse_pattern(text)
            regex = "".join(_element_regex(e) for e in elements)
            rank = tuple(e.score for e in elements) + (END_SCORE,)
            min_length = sum(1 for e in elements if e.wildcard != "!")
            return cls(text, True, rank, min_length, re.compile(regex, re.DOTALL))
        number = _parse_exact(text)
        return cls(text, False, (), len(number), re.compile(re.escape(number)))

    def matches(self, number: str) -> bool:
        """Whether `number` (as dialled, every character literal) matches in full."""
        return self._regex.fullmatch(number) is not None

    @property
    def sort_key(self) -> tuple[int, tuple[int, ...], str]:
        """Orders patterns as Asterisk prefers them: exact extensions first, then by
        specificity position by position. Ties are for the caller to break (list order)."""
        if not self.is_pattern:
            return (0, (), self.text.replace("-", ""))
        return (1, self.rank, "")

    def __str__(self) -> str:
        return self.text


def _parse_exact(text: str) -> str:
    for index, char in enumerate(text):
        if char not in NUMBER_CHARACTERS and char != "-":
            raise PatternError(text, f"bad character {char!r} at position {index + 1}: an "
                                     "exact extension is digits, '+', '*' and '#' (a "
                                     "pattern starts with '_')")
    number = text.replace("-", "")
    if not number:
        raise PatternError(text, "no digits")
    return number


def _parse_pattern(text: str) -> list[_Element]:
    elements: list[_Element] = []
    index = 1  # after the underscore
    while index < len(text):
        char = text[index]
        if elements and elements[-1].wildcard:
            raise PatternError(text, f"{elements[-1].wildcard!r} must end the pattern, "
                                     f"found {char!r} after it at position {index + 1}")
        if char == "-":
            index += 1
            continue
        if char in NUMBER_CHARACTERS:
            elements.append(_Element(char, LITERAL_SCORE))
        elif char.upper() in _CLASSES:
            members, score = _CLASSES[char.upper()]
            elements.append(_Element(members, score))
        elif char in ".!":
            elements.append(_Element("", DOT_SCORE if char == "." else BANG_SCORE, char))
        elif char == "[":
            close = text.find("]", index + 1)
            if close < 0:
                raise PatternError(text, f"'[' at position {index + 1} is never closed")
            elements.append(_parse_set(text, index, close))
            index = close
        elif char == "]":
            raise PatternError(text, f"']' at position {index + 1} closes no '['")
        else:
            raise PatternError(text, f"bad character {char!r} at position {index + 1}")
        index += 1
    if not elements:
        raise PatternError(text, "nothing to match after '_'")
    return elements


def _parse_set(text: str, open_at: int, close_at: int) -> _Element:
    body = text[open_at + 1:close_at]
    where = f"the set at position {open_at + 1}"
    if not body:
        raise PatternError(text, f"{where} is empty")
    members: set[str] = set()
    i = 0
    while i < len(body):
        char = body[i]
        if char not in NUMBER_CHARACTERS:
            raise PatternError(text, f"bad character {char!r} in {where}")
        if i + 2 < len(body) and body[i + 1] == "-":
            last = body[i + 2]
            if char not in DIGITS or last not in DIGITS:
                raise PatternError(text, f"{where}: a range is between two digits, "
                                         f"got {char}-{last}")
            if last < char:
                raise PatternError(text, f"{where}: the range {char}-{last} runs backwards")
            members.update(DIGITS[DIGITS.index(char):DIGITS.index(last) + 1])
            i += 3
            continue
        if i + 1 < len(body) and body[i + 1] == "-":
            raise PatternError(text, f"{where}: '-' needs a digit on both sides")
        members.add(char)
        i += 1
    ordered = "".join(sorted(members))
    # Asterisk: (number of members << 8) | the lowest member.
    return _Element(ordered, (len(ordered) << 8) | ord(ordered[0]))


def _element_regex(element: _Element) -> str:
    if element.wildcard == ".":
        return ".+"
    if element.wildcard == "!":
        return ".*"
    if len(element.members) == 1:
        return re.escape(element.members)
    return "[" + "".join(re.escape(c) for c in element.members) + "]"


T = TypeVar("T")


class PatternTable(Generic[T]):
    """Patterns with a value each (a route, a destination), compiled and ordered once.

    lookup() returns the value of the best pattern matching a number, by Asterisk's
    ordering; among equally specific patterns the one given first wins."""

    def __init__(self, entries: Iterable[tuple[str | DialPattern, T]]):
        compiled = [
            (p if isinstance(p, DialPattern) else DialPattern.compile(p), value)
            for p, value in entries
        ]
        # sorted() is stable: equal keys keep the order given.
        self._entries: list[tuple[DialPattern, T]] = sorted(
            compiled, key=lambda entry: entry[0].sort_key)

    def __iter__(self) -> Iterator[tuple[DialPattern, T]]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, number: str) -> tuple[DialPattern, T] | None:
        for pattern, value in self._entries:
            if pattern.matches(number):
                return pattern, value
        return None


def best_match(patterns: Sequence[str | DialPattern], number: str) -> DialPattern | None:
    """The pattern Asterisk would pick for `number` among `patterns`, or None."""
    found = PatternTable((p, None) for p in patterns).lookup(number)
    return found[0] if found else None


def sort_patterns(patterns: Sequence[str | DialPattern]) -> list[DialPattern]:
    """`patterns` in Asterisk's order of preference (the stable order for ties)."""
    return [p for p, _ in PatternTable((p, None) for p in patterns)]
