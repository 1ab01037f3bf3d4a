"""The history writer: copies every tenant's Redis event stream into PostgreSQL.

Nothing on the call path reads PostgreSQL: handlers append to Redis streams, and this
process moves the entries into `call_event`. It reads through a Redis consumer group and
acknowledges an entry only after its row is committed, and rows are keyed by stream id,
so a PostgreSQL outage or a restart delays history but loses and duplicates nothing.

    python -m omnicc.history --config omnicc.yaml --redis redis://127.0.0.1:16379/0
    (the PostgreSQL URL comes from $OMNICC_DATABASE_URL, kept out of the process list)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis

from omnicc.config import ConfigError, OmniccConfig, load_config
from omnicc.keys import events_stream

GROUP = "history"
BATCH = 500
HEARTBEAT_TTL = 15  # seconds; `omnicc status` calls the writer healthy while it beats

log = logging.getLogger("omnicc.history")


def heartbeat_key(node: str) -> str:
    return f"omnicc:node:{node}:history-writer"


def event_row(tenant: str, stream_id: str, fields: dict[str, str]) -> tuple[Any, ...]:
    """One call_event row from one stream entry (pure)."""
    rest = {k: v for k, v in fields.items() if k not in ("event", "node", "ts", "uniqueid")}
    try:
        at = datetime.fromtimestamp(float(fields.get("ts", "")), tz=UTC)
    except ValueError:
        # The stream id's first part is the Redis server's clock in milliseconds.
        at = datetime.fromtimestamp(int(stream_id.split("-")[0]) / 1000, tz=UTC)
    return (tenant, stream_id, fields.get("event", ""), fields.get("node", ""), at,
            fields.get("uniqueid") or None, json.dumps(rest, sort_keys=True))


def _decode(entries: Iterable[tuple[Any, dict[Any, Any]]]) -> list[tuple[str, dict[str, str]]]:
    def s(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return [(s(entry_id), {s(k): s(v) for k, v in fields.items()}) for entry_id, fields in entries]


class HistoryWriter:
    def __init__(self, config: OmniccConfig, client: redis.Redis, dsn: str,
                 consumer: str | None = None):
        self.config = config
        self.redis = client
        self.dsn = dsn
        # One consumer name per node, stable across restarts: a writer killed between
        # reading and storing re-reads its own pending entries when it comes back.
        self.consumer = consumer or config.node
        self._conn: psycopg.Connection[Any] | None = None

    def ensure_groups(self) -> None:
        for tenant in self.config.tenants:
            try:
                # id 0: a new group starts with the stream's whole past.
                self.redis.xgroup_create(events_stream(tenant.name), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, connect_timeout=5)
        return self._conn

    def _store(self, tenant: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        conn = self._db()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO call_event (tenant, stream_id, event, node, at, uniqueid, fields)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
                [event_row(tenant, entry_id, fields) for entry_id, fields in entries],
            )
        self.redis.xack(events_stream(tenant), GROUP, *[entry_id for entry_id, _ in entries])

    def step(self, block_ms: int = 1000) -> int:
        """Move what is waiting (first anything read but not acknowledged); return count."""
        moved = 0
        for tenant in self.config.tenants:
            stream = events_stream(tenant.name)
            # "0" re-reads entries this consumer took but did not acknowledge (a write
            # that failed), ">" takes new ones.
            for start in ("0", ">"):
                reply = self.redis.xreadgroup(GROUP, self.consumer, {stream: start}, count=BATCH)
                entries = _decode(reply[0][1]) if reply else []
                if entries:
                    self._store(tenant.name, entries)
                    moved += len(entries)
        if moved == 0 and block_ms:
            streams = {events_stream(t.name): ">" for t in self.config.tenants}
            reply = self.redis.xreadgroup(GROUP, self.consumer, streams, count=BATCH,
                                          block=block_ms)
            for stream_name, raw in reply or []:
                name = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
                tenant = next(t.name for t in self.config.tenants if events_stream(t.name) == name)
                entries = _decode(raw)
                if entries:
                    self._store(tenant, entries)
                    moved += len(entries)
        return moved

    def run(self, stop: list[bool]) -> None:
        while not stop:
            try:
                self.ensure_groups()
                break
            except redis.ConnectionError as exc:
                log.warning("Redis unavailable (%s); retrying", exc)
                time.sleep(1)
        while not stop:
            try:
                self.redis.set(heartbeat_key(self.config.node), str(time.time()),
                               ex=HEARTBEAT_TTL)
                moved = self.step()
                if moved:
                    log.info("stored %d event(s)", moved)
            except redis.ConnectionError as exc:
                log.warning("Redis unavailable (%s); retrying", exc)
                time.sleep(1)
            except psycopg.Error as exc:
                # Entries stay unacknowledged in Redis and are retried: nothing is lost.
                log.warning("PostgreSQL unavailable (%s); retrying", " ".join(str(exc).split()))
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnicc-history", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True, help="Redis URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dsn = os.environ.get("OMNICC_DATABASE_URL")
    if not dsn:
        print("omnicc-history: set OMNICC_DATABASE_URL to the PostgreSQL URL", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"omnicc-history: config error:\n{exc}", file=sys.stderr)
        return 2
    stop: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    writer = HistoryWriter(config, redis.Redis.from_url(args.redis, socket_timeout=10), dsn)
    log.info("history writer %s started", writer.consumer)
    writer.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
