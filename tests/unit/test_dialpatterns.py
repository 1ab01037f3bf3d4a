"""omnicc/dialpatterns.py: Asterisk dial patterns — matching, Asterisk's ordering, errors."""

from __future__ import annotations

import pytest

from omnicc.dialpatterns import (
    DialPattern,
    PatternError,
    PatternTable,
    best_match,
    sort_patterns,
)

# (pattern, number, matches)
MATCHES = [
    # exact extensions
    ("911", "911", True),
    ("911", "9110", False),
    ("911", "91", False),
    ("+34911", "+34911", True),
    ("*11", "*11", True),
    ("#31#", "#31#", True),
    ("555-1234", "5551234", True),   # '-' is ignored, as Asterisk does
    # X Z N, either case
    ("_X", "0", True),
    ("_X", "9", True),
    ("_X", "", False),
    ("_X", "12", False),
    ("_Z", "0", False),
    ("_Z", "1", True),
    ("_z", "9", True),
    ("_N", "1", False),
    ("_N", "2", True),
    ("_n", "9", True),
    ("_x", "5", True),
    ("_NXXNXXXXXX", "2125551234", True),
    ("_NXXNXXXXXX", "2121551234", False),   # 4th digit must be 2-9
    ("_NXXNXXXXXX", "1125551234", False),
    ("_NXXNXXXXXX", "212555123", False),    # one short
    ("_NXXNXXXXXX", "21255512345", False),  # one long
    ("_NXX-NXX-XXXX", "2125551234", True),
    ("_1NXXNXXXXXX", "12125551234", True),
    # X never matches anything but a digit
    ("_X", "*", False),
    ("_X", "#", False),
    ("_X", "+", False),
    # sets
    ("_[1-5]", "1", True),
    ("_[1-5]", "5", True),
    ("_[1-5]", "6", False),
    ("_[1-5]", "0", False),
    ("_[15-7]", "1", True),
    ("_[15-7]", "2", False),
    ("_[15-7]", "4", False),
    ("_[15-7]", "5", True),
    ("_[15-7]", "7", True),
    ("_[15-7]", "8", False),
    ("_[*#]X", "*5", True),
    ("_[*#]X", "#5", True),
    ("_[*#]X", "15", False),
    ("_[0]X", "05", True),
    # . one or more, ! zero or more
    ("_X.", "1", False),
    ("_X.", "12", True),
    ("_X.", "1234567890123", True),
    ("_9.", "9", False),
    ("_9.", "91", True),
    ("_9.", "8", False),
    ("_9!", "9", True),
    ("_9!", "91234", True),
    ("_9!", "8", False),
    ("_.", "1", True),
    ("_!", "", True),
    ("_011.", "01144", True),
    ("_011.", "011", False),
    # + * # and digits are literal in patterns
    ("_+X.", "+34911", True),
    ("_+X.", "34911", False),
    ("_00X.", "0034", True),
    ("_*XX", "*21", True),
    ("_*XX", "#21", False),
    ("_XXX#", "123#", True),
    # the number's characters are never pattern syntax
    ("_X.", "1X", True),    # '.' matches anything after the first digit...
    ("_XX", "1X", False),   # ...but an X in the number is only an X
    ("_1N", "1N", False),
]


@pytest.mark.parametrize(("pattern", "number", "expected"), MATCHES)
def test_matching(pattern: str, number: str, expected: bool) -> None:
    assert DialPattern.compile(pattern).matches(number) is expected


# Asterisk's ordering: (patterns in the order given, number, the one Asterisk picks).
BEST = [
    # an exact extension beats every pattern
    (["_X.", "_9XX", "911"], "911", "911"),
    (["_91X", "911"], "911", "911"),
    (["_9!", "911"], "911", "911"),
    # left to right: the first differing position decides (pbx.c: 1XXXXX before X11111)
    (["_X11111", "_1XXXXX"], "111111", "_1XXXXX"),
    (["_NXXNXXXXXX", "_307754XXXX"], "3077549999", "_307754XXXX"),
    (["_NXXXXXXXXX", "_NXXNXXXXXX"], "3077549999", "_NXXNXXXXXX"),
    (["_NXXXXXXXXX", "_NXXNXXXXXX"], "3071549999", "_NXXXXXXXXX"),  # 4th digit 1: only one
    # a literal beats any set
    (["_X", "5"], "5", "5"),
    (["_[5-6]", "_5"], "5", "_5"),
    (["_[5]", "_5"], "5", "_5"),              # a one-member set scores above a literal
    # smaller sets first: [..] by member count, N (8) < Z (9) < X (10)
    (["_ZXX", "_[1-5]XX"], "123", "_[1-5]XX"),
    (["_[1-5]X", "_[15-7]X"], "15", "_[15-7]X"),  # 4 members beat 5
    (["_XX", "_ZX"], "55", "_ZX"),
    (["_ZX", "_NX"], "55", "_NX"),
    (["_XX", "_NX"], "55", "_NX"),
    (["_NX", "_[2-8]X"], "55", "_[2-8]X"),        # 7 members beat N's 8
    (["_NX", "_[1-8]X"], "55", "_[1-8]X"),        # 8 members each: the lower first member
    (["_[3-9]X", "_[2-8]X"], "55", "_[2-8]X"),   # 7 each: lower first member wins
    # the wildcards come last, '.' before '!'
    (["_X.", "_XX"], "12", "_XX"),
    (["_9.", "_9X"], "91", "_9X"),
    (["_9!", "_9."], "91", "_9."),
    (["_X!", "_X."], "12", "_X."),
    (["_.", "_X!"], "12", "_X!"),                 # X at the first position decides
    (["_9X.", "_9XXXXXXXX"], "912345678", "_9XXXXXXXX"),
    (["_9X.", "_9XXXXXXXX"], "9123456789", "_9X."),  # too long for the exact length
    # a pattern ending with the number beats one going on with '!' (the trie matcher)
    (["_1X!", "_1X"], "12", "_1X"),
    (["_1X", "_1X!"], "123", "_1X!"),             # only one matches
    # same specificity: the one given first wins (Asterisk: unspecified)
    (["_NX", "_[2-9]X"], "55", "_NX"),
    (["_[2-9]X", "_NX"], "55", "_[2-9]X"),
    (["_X.", "_x."], "12", "_X."),
    (["_x.", "_X."], "12", "_x."),
    # dashes are eye candy and do not change the score
    (["_NXX-NXX-XXXX", "_NXXXXXXXXX"], "2125551234", "_NXX-NXX-XXXX"),
    # a typical outbound table
    (["_X.", "_9NXXXXXX", "_91NXXNXXXXXX", "_9011.", "911", "_9911"], "912125551234",
     "_91NXXNXXXXXX"),
    (["_X.", "_9NXXXXXX", "_91NXXNXXXXXX", "_9011.", "911", "_9911"], "95551234",
     "_9NXXXXXX"),
    (["_X.", "_9NXXXXXX", "_91NXXNXXXXXX", "_9011.", "911", "_9911"], "9011442071234567",
     "_9011."),
    (["_X.", "_9NXXXXXX", "_91NXXNXXXXXX", "_9011.", "911", "_9911"], "9911", "_9911"),
    (["_X.", "_9NXXXXXX", "_91NXXNXXXXXX", "_9011.", "911", "_9911"], "5551234", "_X."),
]


@pytest.mark.parametrize(("patterns", "number", "expected"), BEST)
def test_asterisk_ordering_picks_the_best_match(
    patterns: list[str], number: str, expected: str
) -> None:
    found = best_match(patterns, number)
    assert found is not None
    assert found.text == expected


def test_no_pattern_matches() -> None:
    assert best_match(["_NXXNXXXXXX", "911"], "112") is None
    assert PatternTable([("_9X.", "route")]).lookup("8123") is None


def test_sort_order_of_a_whole_table() -> None:
    given = ["_X!", "_X.", "_XX", "_ZX", "_NX", "_[1-5]X", "_[15-7]X", "_1X", "911", "112"]
    assert [p.text for p in sort_patterns(given)] == [
        "112", "911",            # exact extensions first (compared as strings)
        "_1X",                   # a literal
        "_[15-7]X",              # 4 members
        "_[1-5]X",               # 5
        "_NX", "_ZX", "_XX",     # 8, 9, 10
        "_X.", "_X!",            # wildcards last
    ]


def test_pattern_table_returns_the_value_of_the_best_pattern() -> None:
    table = PatternTable([("_X.", "default"), ("_00X.", "international"),
                          ("_0NXXXXXXX", "national"), ("112", "emergency")])
    assert len(table) == 4
    assert table.lookup("112") == (DialPattern.compile("112"), "emergency")
    found = table.lookup("0034911234567")
    assert found is not None and found[1] == "international"
    found = table.lookup("021234567")
    assert found is not None and found[1] == "national"
    found = table.lookup("1234")
    assert found is not None and found[1] == "default"


def test_compiled_patterns_can_be_given_to_a_table() -> None:
    pattern = DialPattern.compile("_9XX")
    assert PatternTable([(pattern, 1)]).lookup("912") == (pattern, 1)


def test_minimum_length() -> None:
    assert DialPattern.compile("_9XX").min_length == 3
    assert DialPattern.compile("_9X.").min_length == 3
    assert DialPattern.compile("_9X!").min_length == 2
    assert DialPattern.compile("_NXX-NXX-XXXX").min_length == 10
    assert DialPattern.compile("555-1234").min_length == 7


# (pattern, a fragment the error must contain)
MALFORMED = [
    ("", "empty"),
    ("_", "nothing to match"),
    ("_---", "nothing to match"),
    ("_[1-5", "'[' at position 2 is never closed"),
    ("_9[", "never closed"),
    ("_[]X", "is empty"),
    ("_1]", "']' at position 3 closes no '['"),
    ("_[5-1]", "runs backwards"),
    ("_[1-]", "'-' needs a digit on both sides"),
    ("_[-5]", "bad character '-'"),
    ("_[a-c]", "bad character 'a'"),
    ("_[1-*]", "a range is between two digits"),
    ("_X.X", "'.' must end the pattern"),
    ("_X!5", "'!' must end the pattern"),
    ("_X..", "'.' must end the pattern"),
    ("_9A", "bad character 'A' at position 3"),
    ("_9 X", "bad character ' '"),
    ("_X/100", "bad character '/'"),
    ("_\\X", "bad character '\\\\'"),
    ("_9&", "bad character '&'"),
    ("_9,1", "bad character ','"),
    ("_9)", "bad character ')'"),
    ("s", "an exact extension is digits"),
    ("fax", "an exact extension is digits"),
    ("91 1", "bad character ' ' at position 3"),
    ("555&PJSIP/x@evil", "bad character '&'"),
    ("-", "no digits"),
    ("_" + "X" * 64, "longer than 64 characters"),
]


@pytest.mark.parametrize(("pattern", "problem"), MALFORMED)
def test_malformed_patterns_are_refused_with_a_clear_error(pattern: str, problem: str) -> None:
    with pytest.raises(PatternError) as caught:
        DialPattern.compile(pattern)
    assert problem in str(caught.value)
    assert str(caught.value).startswith("dial pattern ")


def test_a_pattern_must_be_a_string() -> None:
    with pytest.raises(PatternError, match="a dial pattern is a string"):
        DialPattern.compile(911)  # type: ignore[arg-type]


def test_a_bad_pattern_in_a_table_is_refused_when_the_table_is_built() -> None:
    with pytest.raises(PatternError, match="never closed"):
        PatternTable([("_X.", 1), ("_[12", 2)])
