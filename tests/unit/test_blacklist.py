"""omnicc/blacklist.py: CSV parsing (pure) and the Redis store (against FakeRedis; a real
Redis in tests/integration/test_blacklist_redis.py)."""

from __future__ import annotations

import pytest
import redis

from omnicc import keys
from omnicc.blacklist import (
    MAX_REPORTED,
    BlacklistEntry,
    BlacklistError,
    BlacklistImport,
    BlacklistStore,
    decode_csv,
    normalise_number,
    parse_blacklist_csv,
)
from tests.unit.fake_redis import FakeRedis

# ---------------------------------------------------------------- numbers

NORMALISED = [
    ("5550100", "5550100"),
    ("+15550100199", "+15550100199"),
    ("+1 (555) 010-0199", "+15550100199"),
    ("555-0100", "5550100"),
    ("555.010.0199", "5550100199"),
    ("  0034 91 123 45 67 ", "0034911234567"),
    ("555\t0100", "5550100"),
    ("1", "1"),
]


@pytest.mark.parametrize(("text", "number"), NORMALISED)
def test_numbers_are_normalised(text: str, number: str) -> None:
    assert normalise_number(text) == number


@pytest.mark.parametrize(("text", "problem"), [
    ("", "no number"),
    (" - ", "no number"),
    ("555-CALL", "'555-CALL' is not a phone number"),
    ("5+55", "is not a phone number"),
    ("++1555", "is not a phone number"),
    ("anonymous", "is not a phone number"),
    ("555&PJSIP/x@evil", "is not a phone number"),
    ("５５５", "is not a phone number"),
    ("1" * 33, "has more than 32 digits"),
])
def test_garbage_is_not_a_number(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_number(text)
    assert problem in str(caught.value)


# ---------------------------------------------------------------- CSV

def numbers(imported: BlacklistImport) -> dict[str, str]:
    return imported.as_mapping()


def test_numbers_with_and_without_reasons() -> None:
    imported = parse_blacklist_csv("5550100,spam\n+1 555 010 0199\n555-0102,\"abuse, threats\"\n")
    assert imported.entries == (
        BlacklistEntry("5550100", "spam", 1),
        BlacklistEntry("+15550100199", "", 2),
        BlacklistEntry("5550102", "abuse, threats", 3),
    )
    assert imported.header is False


@pytest.mark.parametrize("header", ["number,reason", "Number,Reason", "phone", "caller_id,why",
                                    "\"Phone Number\",Note", "número,motivo"])
def test_a_header_row_is_skipped(header: str) -> None:
    imported = parse_blacklist_csv(f"{header}\n5550100,spam\n")
    assert imported.header is True
    assert numbers(imported) == {"5550100": "spam"}
    assert imported.entries[0].line == 2


def test_only_the_first_row_can_be_a_header() -> None:
    with pytest.raises(BlacklistError, match="line 2: 'number' is not a phone number"):
        parse_blacklist_csv("5550100\nnumber\n")


def test_semicolons_when_the_first_row_has_no_comma() -> None:
    imported = parse_blacklist_csv("number;reason\n5550100;spam\n5550101;fraude, estafa\n")
    assert numbers(imported) == {"5550100": "spam", "5550101": "fraude, estafa"}


def test_blank_rows_comments_bom_and_crlf() -> None:
    text = "\ufeff# exported 2026-03-01\r\n\r\nnumber,reason\r\n5550100,spam\r\n , \r\n5550101\r\n"
    imported = parse_blacklist_csv(text)
    assert numbers(imported) == {"5550100": "spam", "5550101": ""}
    assert imported.header is True
    assert [e.line for e in imported.entries] == [4, 6]


def test_empty_trailing_columns_are_ignored() -> None:
    assert numbers(parse_blacklist_csv("5550100,spam,,\n")) == {"5550100": "spam"}


def test_a_number_listed_twice_keeps_its_first_reason() -> None:
    imported = parse_blacklist_csv("5550100,first\n555-0100,second\n5550101\n")
    assert numbers(imported) == {"5550100": "first", "5550101": ""}
    assert imported.repeated == 1


def test_an_empty_file_imports_nothing_without_error() -> None:
    assert parse_blacklist_csv("").entries == ()
    assert parse_blacklist_csv("number,reason\n").entries == ()


def test_line_numbers_count_lines_inside_quoted_cells() -> None:
    with pytest.raises(BlacklistError, match="line 3: 'bad' is not") as caught:
        parse_blacklist_csv('5550100,"two\nlines"\nbad\n')
    # The reason spanning two lines is itself refused: one line of text only.
    assert "line 1: the reason must be one line of text" in str(caught.value)


def test_every_bad_row_is_reported_and_nothing_is_imported() -> None:
    text = ("number,reason\n"
            "5550100,ok\n"
            "555-CALL,letters\n"
            "5550102,ok\n"
            "1,2,3\n"
            f"5550104,{'x' * 201}\n"
            "5550105,ok\n")
    with pytest.raises(BlacklistError) as caught:
        parse_blacklist_csv(text)
    assert caught.value.problems == [
        "line 3: '555-CALL' is not a phone number (digits, an optional leading '+', spaces, "
        "dashes, dots and parentheses)",
        "line 5: 3 columns; expected a number and an optional reason",
        "line 6: the reason is longer than 200 characters",
    ]
    assert str(caught.value).startswith("blacklist not imported, 3 bad rows:\nline 3:")


def test_a_long_list_of_problems_is_cut() -> None:
    text = "".join(f"bad{i}\n" for i in range(MAX_REPORTED + 25))
    with pytest.raises(BlacklistError) as caught:
        parse_blacklist_csv(text)
    assert len(caught.value.problems) == MAX_REPORTED
    assert str(caught.value).endswith("\n... and 25 more")
    assert f"{MAX_REPORTED + 25} bad rows" in str(caught.value)


@pytest.mark.parametrize(("text", "problem"), [
    ('5550100,"unclosed\n', "line 1: not valid CSV \\(unexpected end of data\\)"),
    ('5550100\n5550101,ok\n5550102,"unclosed\n5550103\n', "line 3: not valid CSV"),
    ('5550100,"sp"am"\n', "line 1: not valid CSV"),
    ("5550100,sp\x00am\n", "line 1: the reason must be one line of text"),
    ("555\x000100\n", "line 1: '555.x000100' is not a phone number"),
])
def test_broken_csv_is_refused_with_its_line(text: str, problem: str) -> None:
    with pytest.raises(BlacklistError, match=problem):
        parse_blacklist_csv(text)


def test_decoding() -> None:
    assert decode_csv("\ufeffnúmero\n5550100\n".encode()) == "número\n5550100\n"
    with pytest.raises(BlacklistError, match="line 2: not UTF-8 text"):
        decode_csv(b"5550100\n555\xff0101\n")


# ---------------------------------------------------------------- the store, on FakeRedis


@pytest.fixture
def fake() -> FakeRedis:
    return FakeRedis()


def test_import_and_check(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    imported = parse_blacklist_csv("number,reason\n+1 555 010 0199,spam\n5550100\n")
    assert store.import_entries("acme", imported) == 2
    assert fake.keys() == [keys.blacklist("acme")] == ["{t:acme}:blacklist"]
    assert store.reason("acme", "+15550100199") == "spam"
    assert store.reason("acme", "+1-555-010-0199") == "spam"   # the caller is normalised too
    assert store.reason("acme", "5550100") == ""                 # listed without a reason
    assert store.is_blacklisted("acme", "5550100")
    assert store.reason("acme", "15550100199") is None          # exact: no '+' is another
    assert not store.is_blacklisted("acme", "5550199")


@pytest.mark.parametrize("caller", ["", "anonymous", "Restricted", "555&x"])
def test_callers_without_a_number_are_not_blacklisted(fake: FakeRedis, caller: str) -> None:
    store = BlacklistStore(fake)
    store.import_entries("acme", parse_blacklist_csv("5550100\n"))
    before = len(fake.commands)
    assert store.reason("acme", caller) is None
    assert len(fake.commands) == before  # not even asked


def test_tenants_have_separate_lists(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    store.import_entries("acme", parse_blacklist_csv("5550100\n"))
    store.import_entries("globex", parse_blacklist_csv("5550200\n"))
    assert store.is_blacklisted("acme", "5550100")
    assert not store.is_blacklisted("acme", "5550200")
    assert not store.is_blacklisted("globex", "5550100")


def test_replace_drops_numbers_no_longer_listed_and_merge_keeps_them(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    store.import_entries("acme", parse_blacklist_csv("5550100\n5550101\n"))
    assert store.import_entries("acme", parse_blacklist_csv("5550102\n")) == 1
    assert not store.is_blacklisted("acme", "5550100")
    assert store.import_entries("acme", parse_blacklist_csv("5550100,back\n"),
                                replace=False) == 2
    assert store.reason("acme", "5550100") == "back"
    assert store.is_blacklisted("acme", "5550102")


def test_an_empty_import_empties_the_list(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    store.import_entries("acme", parse_blacklist_csv("5550100\n"))
    assert store.import_entries("acme", parse_blacklist_csv("number\n")) == 0
    assert fake.keys() == []


def test_a_failed_import_changes_nothing(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    store.import_entries("acme", parse_blacklist_csv("5550100\n"))
    fake.fail("hset")
    with pytest.raises(redis.ConnectionError):
        store.import_entries("acme", parse_blacklist_csv("5550200\n"))
    fake.heal()
    assert store.is_blacklisted("acme", "5550100")   # the delete did not run either
    assert not store.is_blacklisted("acme", "5550200")


def test_large_imports_go_in_chunks_in_one_transaction(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    text = "".join(f"555{i:07d}\n" for i in range(2500))
    assert store.import_entries("acme", parse_blacklist_csv(text)) == 2500
    assert fake.commands.count("hset") == 3
    assert store.is_blacklisted("acme", "5550002499")


def test_remove_and_size(fake: FakeRedis) -> None:
    store = BlacklistStore(fake)
    store.import_entries("acme", parse_blacklist_csv("5550100\n5550101\n"))
    assert store.size("acme") == 2
    assert store.remove("acme", "555-0100") is True
    assert store.remove("acme", "5550100") is False
    assert store.size("acme") == 1
    with pytest.raises(ValueError, match="not a phone number"):
        store.remove("acme", "everyone")


def test_a_redis_outage_is_an_error_not_a_silent_pass(fake: FakeRedis) -> None:
    # The AGI face decides what an outage means for the call (its failover destination);
    # the store must not answer "not blacklisted" when it does not know.
    store = BlacklistStore(fake)
    fake.fail("hget")
    with pytest.raises(redis.ConnectionError):
        store.reason("acme", "5550100")
