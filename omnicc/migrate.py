"""Apply the numbered SQL migrations of sql/ in order, each once, recorded in a table."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from omnicc.render import REPO_ROOT

SQL_DIR = REPO_ROOT / "sql"
MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    pass


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = []
    for path in sorted(sql_dir.glob("*.sql")):
        if not MIGRATION_RE.match(path.name):
            raise MigrationError(f"{path}: a migration is named NNN_words.sql")
        files.append(path)
    numbers = [p.name[:3] for p in files]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migrations in {sql_dir} share a number: {numbers}")
    return files


def apply_migrations(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date).

    Each migration runs in its own transaction together with its record, so a failing one
    leaves the database as it was before it. An advisory lock keeps two nodes migrating at
    once from racing.
    """
    files = migration_files(sql_dir)
    applied_now: list[str] = []
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise MigrationError(f"cannot connect to PostgreSQL: {reason}") from None
    with conn:
        conn.execute("SELECT pg_advisory_lock(7240001)")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migration ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migration")}
            for path in files:
                if path.name in done:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(path.read_text(encoding="utf-8"))
                        conn.execute("INSERT INTO schema_migration (name) VALUES (%s)",
                                     (path.name,))
                except psycopg.Error as exc:
                    raise MigrationError(f"{path.name} failed and was rolled back: {exc}") from exc
                applied_now.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(7240001)")
    return applied_now
