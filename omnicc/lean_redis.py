"""The KEMI script's Redis, with no client library in the way: the per-request admission
(agent_auth.ADMIT_LUA) runs on every REGISTER and INVITE of every agent, and redis-py
spends about four times the CPU of the round trip itself on building, sending and parsing
it (bench/register_auth.py measures the whole).

`TrackedAdmission` runs the admission script (EVALSHA, and EVAL once when Redis answers
NOSCRIPT, after a restart or SCRIPT FLUSH) with Redis's server-assisted client-side
caching (CLIENT TRACKING): a worker remembers which disabled/revoked flags were absent and
which reachability it published, and Redis tells it (an invalidation push on the same
connection) the moment any client changes one of those keys. A request whose answer the
worker already knows makes no round trip: a disabled agent or a revoked token is still
refused on the next request, because the invalidation is read before every decision.

RESP3 over TCP or a Unix socket: AUTH, HELLO 3, SELECT and (for TrackedAdmission) CLIENT
TRACKING ON NOLOOP when it connects. A server that refuses HELLO 3 or CLIENT TRACKING (Redis
before 6, an ACL, a proxy) is spoken to without them, and TrackedAdmission then asks on
every call. Any failure closes the connection, forgets everything cached and raises
LeanRedisError; the next call connects again. Not thread-safe (one per worker).
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from omnicc.keys import contact_withdrawn


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
# poll() reads at most this much at once; more waiting means the worker fell far behind
# Redis (a burst of invalidations): it forgets what it knew rather than read on.
POLL_MAX_BYTES = 1 << 20
# Servers whose CLIENT TRACKING reports changes to keys read inside Lua scripts.
TRACKING_SERVERS = ("redis", "valkey")


class RespConnection:
    """One RESP3 connection: commands sent with or without waiting for their replies,
    pushes handed to `on_push`, the replies owed to commands not waited for handed, in
    order, to `on_owed_reply` with the label they were sent with."""

    def __init__(self, url: str, *, timeout: float = 0.5, tracking: bool = False,
                 on_push: Callable[[list[Any]], None] | None = None,
                 on_owed_reply: Callable[[Any, Any], None] | None = None):
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
        self._on_owed_reply = on_owed_reply
        self._sock: socket.socket | None = None
        self._readable = select.poll()  # the socket, once connected: anything to read?
        self._buffer = b""
        self._pos = 0  # where the next value starts in _buffer
        # (label, when sent) of each command sent without waiting whose reply is not read.
        self._owed: deque[tuple[Any, float]] = deque()
        self.lost: list[Any] = []  # labels of owed replies a closed connection never gave
        self.tracking_active = False  # CLIENT TRACKING accepted on this connection
        self.setup_note = ""  # why HELLO 3 or CLIENT TRACKING was not taken, if not
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
        self._buffer, self._pos = b"", 0
        self.lost.extend(label for label, _ in self._owed)
        self._owed.clear()
        self.tracking_active = False

    def request(self, command: bytes) -> Any:
        """Send one command and return its reply (an error reply as LeanRedisError value),
        after the owed replies before it. Raises OSError/ValueError when the connection
        fails (and closes it); LeanRedisError when connecting is refused."""
        return self.pipeline([command])[0]

    def pipeline(self, commands: list[bytes]) -> list[Any]:
        """Send commands in one write and return their replies, in order (as request)."""
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._sock.sendall(b"".join(commands))
            while self._owed:
                self._owed_reply(self._next_reply(blocking=True))
            return [self._next_reply(blocking=True) for _ in commands]
        except (OSError, ValueError):
            self.close()
            raise

    def send_nowait(self, command: bytes, label: Any) -> None:
        """Send a command whose reply is read later (by poll or the next request)."""
        assert self._sock is not None
        try:
            self._sock.sendall(command)
        except OSError:
            self.close()
            raise
        self._owed.append((label, time.monotonic()))

    def oldest_owed_age(self, now: float) -> float:
        """How long the oldest reply still owed has been awaited (0 if none)."""
        return now - self._owed[0][1] if self._owed else 0.0

    def poll(self) -> None:
        """Read whatever Redis has sent, without waiting: pushes and owed replies. Raises
        OSError/ValueError (and closes) if the connection failed, sent what nobody asked
        for, or has more than POLL_MAX_BYTES waiting."""
        if self._sock is None:
            return
        if self._pos >= len(self._buffer) and not self._readable.poll(0):
            return  # the usual case, asked without the exception a read would raise
        try:
            received = 0
            while True:
                # os.read: the socket (which has a timeout) is non-blocking underneath,
                # and its own recv would first wait up to the timeout for data.
                try:
                    chunk = os.read(self._sock.fileno(), 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                self._append(chunk)
                received += len(chunk)
                if received > POLL_MAX_BYTES:
                    raise ValueError("more than POLL_MAX_BYTES waiting from Redis")
            while True:
                value = self._take(blocking=False)
                if value is _NOTHING:
                    break
                if isinstance(value, _Push):
                    continue
                if not self._owed:
                    raise ValueError("a Redis reply nobody asked for")
                self._owed_reply(value)
        except Exception:
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
        self._readable = select.poll()
        self._readable.register(sock.fileno(), select.POLLIN)
        self._buffer, self._pos = b"", 0
        self.setup_note = ""
        if self._password is not None:
            auth = (("AUTH", self._username, self._password) if self._username
                    else ("AUTH", self._password))
            self._setup(_command(*auth), "AUTH")
        hello = self._setup(_command("HELLO", "3"), "HELLO", optional=True)
        if self._db:
            self._setup(_command("SELECT", self._db), "SELECT")
        if not self._tracking:
            return
        if not isinstance(hello, list) or not _tracking_server(hello):
            self.setup_note = f"no RESP3 client tracking on this server ({_describe(hello)})"
            return
        tracking = self._setup(_command("CLIENT", "TRACKING", "ON", "NOLOOP"),
                               "CLIENT TRACKING", optional=True)
        self.tracking_active = not isinstance(tracking, LeanRedisError)
        if not self.tracking_active:
            self.setup_note = f"CLIENT TRACKING refused: {tracking}"

    def _setup(self, command: bytes, what: str, *, optional: bool = False) -> Any:
        assert self._sock is not None
        self._sock.sendall(command)
        reply = self._next_reply(blocking=True)
        refused = isinstance(reply, LeanRedisError)
        # Without credentials nothing works; a server without HELLO 3 still does in RESP2.
        if refused and (not optional or str(reply).startswith(("NOAUTH", "WRONGPASS"))):
            self.close()
            raise LeanRedisError(f"{what}: {reply}")
        return reply

    def _owed_reply(self, reply: Any) -> None:
        label, _ = self._owed.popleft()
        if self._on_owed_reply is not None:
            self._on_owed_reply(label, reply)

    def _append(self, chunk: bytes) -> None:
        if self._pos:
            # What was parsed goes once per read, not once per value.
            self._buffer, self._pos = self._buffer[self._pos:], 0
        self._buffer += chunk
        self.last_heard = time.monotonic()

    def _receive(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._append(chunk)

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
                value, self._pos = _parse(self._buffer, self._pos)
            except _Incomplete:
                if not blocking:
                    return _NOTHING
                self._receive()
                continue
            if isinstance(value, _Push) and self._on_push is not None:
                self._on_push(value)
            return value


def _hello_fields(hello: list[Any]) -> dict[str, str]:
    fields = {}
    for name, value in zip(hello[::2], hello[1::2], strict=False):
        if isinstance(name, bytes) and isinstance(value, bytes | str | int):
            fields[name.decode()] = value.decode() if isinstance(value, bytes) else str(value)
    return fields


def _tracking_server(hello: list[Any]) -> bool:
    fields = _hello_fields(hello)
    major = fields.get("version", "0").split(".")[0]
    return fields.get("server") in TRACKING_SERVERS and major.isdigit() and int(major) >= 6


def _describe(hello: Any) -> str:
    if isinstance(hello, LeanRedisError):
        return f"HELLO 3 refused: {hello}"
    fields = _hello_fields(hello) if isinstance(hello, list) else {}
    return f"server {fields.get('server', '?')} {fields.get('version', '?')}"


def _run_script(connection: RespConnection, sha: str, script: str, keys: list[str],
                args: list[str | int]) -> Any:
    """EVALSHA, and EVAL when Redis no longer has the script; its reply. Raises
    LeanRedisError for an error reply or a failed connection."""
    try:
        reply = connection.request(_command("EVALSHA", sha, len(keys), *keys, *args))
        if _noscript(reply):
            reply = connection.request(_command("EVAL", script, len(keys), *keys, *args))
    except (OSError, ValueError) as exc:
        raise LeanRedisError(f"Redis unavailable: {exc}") from None
    if isinstance(reply, LeanRedisError):
        raise reply
    return reply


# Without a word from Redis for this long, what the worker remembers is not trusted: a
# Redis that vanished without closing the connection (a network partition) sends no
# invalidations either, so at most this long a revocation could go unseen.
TRACKING_LIVENESS_SECONDS = 1.0
# A published reachability this close to its expiry is published with a round trip again.
PUBLISHED_MARGIN_SECONDS = 2.0
# A refresh of the contact this worker published less than REPUBLISH_AFTER_SECONDS ago,
# expiring within EXPIRY_DRIFT_SECONDS of it, is not sent: the key's TTL would move by at
# most that much. (A phone refreshing every few minutes is published every time; only a
# REGISTER loop, a load test's or a misbehaving phone's, is spared a write per request.)
REPUBLISH_AFTER_SECONDS = 1.0
EXPIRY_DRIFT_SECONDS = 1.0
# A refresh of a contact whose key (as this worker published it) lives at least this
# long yet may be handed to `defer` (written back by Kamailio's flusher within
# milliseconds) instead of being sent by the worker.
DEFER_MARGIN_SECONDS = 10.0
# Memory bound per worker: past this many remembered keys, forget them all.
TRACKED_KEYS_MAX = 100_000


class TrackedAdmission:
    """agent_auth.ADMIT_LUA with what the answer depends on remembered between requests.

    Called as the script is — keys [disabled flag, revoked flag, contact key], args
    [contact to publish ('' for none), TTL] — and answers the same (1 refused, 0
    admitted). The script reads the two flags (so Redis tracks them for this
    connection); afterwards the worker knows they were absent, and which contact it
    published. While Redis has sent no invalidation for the flags, the next admission of
    the same agent needs no answer from Redis: an INVITE sends nothing; a REGISTER whose
    contact is the one this worker last published is handed to `defer(contact key,
    value, ttl)` (the KEMI script queues it for its flusher, ReachabilityWriter) when the
    key lives DEFER_MARGIN_SECONDS yet, else, or when defer refuses it (returns False),
    the worker sends the reachability SET without waiting for the reply (read on a later
    call; a failed one is logged and that contact is published with a round trip next
    time; one a broken connection swallowed is published again with the next round trip)
    — or nothing at all, if this worker published it less than REPUBLISH_AFTER_SECONDS
    ago expiring within EXPIRY_DRIFT_SECONDS of the new expiry.
    Everything else — a contact new to this worker, or that
    `recently_withdrawn(contact key)` says was deleted since (by an unregistration through
    another worker or node) or not written back (by the flusher), an invalidated flag, a
    connection that closed, was silent for TRACKING_LIVENESS_SECONDS or does not track —
    runs the script and waits. `log` receives what went wrong without failing a request.
    """

    def __init__(self, url: str, script: str, *, timeout: float = 0.5,
                 log: Callable[[str], None] | None = None,
                 recently_withdrawn: Callable[[str], bool] | None = None,
                 defer: Callable[[str, str, int], bool] | None = None):
        self._connection = RespConnection(url, timeout=timeout, tracking=True,
                                          on_push=self._invalidated,
                                          on_owed_reply=self._owed_reply)
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._log = log or (lambda message: None)
        self._recently_withdrawn = recently_withdrawn or (lambda contact: False)
        self._defer = defer
        self._absent: set[str] = set()  # flags the script found absent, still tracked
        # contact key: (value, expiry, when this worker sent it)
        self._published: dict[str, tuple[str, float, float]] = {}
        self._republish: dict[str, tuple[str, float]] = {}  # SETs a closed connection lost
        self._noted = ""

    def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        disabled, revoked, contact = keys
        value = str(args[0])
        ttl = int(args[1]) if str(args[1]).isdigit() else None  # else Redis says what is wrong
        now = time.monotonic()
        if ttl is not None and self._answer_known(disabled, revoked, now):
            if not value:
                return 0
            known = self._published.get(contact)
            if (known is not None and known[0] == value
                    and known[1] > now + PUBLISHED_MARGIN_SECONDS
                    and not self._recently_withdrawn(contact)):
                if (now - known[2] < REPUBLISH_AFTER_SECONDS
                        and abs(known[1] - (now + ttl)) <= EXPIRY_DRIFT_SECONDS):
                    return 0
                if (self._defer is not None and known[1] - now >= DEFER_MARGIN_SECONDS
                        and self._defer(contact, value, ttl)):
                    self._published[contact] = (value, now + ttl, now)
                    return 0
                try:
                    self._connection.send_nowait(_command("SET", contact, value, "EX", ttl),
                                                 label=(contact, value, now + ttl))
                except OSError:
                    self._connection_lost()  # and ask with a round trip below
                else:
                    self._published[contact] = (value, now + ttl, now)
                    return 0
        if not self._connection.connected:
            self._connection_lost()  # a new connection tracks nothing yet
        self._republish_lost(now)
        reply = _run_script(self._connection, self._sha, self._script, keys, args)
        self._note_setup()
        if reply == 0 and self._connection.tracking_active:
            if len(self._absent) + len(self._published) >= TRACKED_KEYS_MAX:
                self.forget()
            self._absent.update((disabled, revoked))
            if value and ttl is not None:
                self._published[contact] = (value, now + ttl, now)
        return reply

    def withdraw(self, contact: str) -> None:
        """Delete a reachability key, after every SET this worker sent for it (same
        connection, so in order), and leave its tombstone (keys.contact_withdrawn, the
        time of the withdrawal) in the same transaction, so no refresh queued before it
        and written back later brings it back. Raises LeanRedisError."""
        self._published.pop(contact, None)
        self._republish.pop(contact, None)
        try:
            replies = self._connection.pipeline([
                _command("MULTI"),
                _command("SET", contact_withdrawn(contact), tombstone_value(time.time()),
                         "PX", CONTACT_TOMBSTONE_MS),
                _command("DEL", contact),
                _command("EXEC")])
        except (OSError, ValueError) as exc:
            self._connection_lost()
            raise LeanRedisError(f"Redis unavailable: {exc}") from None
        for reply in replies:  # a refused command makes EXEC refuse the whole (EXECABORT)
            if isinstance(reply, LeanRedisError):
                raise reply

    def forget(self) -> None:
        self._absent.clear()
        self._published.clear()

    def close(self) -> None:
        self._connection.close()
        self._connection_lost()

    # ------------------------------------------------------------------ internals
    def _answer_known(self, disabled: str, revoked: str, now: float) -> bool:
        """Read what Redis sent (invalidations first); True if both flags are known absent
        and the connection is alive enough to trust that."""
        if not self._absent:
            return False
        connection = self._connection
        try:
            connection.poll()
        except Exception:  # closed, garbled, or far behind: trust nothing remembered
            self._connection_lost()
            return False
        if (not connection.tracking_active
                or now - connection.last_heard > TRACKING_LIVENESS_SECONDS
                or connection.oldest_owed_age(now) > TRACKING_LIVENESS_SECONDS):
            return False
        return disabled in self._absent and revoked in self._absent

    def _connection_lost(self) -> None:
        for contact, value, expiry in self._connection.lost:
            self._republish[contact] = (value, expiry)
        self._connection.lost.clear()
        self.forget()

    def _republish_lost(self, now: float) -> None:
        """Send again, and wait for, the reachability SETs a broken connection lost: their
        REGISTERs were answered 200 OK. Raises LeanRedisError if Redis cannot take them."""
        while self._republish:
            contact, (value, expiry) = next(iter(self._republish.items()))
            if expiry - now >= 1:
                try:
                    reply = self._connection.request(
                        _command("SET", contact, value, "EX", int(expiry - now)))
                except (OSError, ValueError) as exc:
                    self._connection_lost()
                    raise LeanRedisError(f"Redis unavailable: {exc}") from None
                if isinstance(reply, LeanRedisError):
                    self._log(f"reachability {contact} not published again: {reply}")
            self._republish.pop(contact, None)

    def _owed_reply(self, label: tuple[str, str, float], reply: Any) -> None:
        if isinstance(reply, LeanRedisError):
            contact = label[0]
            self._published.pop(contact, None)  # next time with a round trip
            self._log(f"reachability {contact} not refreshed: {reply}")

    def _note_setup(self) -> None:
        note = self._connection.setup_note
        if note and note != self._noted:
            self._log(f"{note}; every admission asks Redis")
        self._noted = note

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


# ---------------------------------------------------------------------- write-back
# How long an unregistration's tombstone lives; a refresh queued longer ago than
# DEFERRED_MAX_AGE_SECONDS (well inside it) is not written back.
CONTACT_TOMBSTONE_MS = 5000
DEFERRED_MAX_AGE_SECONDS = 2.0

# KEYS: contact key, its tombstone. ARGV: contact, TTL in ms, when the refresh was queued
# (wall clock, ms). Returns 1 if written, 0 if the agent unregistered after the refresh
# was queued (a tombstone at least as recent). A key that holds another contact is
# overwritten: the ACD asks only whether the agent is reachable, and either contact is a
# registered binding (a last writer per refresh, as when each REGISTER wrote it).
REFRESH_LUA = """
local withdrawn = redis.call('GET', KEYS[2])
if withdrawn and (tonumber(withdrawn) or math.huge) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def tombstone_value(now: float) -> str:
    """What a withdrawal leaves in keys.contact_withdrawn: its wall-clock time in ms (a
    refresh queued on another node is compared with it: nodes keep time by NTP)."""
    return str(int(now * 1000))


def encode_refresh(value: str, ttl: int, wall: float, monotonic: float) -> str:
    """A deferred refresh as the KEMI script queues it: when it was queued, on the wall
    clock (for the tombstone) and on the host's monotonic clock (its age, for the flusher,
    another process of the same host), its TTL in ms, then the contact."""
    return f"{int(wall * 1000)} {int(monotonic * 1000)} {ttl * 1000} {value}"


def decode_refresh(item: str) -> tuple[int, int, int, str]:
    """(queued wall ms, queued monotonic ms, TTL ms, contact); ValueError for anything
    else."""
    wall, monotonic, ttl, value = item.split(" ", 3)
    return int(wall), int(monotonic), int(ttl), value


# Seconds an unwritten refresh's key is reported for when its own TTL is unknown (a
# garbled item): the registrar's longest expiry.
UNKNOWN_TTL_SECONDS = 3600


class ReachabilityWriter:
    """Writes back the refreshes workers deferred (TrackedAdmission's `defer`), many per
    round trip: one pipelined REFRESH_LUA per contact key (each key's own slot), which
    never brings back a key an unregistration deleted after the refresh was queued. Used
    by one process (the KEMI script's flusher). `log` receives refusals from Redis."""

    def __init__(self, url: str, *, timeout: float = 0.5,
                 log: Callable[[str], None] | None = None):
        self._connection = RespConnection(url, timeout=timeout)
        self._sha = hashlib.sha1(REFRESH_LUA.encode()).hexdigest()
        self._log = log or (lambda message: None)

    def write(self, refreshes: list[tuple[str, str]], monotonic: float,
              ) -> list[tuple[str, int]]:
        """refreshes: (contact key, encode_refresh item); `monotonic` is time.monotonic().
        Returns (key, seconds its TTL was to reach) of those not written: the agent
        unregistered since, the item is too old, expired or garbled, or Redis refused it
        (logged). Raises LeanRedisError when Redis cannot be reached (nothing written)."""
        now_ms = int(monotonic * 1000)
        unwritten: list[tuple[str, int]] = []
        due: list[tuple[str, str, int, int]] = []
        for key, item in refreshes:
            try:
                wall_ms, queued_ms, ttl_ms, value = decode_refresh(item)
            except ValueError:
                unwritten.append((key, UNKNOWN_TTL_SECONDS))
                continue
            left_ms = ttl_ms - (now_ms - queued_ms)
            if now_ms - queued_ms > DEFERRED_MAX_AGE_SECONDS * 1000 or left_ms < 1000:
                unwritten.append((key, max(1, -(-ttl_ms // 1000))))
            else:
                due.append((key, value, left_ms, wall_ms))
        if not due:
            return unwritten
        replies = self._send(due, "EVALSHA", self._sha)
        if any(_noscript(reply) for reply in replies):  # Redis restarted or SCRIPT FLUSH
            replies = self._send(due, "EVAL", REFRESH_LUA)
        refused = [reply for reply in replies if isinstance(reply, LeanRedisError)]
        if refused:
            self._log(f"{len(refused)} reachability refreshes refused by Redis: {refused[0]}")
        unwritten.extend((key, -(-left_ms // 1000))
                         for (key, _, left_ms, _), reply in zip(due, replies, strict=True)
                         if reply != 1)
        return unwritten

    def close(self) -> None:
        self._connection.close()

    def _send(self, due: list[tuple[str, str, int, int]], verb: str, script: str,
              ) -> list[Any]:
        try:
            return self._connection.pipeline([
                _command(verb, script, 2, key, contact_withdrawn(key), value, left_ms, wall_ms)
                for key, value, left_ms, wall_ms in due])
        except (OSError, ValueError) as exc:
            raise LeanRedisError(f"Redis unavailable: {exc}") from None


def _noscript(reply: Any) -> bool:
    return isinstance(reply, LeanRedisError) and str(reply).startswith("NOSCRIPT")
