"""The KEMI script's Redis, with no client library in the way: the per-request admission
(agent_auth.ADMIT_LUA) runs on every REGISTER and INVITE of every agent, and redis-py
spends about four times the CPU of the round trip itself on building, sending and parsing
it (bench/register_auth.py measures the whole).

- `LeanScript`: one Lua script, EVALSHA (EVAL once when Redis answers NOSCRIPT, after a
  restart or SCRIPT FLUSH), one round trip per call.
- `TrackedAdmission`: the admission script with Redis's server-assisted client-side
  caching (CLIENT TRACKING): a worker remembers which disabled/revoked flags were absent
  and which reachability it published, and Redis tells it (an invalidation push on the
  same connection) the moment any client changes one of those keys. A request whose
  answer the worker already knows makes no round trip: a disabled agent or a revoked
  token is still refused on the next request, because the invalidation is read before
  every decision.

RESP3 (HELLO 3, so Redis 6 or later) over TCP or a Unix socket; AUTH and SELECT from the
URL. Any failure closes the connection, forgets everything cached and raises
LeanRedisError; the next call connects again. Not thread-safe (one per worker).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


class LeanRedisError(Exception):
    """Redis could not be reached or answered with an error."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


class _Push(list):
    """An out-of-band RESP3 push (an invalidation), not the reply to a command."""


def _command(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


_AGGREGATES = {b"*": list, b"~": list, b">": _Push}


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP3 value from buf at pos: (value, position after it). Errors come back as
    LeanRedisError values (not raised): they answer one command, the connection is fine."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, body, after = buf[pos:pos + 1], buf[pos + 1:end], end + 2
    if kind == b":" or kind == b"(":
        return int(body), after
    if kind == b"+":
        return body.decode("utf-8", "replace"), after
    if kind == b"-":
        return LeanRedisError(body.decode("utf-8", "replace")), after
    if kind == b"_":
        return None, after
    if kind == b"#":
        return body == b"t", after
    if kind == b",":
        return body.decode(), after
    if kind in (b"$", b"=", b"!"):
        size = int(body)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            raise _Incomplete
        data = buf[after:after + size]
        if kind == b"!":
            return LeanRedisError(data.decode("utf-8", "replace")), after + size + 2
        return data, after + size + 2
    if kind in _AGGREGATES or kind == b"%" or kind == b"|":
        count = int(body)
        if count < 0:
            return None, after
        items = []
        for _ in range(count * (2 if kind in (b"%", b"|") else 1)):
            item, after = _parse(buf, after)
            items.append(item)
        if kind == b"|":  # attributes describe the value that follows: skip them
            return _parse(buf, after)
        return (_AGGREGATES.get(kind, list))(items), after
    raise ValueError(f"unexpected Redis reply {buf[pos:pos + 40]!r}")


_NOTHING = object()  # no whole value in the buffer yet


class RespConnection:
    """One RESP3 connection: commands sent with or without waiting for their replies,
    pushes handed to `on_push`, replies owed to commands not waited for read in order."""

    def __init__(self, url: str, *, timeout: float = 0.5, tracking: bool = False,
                 on_push: Callable[[list[Any]], None] | None = None):
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
        self._tracking = tracking
        self._on_push = on_push
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._owed = 0  # replies to commands sent without waiting, not read yet
        self._owed_since = 0.0  # when the oldest of them was sent (time.monotonic)
        self.last_heard = 0.0  # when Redis last sent anything (time.monotonic)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        self._buffer = b""
        self._owed = 0

    def request(self, command: bytes) -> Any:
        """Send one command and return its reply (an error reply as LeanRedisError value).
        Raises OSError/ValueError when the connection fails (and closes it)."""
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._sock.sendall(command)
            self._settle_owed(blocking=True)
            return self._next_reply(blocking=True)
        except (OSError, ValueError):
            self.close()
            raise

    def send_nowait(self, command: bytes, replies: int) -> None:
        """Send commands whose `replies` are read later (by poll or the next request)."""
        assert self._sock is not None
        try:
            self._sock.sendall(command)
        except OSError:
            self.close()
            raise
        if self._owed == 0:
            self._owed_since = time.monotonic()
        self._owed += replies

    def owed_for(self, now: float) -> float:
        """How long the oldest reply still owed has been awaited (0 if none)."""
        return now - self._owed_since if self._owed else 0.0

    def poll(self) -> None:
        """Read whatever Redis has sent, without waiting: pushes and owed replies.
        Raises OSError/ValueError (and closes) if the connection failed or an owed reply
        was an error."""
        if self._sock is None:
            return
        try:
            # os.read: the socket (which has a timeout) is non-blocking underneath, and its
            # own recv would first wait up to the timeout for data.
            chunk = os.read(self._sock.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            raise
        if not chunk:
            self.close()
            raise ConnectionError("Redis closed the connection")
        self._buffer += chunk
        self.last_heard = time.monotonic()
        try:
            self._settle_owed(blocking=False)
            # Anything left now is a push (no reply is owed); hand them on.
            while self._buffer:
                value = self._take(blocking=False)
                if value is _NOTHING:
                    break
                if not isinstance(value, _Push):
                    raise ValueError("a Redis reply nobody asked for")
        except (OSError, ValueError):
            self.close()
            raise

    # ------------------------------------------------------------------ internals
    def _connect(self) -> None:
        if self._unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(self._unix_path)
        else:
            sock = socket.create_connection(self._address, timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._buffer = b""
        self._owed = 0
        setup = []
        if self._password is not None:
            setup.append(("AUTH", _command(*(("AUTH", self._username, self._password)
                                             if self._username
                                             else ("AUTH", self._password)))))
        setup.append(("HELLO", _command("HELLO", "3")))
        if self._db:
            setup.append(("SELECT", _command("SELECT", self._db)))
        if self._tracking:
            # NOLOOP: this connection's own writes send it no invalidation.
            setup.append(("CLIENT TRACKING", _command("CLIENT", "TRACKING", "ON", "NOLOOP")))
        sock.sendall(b"".join(command for _, command in setup))
        for what, _ in setup:
            reply = self._next_reply(blocking=True)
            if isinstance(reply, LeanRedisError):
                self.close()
                raise LeanRedisError(f"{what}: {reply}")

    def _receive(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buffer += chunk
        self.last_heard = time.monotonic()

    def _settle_owed(self, *, blocking: bool) -> None:
        while self._owed:
            reply = self._next_reply(blocking=blocking)
            if reply is _NOTHING:
                return
            self._owed -= 1
            if self._owed:
                self._owed_since = time.monotonic()
            if isinstance(reply, LeanRedisError):
                raise ValueError(f"a command sent without waiting failed: {reply}")

    def _next_reply(self, *, blocking: bool) -> Any:
        """The next reply (pushes before it handled); _NOTHING if not blocking and none
        has arrived in full."""
        while True:
            value = self._take(blocking=blocking)
            if not isinstance(value, _Push):
                return value

    def _take(self, *, blocking: bool) -> Any:
        while True:
            try:
                value, used = _parse(self._buffer, 0)
            except _Incomplete:
                value, used = _NOTHING, 0
            if value is _NOTHING:
                if not blocking:
                    return _NOTHING
                self._receive()
                continue
            self._buffer = self._buffer[used:]
            if isinstance(value, _Push) and self._on_push is not None:
                self._on_push(value)
            return value




class LeanScript:
    """One Lua script: call it with keys and args, get its reply (integer or status)."""

    def __init__(self, url: str, script: str, *, timeout: float = 0.5,
                 connection: RespConnection | None = None):
        self._connection = connection or RespConnection(url, timeout=timeout)
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()

    @property
    def _db(self) -> int:
        return self._connection._db

    def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        """Run the script; its reply."""
        try:
            reply = self._connection.request(
                _command("EVALSHA", self._sha, len(keys), *keys, *args))
            if isinstance(reply, LeanRedisError) and str(reply).startswith("NOSCRIPT"):
                reply = self._connection.request(
                    _command("EVAL", self._script, len(keys), *keys, *args))
        except (OSError, ValueError) as exc:
            raise LeanRedisError(f"Redis unavailable: {exc}") from None
        if isinstance(reply, LeanRedisError):
            raise reply
        return reply

    def close(self) -> None:
        self._connection.close()


# Without a word from Redis for this long, what the worker remembers is not trusted: a
# Redis that vanished without closing the connection (a network partition) sends no
# invalidations either, so at most this long a revocation could go unseen.
TRACKING_LIVENESS_SECONDS = 1.0
# A published reachability this close to its expiry is published with a round trip again.
PUBLISHED_MARGIN_SECONDS = 2.0
# Memory bound per worker: past this many remembered keys, forget them all.
TRACKED_KEYS_MAX = 100_000


class TrackedAdmission:
    """agent_auth.ADMIT_LUA with what the answer depends on remembered between requests.

    Called as the script is — keys [disabled flag, revoked flag, contact key], args
    [contact to publish ('' for none), TTL] — and answers the same (1 refused, 0
    admitted). The script reads every key it is given (so Redis tracks them for this
    connection); afterwards the worker knows the flags were absent and which contact it
    published. While Redis has sent no invalidation for them, the next admission of the
    same agent needs no answer from Redis: an INVITE sends nothing, a REGISTER that
    refreshes the same contact sends the reachability SET (and a read that keeps the key
    tracked) without waiting for the reply, which is read on a later call. Everything
    else — a new contact, a key Redis invalidated, a connection silent for
    TRACKING_LIVENESS_SECONDS — runs the script and waits, as LeanScript does.
    """

    def __init__(self, url: str, script: str, *, timeout: float = 0.5):
        self._connection = RespConnection(url, timeout=timeout, tracking=True,
                                          on_push=self._invalidated)
        self._script = LeanScript(url, script, connection=self._connection)
        self._absent: set[str] = set()  # flags the script found absent, still tracked
        self._published: dict[str, tuple[str, float]] = {}  # contact key: (value, expiry)

    def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        disabled, revoked, contact = keys
        value, ttl = str(args[0]), int(args[1])
        now = time.monotonic()
        if self._answer_known(disabled, revoked, now):
            if not value:
                return 0
            known = self._published.get(contact)
            if (known is not None and known[0] == value
                    and known[1] > now + PUBLISHED_MARGIN_SECONDS):
                try:
                    self._connection.send_nowait(
                        _command("SET", contact, value, "EX", ttl), replies=1)
                except OSError:
                    self.forget()  # and ask with a round trip below
                else:
                    self._published[contact] = (value, now + ttl)
                    return 0
        if not self._connection.connected:
            self.forget()  # a new connection tracks nothing yet
        reply = self._script(keys, args)  # raises LeanRedisError; nothing cached then
        if reply == 0:
            if len(self._absent) + len(self._published) >= TRACKED_KEYS_MAX:
                self.forget()
            self._absent.update((disabled, revoked))
            if value:
                self._published[contact] = (value, now + ttl)
        return reply

    def forget(self) -> None:
        self._absent.clear()
        self._published.clear()

    def close(self) -> None:
        self._connection.close()
        self.forget()

    def _answer_known(self, disabled: str, revoked: str, now: float) -> bool:
        """Read what Redis sent (invalidations first); True if both flags are known absent
        and the connection is alive enough to trust that."""
        if not self._absent:
            return False
        try:
            self._connection.poll()
        except (OSError, ValueError):
            self.forget()
            return False
        connection = self._connection
        if (not connection.connected
                or now - connection.last_heard > TRACKING_LIVENESS_SECONDS
                or connection.owed_for(now) > TRACKING_LIVENESS_SECONDS):
            return False
        return disabled in self._absent and revoked in self._absent

    def _invalidated(self, push: list[Any]) -> None:
        if len(push) < 2 or push[0] not in (b"invalidate", "invalidate"):
            return
        keys = push[1]
        if keys is None:  # FLUSHDB/FLUSHALL, or Redis dropped its tracking table
            self.forget()
            return
        for key in keys:
            name = key.decode() if isinstance(key, bytes) else str(key)
            self._absent.discard(name)
            self._published.pop(name, None)
