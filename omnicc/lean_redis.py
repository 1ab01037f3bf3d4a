"""One Lua script over a Redis connection of its own, with no client library in the way:
the KEMI script's per-request admission (agent_auth.ADMIT_LUA) runs on every REGISTER and
INVITE of every agent, and redis-py spends about four times the CPU of the round trip
itself on building, sending and parsing it (bench/register_auth.py measures the whole).

RESP2 over TCP or a Unix socket; AUTH and SELECT from the URL; EVALSHA, and EVAL once when
Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH). Any failure closes the
connection and raises LeanRedisError; the next call connects again. Integer, status and
error replies only: what the scripts it runs return. Not thread-safe (one per worker).
"""

from __future__ import annotations

import hashlib
import socket
from urllib.parse import parse_qs, unquote, urlparse


class LeanRedisError(Exception):
    """Redis could not be reached or answered with an error."""


def _command(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class LeanScript:
    def __init__(self, url: str, script: str, *, timeout: float = 0.5):
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "unix"):
            raise ValueError(f"lean Redis client: unsupported URL scheme {parsed.scheme!r}")
        self._unix_path = parsed.path if parsed.scheme == "unix" else None
        self._address = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        # redis-py's forms: redis://HOST:PORT/DB, unix:///PATH?db=DB
        database = (parsed.path.lstrip("/") if parsed.scheme == "redis"
                    else parse_qs(parsed.query).get("db", [""])[0])
        self._db = int(database) if database else 0
        self._timeout = timeout
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._sock: socket.socket | None = None
        self._buffer = b""

    # ------------------------------------------------------------------ the call
    def __call__(self, keys: list[str], args: list[str | int]) -> int | str:
        """Run the script; its integer (or status) reply."""
        try:
            reply = self._round_trip(_command("EVALSHA", self._sha, len(keys), *keys, *args))
            if isinstance(reply, LeanRedisError) and str(reply).startswith("NOSCRIPT"):
                reply = self._round_trip(
                    _command("EVAL", self._script, len(keys), *keys, *args))
        except (OSError, ValueError) as exc:
            self.close()
            raise LeanRedisError(f"Redis unavailable: {exc}") from None
        if isinstance(reply, LeanRedisError):
            raise reply
        return reply

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""

    # ------------------------------------------------------------------ internals
    def _connect(self) -> socket.socket:
        if self._unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(self._unix_path)
        else:
            sock = socket.create_connection(self._address, timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._buffer = b""
        if self._password is not None:
            auth = (("AUTH", self._username, self._password) if self._username
                    else ("AUTH", self._password))
            self._expect_ok(_command(*auth), "AUTH")
        if self._db:
            self._expect_ok(_command("SELECT", self._db), "SELECT")
        return sock

    def _expect_ok(self, command: bytes, what: str) -> None:
        reply = self._exchange(command)
        if isinstance(reply, LeanRedisError):
            self.close()
            raise LeanRedisError(f"{what}: {reply}")

    def _round_trip(self, command: bytes) -> int | str | LeanRedisError:
        if self._sock is None:
            self._connect()
        return self._exchange(command)

    def _exchange(self, command: bytes) -> int | str | LeanRedisError:
        assert self._sock is not None
        self._sock.sendall(command)
        line = self._read_line()
        kind, body = line[:1], line[1:].decode("utf-8", "replace")
        if kind == b":":
            return int(body)
        if kind == b"+":
            return body
        if kind == b"-":
            return LeanRedisError(body)
        # A reply these scripts never give: the connection's state is unknown now.
        raise ValueError(f"unexpected Redis reply {line[:40]!r}")

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while b"\r\n" not in self._buffer:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line
