"""The event stream: every decision and call outcome, appended to the tenant's Redis stream.

Reports and the PostgreSQL writer read it; nothing on the call path reads PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from omnicc.keys import events_stream

# Bounded so a node left running for months cannot fill Redis; the PostgreSQL writer
# keeps the history.
STREAM_MAXLEN = 1_000_000


def event_fields(event: str, node: str, fields: Mapping[str, Any], now: float) -> dict[str, str]:
    out = {"event": event, "node": node, "ts": f"{now:.6f}"}
    for key, value in fields.items():
        out[key] = "" if value is None else str(value)
    return out


class EventLog:
    """Appends events through an asyncio redis client."""

    def __init__(self, redis: Any, node: str):
        self._redis = redis
        self._node = node

    async def append(self, tenant: str, event: str, **fields: Any) -> str:
        entry = event_fields(event, self._node, fields, time.time())
        entry_id = await self._redis.xadd(
            events_stream(tenant), entry, maxlen=STREAM_MAXLEN, approximate=True
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def read_events(redis: Any, tenant: str, since: str = "-",
                count: int = 100_000) -> list[dict[str, str]]:
    """A tenant's events from stream id `since` on, oldest first (synchronous client)."""
    rows = redis.xrange(events_stream(tenant), min=since, count=count)
    out = []
    for entry_id, fields in rows:
        row = {_s(k): _s(v) for k, v in fields.items()}
        row["id"] = _s(entry_id)
        out.append(row)
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
