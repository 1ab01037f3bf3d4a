"""The caller blacklist: numbers imported from CSV into Redis, checked on each inbound call.

The CSV format, the normalisation of numbers, the all-or-nothing import and the store are
omnicc/number_list.py's, shared with the do-not-call list (docs/routing.md has examples).
Storage: one Redis hash per tenant, ``{t:<tenant>}:blacklist``, number -> reason; the check
of a caller is one HGET.
"""

from __future__ import annotations

from typing import Any

from omnicc import keys
from omnicc.number_list import (
    HEADER_NAMES,
    MAX_NUMBER_DIGITS,
    MAX_REASON_LENGTH,
    MAX_REPORTED,
    MAX_ROWS,
    NumberEntry,
    NumberImport,
    NumberListError,
    NumberListStore,
    decoded,
    normalise_number,
    normalised_or_none,
    parse_number_csv,
)
from omnicc.number_list import decode_csv as _decode_csv

__all__ = ["HEADER_NAMES", "MAX_NUMBER_DIGITS", "MAX_REASON_LENGTH", "MAX_REPORTED",
           "MAX_ROWS", "BlacklistEntry", "BlacklistError", "BlacklistImport",
           "BlacklistStore", "check_caller_async", "decode_csv", "normalise_number",
           "parse_blacklist_csv"]

BlacklistEntry = NumberEntry
BlacklistImport = NumberImport


class BlacklistError(NumberListError):
    list_name = "blacklist"


def decode_csv(data: bytes) -> str:
    """The text of a CSV file (UTF-8), or BlacklistError naming the line of a bad byte."""
    return _decode_csv(data, BlacklistError)


def parse_blacklist_csv(text: str) -> NumberImport:
    """Every entry of the CSV `text`, or BlacklistError listing every bad row."""
    return parse_number_csv(text, BlacklistError)


class BlacklistStore(NumberListStore):
    """A tenant's blacklist in Redis, over a synchronous redis-py client (the CLI, KEMI)."""

    def __init__(self, redis: Any):
        super().__init__(redis, keys.blacklist)

    def is_blacklisted(self, tenant: str, caller: str) -> bool:
        """Anonymous callers (no number) are for another rule: never blacklisted here."""
        return self.reason(tenant, caller) is not None


async def check_caller_async(redis: Any, tenant: str, caller: str) -> str | None:
    """BlacklistStore.reason() over redis.asyncio, for the FastAGI server: one HGET."""
    number = normalised_or_none(caller)
    if number is None:
        return None
    found = await redis.hget(keys.blacklist(tenant), number)
    return None if found is None else decoded(found)
