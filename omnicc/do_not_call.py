"""The do-not-call list: numbers an agent's outbound call (or a blind transfer out) must
not be dialled to, imported from CSV into Redis per tenant.

Format, normalisation, the all-or-nothing import and the store are the caller blacklist's
(omnicc/number_list.py). Storage: ``{t:<tenant>}:dnc``, number -> reason.

On the call path (agi/handlers/outbound_call.py) the numbers OutboundRouter.plan asks about
(as dialled and as sent after strip/prepend) are looked up in one HMGET, and the plan is
then made with the answer as its do_not_call predicate. Emergency numbers are never
refused (the router does not ask about them) and are not even looked up, so a Redis
outage cannot stop them; any other call is refused with 503 when Redis cannot be asked,
never dialled unchecked.
"""

from __future__ import annotations

from typing import Any

from omnicc import keys
from omnicc.number_list import (
    NumberImport,
    NumberListError,
    NumberListStore,
    lookup_async,
    parse_number_csv,
)
from omnicc.number_list import decode_csv as _decode_csv


class DoNotCallError(NumberListError):
    list_name = "do-not-call list"


def decode_csv(data: bytes) -> str:
    """The text of a CSV file (UTF-8), or DoNotCallError naming the line of a bad byte."""
    return _decode_csv(data, DoNotCallError)


def parse_do_not_call_csv(text: str) -> NumberImport:
    """Every entry of the CSV `text`, or DoNotCallError listing every bad row."""
    return parse_number_csv(text, DoNotCallError)


class DoNotCallStore(NumberListStore):
    """A tenant's do-not-call list in Redis, over a synchronous redis-py client (the CLI)."""

    def __init__(self, redis: Any):
        super().__init__(redis, keys.do_not_call)


async def listed_numbers(redis: Any, tenant: str, numbers: tuple[str, ...]) -> frozenset[str]:
    """Which of `numbers` (as the router has them) are on the tenant's list: one HMGET over
    redis.asyncio. A number that is not one (`*21#`) is on no list. A Redis error is
    raised, never read as "not listed"."""
    return frozenset(await lookup_async(redis, keys.do_not_call(tenant), numbers))
