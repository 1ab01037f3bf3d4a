"""The caller blacklist: numbers imported from CSV into Redis, checked on each inbound call.

CSV format (docs/routing.md has examples):

- One number a row, and an optional reason in a second column. Commas separate columns,
  or semicolons when the first row has semicolons and no comma (spreadsheets in many
  locales save so). Quotes as usual in CSV. UTF-8, with or without a byte-order mark.
- An optional header: a first row whose first cell is `number`, `phone`, `caller`, ... (see
  HEADER_NAMES) is skipped. Blank rows and rows whose first cell starts with `#` are skipped.
- Numbers are normalised: spaces, tabs, dashes, dots and parentheses are removed, a leading
  `+` is kept; what is left must be 1 to 32 digits. `+1 (555) 010-0199` is `+15550100199`.
  Numbers are matched exactly as normalised: `+15550100199` and `15550100199` are two
  numbers, so import them as the trunks present the caller ID.
- A reason is one line of at most 200 characters.
- Extra columns are an error, unless they are empty (trailing separators).

All or nothing: a file with any bad row imports nothing, and the error lists every bad row
with its line number (the first MAX_REPORTED of them), so the admin fixes the file and
imports it again, rather than finding out later which numbers were silently left out.
A number listed twice keeps its first reason; the import report counts the repeats.

Storage: one Redis hash per tenant, ``{t:<tenant>}:blacklist``, number -> reason (a hash
rather than a set so the reason travels with the number; the check is one HGET). An import
replaces the tenant's whole list (or adds to it, with replace=False) in one MULTI/EXEC, so
a call checked during an import sees the old list or the new one, never half of it.
Parsing is pure; BlacklistStore and check_caller_async are the Redis edges.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omnicc import keys

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


class BlacklistError(ValueError):
    """A CSV file that was not imported; ``problems`` holds one line per bad row."""

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = problems
        total = len(problems) if total is None else total
        shown = problems[:MAX_REPORTED]
        more = f"\n... and {total - len(shown)} more" if total > len(shown) else ""
        super().__init__(f"blacklist not imported, {total} bad row{'s' if total != 1 else ''}"
                         ":\n" + "\n".join(shown) + more)


def normalise_number(text: str) -> str:
    """`text` as the blacklist stores it, or ValueError saying why it is not a number."""
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
class BlacklistEntry:
    number: str
    reason: str
    line: int  # in the CSV file, 1-based


@dataclass(frozen=True)
class BlacklistImport:
    entries: tuple[BlacklistEntry, ...]
    header: bool            # a header row was skipped
    repeated: int           # rows whose number was listed before (first reason kept)

    def as_mapping(self) -> dict[str, str]:
        return {entry.number: entry.reason for entry in self.entries}


def decode_csv(data: bytes) -> str:
    """The text of a CSV file: UTF-8, a byte-order mark dropped; else a BlacklistError
    naming the line of the first undecodable byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BlacklistError([f"line {line}: not UTF-8 text ({exc.reason})"]) from None


def _delimiter(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return ";" if ";" in first and "," not in first else ","


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The CSV itself is broken (an unclosed quote, a NUL): nothing after can be trusted.
            raise BlacklistError([f"line {line}: not valid CSV ({exc})"]) from None
        yield line, row
        line = reader.line_num + 1  # a quoted cell may span lines


def _reason(cell: str) -> str:
    reason = cell.strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise ValueError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in reason):
        raise ValueError("the reason must be one line of text")
    return reason


def parse_blacklist_csv(text: str) -> BlacklistImport:
    """Every entry of the CSV `text`, or BlacklistError listing every bad row."""
    if text.startswith("\ufeff"):
        text = text[1:]
    entries: dict[str, BlacklistEntry] = {}
    problems: list[str] = []
    bad_rows = 0
    header = False
    repeated = 0
    first_row = True
    rows = 0
    for line, row in _rows(text):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        rows += 1
        if rows > MAX_ROWS:
            raise BlacklistError([f"line {line}: more than {MAX_ROWS} rows; split the file"])
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
        entries[number] = BlacklistEntry(number, reason, line)
    if bad_rows:
        raise BlacklistError(problems, total=bad_rows)
    return BlacklistImport(tuple(entries.values()), header, repeated)


# ---------------------------------------------------------------------------- Redis edges


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class BlacklistStore:
    """A tenant's blacklist in Redis, over a synchronous redis-py client (the CLI, KEMI)."""

    def __init__(self, redis: Any):
        self._redis = redis

    def import_entries(self, tenant: str, imported: BlacklistImport,
                       replace: bool = True) -> int:
        """Writes `imported` in one transaction; returns the tenant's list size after."""
        key = keys.blacklist(tenant)
        mapping = imported.as_mapping()
        pipe = self._redis.pipeline(transaction=True)
        if replace:
            pipe.delete(key)
        items = list(mapping.items())
        for start in range(0, len(items), _IMPORT_CHUNK):
            pipe.hset(key, mapping=dict(items[start:start + _IMPORT_CHUNK]))
        pipe.hlen(key)
        return int(pipe.execute()[-1])

    def reason(self, tenant: str, caller: str) -> str | None:
        """The reason `caller` is blacklisted ("" when none was given), or None when it is
        not — nor a number at all (anonymous callers are for another rule)."""
        try:
            number = normalise_number(caller)
        except ValueError:
            return None
        found = self._redis.hget(keys.blacklist(tenant), number)
        return None if found is None else _text(found)

    def is_blacklisted(self, tenant: str, caller: str) -> bool:
        return self.reason(tenant, caller) is not None

    def remove(self, tenant: str, number: str) -> bool:
        return bool(self._redis.hdel(keys.blacklist(tenant), normalise_number(number)))

    def size(self, tenant: str) -> int:
        return int(self._redis.hlen(keys.blacklist(tenant)))


async def check_caller_async(redis: Any, tenant: str, caller: str) -> str | None:
    """BlacklistStore.reason() over redis.asyncio, for the FastAGI server."""
    try:
        number = normalise_number(caller)
    except ValueError:
        return None
    found = await redis.hget(keys.blacklist(tenant), number)
    return None if found is None else _text(found)
