"""Lists of phone numbers imported from CSV into Redis, one hash per tenant and list: the
caller blacklist (omnicc/blacklist.py) and the do-not-call list (omnicc/do_not_call.py)
share this format, its checks and its store.

CSV format (docs/routing.md has examples):

- One number a row, and an optional reason in a second column. Commas separate columns,
  or semicolons when the first row has semicolons and no comma (spreadsheets in many
  locales save so). Quotes as usual in CSV. UTF-8, with or without a byte-order mark.
- An optional header: a first row whose first cell is `number`, `phone`, `caller`, ... (see
  HEADER_NAMES) is skipped. Blank rows and rows whose first cell starts with `#` are skipped.
- Numbers are normalised: spaces, tabs, dashes, dots and parentheses are removed, a leading
  `+` is kept; what is left must be 1 to 32 digits. `+1 (555) 010-0199` is `+15550100199`.
  Numbers are matched exactly as normalised: `+15550100199` and `15550100199` are two
  numbers, so import them in the form the check will see.
- A reason is one line of at most 200 characters.
- Extra columns are an error, unless they are empty (trailing separators).

All or nothing: a file with any bad row imports nothing, and the error lists every bad row
with its line number (the first MAX_REPORTED of them), so the admin fixes the file and
imports it again, rather than finding out later which numbers were silently left out.
A number listed twice keeps its first reason; the import report counts the repeats.

Storage: one Redis hash per tenant and list, number -> reason (a hash rather than a set so
the reason travels with the number; a check is one HGET, or one HMGET for several). An
import replaces the tenant's whole list (or adds to it, with replace=False) in one
MULTI/EXEC, so a call checked during an import sees the old list or the new one, never
half of it. Parsing is pure; NumberListStore and lookup_async are the Redis edges.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

MAX_NUMBER_DIGITS = 32
MAX_REASON_LENGTH = 200
MAX_ROWS = 1_000_000
MAX_REPORTED = 50
HEADER_NAMES = frozenset({"number", "numbers", "phone", "phone_number", "phone number",
                          "telephone", "caller", "caller_id", "callerid", "caller id",
                          "cid", "numero", "número"})
_SEPARATORS = re.compile(r"[ \t\-.()]")
_NUMBER_RE = re.compile(rf"\+?[0-9]{{1,{MAX_NUMBER_DIGITS}}}")
_IMPORT_CHUNK = 1000


class NumberListError(ValueError):
    """A CSV file that was not imported; ``problems`` holds one line per bad row."""

    list_name = "number list"

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = problems
        total = len(problems) if total is None else total
        shown = problems[:MAX_REPORTED]
        more = f"\n... and {total - len(shown)} more" if total > len(shown) else ""
        super().__init__(f"{self.list_name} not imported, {total} bad "
                         f"row{'s' if total != 1 else ''}:\n" + "\n".join(shown) + more)


def normalise_number(text: str) -> str:
    """`text` as a number list stores it, or ValueError saying why it is not a number."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not text")
    number = _SEPARATORS.sub("", text.strip())
    if not number:
        raise ValueError("no number")
    if not number.isascii() or not _NUMBER_RE.fullmatch(number):
        shown = text if len(text) <= 40 else text[:37] + "..."
        if len(number.lstrip("+")) > MAX_NUMBER_DIGITS and number.lstrip("+").isdigit():
            raise ValueError(f"{shown!r} has more than {MAX_NUMBER_DIGITS} digits")
        raise ValueError(f"{shown!r} is not a phone number (digits, an optional leading '+', "
                         "spaces, dashes, dots and parentheses)")
    return number


@dataclass(frozen=True)
class NumberEntry:
    number: str
    reason: str
    line: int  # in the CSV file, 1-based


@dataclass(frozen=True)
class NumberImport:
    entries: tuple[NumberEntry, ...]
    header: bool            # a header row was skipped
    repeated: int           # rows whose number was listed before (first reason kept)

    def as_mapping(self) -> dict[str, str]:
        return {entry.number: entry.reason for entry in self.entries}


def decode_csv(data: bytes, error: type[NumberListError] = NumberListError) -> str:
    """The text of a CSV file: UTF-8, a byte-order mark dropped; else `error` naming the
    line of the first undecodable byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error([f"line {line}: not UTF-8 text ({exc.reason})"]) from None


def _delimiter(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return ";" if ";" in first and "," not in first else ","


def _rows(text: str, error: type[NumberListError]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The CSV itself is broken (an unclosed quote, a NUL): nothing after can be trusted.
            raise error([f"line {line}: not valid CSV ({exc})"]) from None
        yield line, row
        line = reader.line_num + 1  # a quoted cell may span lines


def _reason(cell: str) -> str:
    reason = cell.strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise ValueError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in reason):
        raise ValueError("the reason must be one line of text")
    return reason


def parse_number_csv(text: str,
                     error: type[NumberListError] = NumberListError) -> NumberImport:
    """Every entry of the CSV `text`, or `error` listing every bad row."""
    if text.startswith("\ufeff"):
        text = text[1:]
    entries: dict[str, NumberEntry] = {}
    problems: list[str] = []
    bad_rows = 0
    header = False
    repeated = 0
    first_row = True
    rows = 0
    for line, row in _rows(text, error):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        rows += 1
        if rows > MAX_ROWS:
            raise error([f"line {line}: more than {MAX_ROWS} rows; split the file"])
        if first_row:
            first_row = False
            if cells[0].lower() in HEADER_NAMES:
                header = True
                continue
        try:
            if len(cells) > 2 and any(cells[2:]):
                raise ValueError(f"{len(cells)} columns; expected a number and an optional "
                                 "reason")
            number = normalise_number(cells[0])
            reason = _reason(cells[1]) if len(cells) > 1 else ""
        except ValueError as exc:
            bad_rows += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"line {line}: {exc}")
            continue
        if number in entries:
            repeated += 1
            continue
        entries[number] = NumberEntry(number, reason, line)
    if bad_rows:
        raise error(problems, total=bad_rows)
    return NumberImport(tuple(entries.values()), header, repeated)


# ---------------------------------------------------------------------------- Redis edges


def decoded(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def normalised_or_none(text: str) -> str | None:
    """`text` normalised, or None when it is not a number at all (an anonymous caller, a
    dialled `*21#`): such a number is on no list."""
    try:
        return normalise_number(text)
    except ValueError:
        return None


ListKey = Callable[[str], str]  # tenant -> the Redis key of its list (omnicc.keys)


class NumberListStore:
    """One kind of a tenant's number list in Redis, over a synchronous redis-py client (the
    CLI, KEMI); `key` names the tenant's hash."""

    def __init__(self, redis: Any, key: ListKey):
        self._redis = redis
        self._key = key

    def import_entries(self, tenant: str, imported: NumberImport,
                       replace: bool = True) -> int:
        """Writes `imported` in one transaction; returns the tenant's list size after."""
        key = self._key(tenant)
        mapping = imported.as_mapping()
        pipe = self._redis.pipeline(transaction=True)
        if replace:
            pipe.delete(key)
        items = list(mapping.items())
        for start in range(0, len(items), _IMPORT_CHUNK):
            pipe.hset(key, mapping=dict(items[start:start + _IMPORT_CHUNK]))
        pipe.hlen(key)
        return int(pipe.execute()[-1])

    def reason(self, tenant: str, number: str) -> str | None:
        """The reason `number` is listed ("" when none was given), or None when it is not —
        nor a number at all."""
        normalised = normalised_or_none(number)
        if normalised is None:
            return None
        found = self._redis.hget(self._key(tenant), normalised)
        return None if found is None else decoded(found)

    def add(self, tenant: str, number: str, reason: str = "") -> bool:
        """Lists one number (ValueError for a bad number or reason); False when it was
        listed already (its reason is then replaced)."""
        return bool(self._redis.hset(self._key(tenant), normalise_number(number),
                                     _reason(reason)))

    def remove(self, tenant: str, number: str) -> bool:
        return bool(self._redis.hdel(self._key(tenant), normalise_number(number)))

    def size(self, tenant: str) -> int:
        return int(self._redis.hlen(self._key(tenant)))


async def lookup_async(redis: Any, key: str, numbers: Iterable[str]) -> dict[str, str]:
    """Which of `numbers` are in the list hash `key` (as given -> reason), in one round
    trip over redis.asyncio (the FastAGI server). A Redis error is raised, never read as
    "not listed"."""
    asked = {number: normalised for number in numbers
             if (normalised := normalised_or_none(number)) is not None}
    if not asked:
        return {}
    fields = list(dict.fromkeys(asked.values()))
    found = dict(zip(fields, await redis.hmget(key, fields), strict=True))
    return {number: decoded(found[normalised]) for number, normalised in asked.items()
            if found[normalised] is not None}
