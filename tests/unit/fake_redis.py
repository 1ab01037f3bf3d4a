"""A tiny in-memory stand-in for a synchronous redis-py client, for unit tests only.

It has just what omnicc's SIP edge calls (omnicc/agent_auth.py, omnicc/sip_security.py):
``mget``, ``get``, ``set(ex=)``, ``exists``, ``delete``, ``ttl``, ``scan_iter(match=)`` and
``register_script``, whose script object runs a Python emulation of
``agent_auth.ADMIT_LUA``; for the blacklist (omnicc/blacklist.py) hashes (``hset``, ``hget``,
``hdel``, ``hlen``) and ``pipeline(transaction=True)``, whose queued commands all run at
``execute()`` or, when one of them is failed, none do (as MULTI/EXEC). Keys and values
come back as bytes, as from a client without ``decode_responses``. Time is a clock of its
own that moves only when a test calls ``advance``, so expiry is exact and no test waits.

``fail("mget", ...)`` makes those commands raise ``redis.ConnectionError`` (or the error
given), as a Redis that went away; ``fail()`` with no names fails every command.
Integration tests use a real Redis.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

import redis

from omnicc.agent_auth import ADMIT_LUA

EncodableValue = str | bytes | int | float
COMMANDS = ("mget", "get", "set", "exists", "delete", "ttl", "scan_iter", "evalsha",
            "hset", "hget", "hdel", "hlen")


def _encode(value: EncodableValue) -> bytes:
    if isinstance(value, bytes):
        return value
    # redis-py sends numbers as their decimal text.
    return str(value).encode("utf-8")


def _key(key: str | bytes) -> str:
    return key.decode("utf-8") if isinstance(key, bytes) else key


class FakeRedis:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self._values: dict[str, bytes] = {}
        self._hashes: dict[str, dict[str, bytes]] = {}
        self._expires_at: dict[str, float] = {}
        self._failures: dict[str, Exception] = {}
        self.commands: list[str] = []  # every command run, in order (a script is "evalsha")

    # ------------------------------------------------------------------ test controls
    def advance(self, seconds: float) -> None:
        self.now += seconds

    def fail(self, *commands: str, error: Exception | None = None) -> None:
        """Make `commands` (all of them when none is named) raise `error`."""
        unknown = set(commands) - set(COMMANDS)
        if unknown:
            raise ValueError(f"FakeRedis has no command {sorted(unknown)}")
        for command in commands or COMMANDS:
            self._failures[command] = error or redis.ConnectionError("Redis went away")

    def heal(self) -> None:
        self._failures.clear()

    def keys(self) -> list[str]:
        """The live keys (a test helper, not the Redis KEYS command)."""
        return sorted(key for key in [*self._values, *self._hashes] if self._live(key))

    # ------------------------------------------------------------------ internals
    def _command(self, name: str) -> None:
        self.commands.append(name)
        if name in self._failures:
            raise self._failures[name]

    def _live(self, key: str) -> bool:
        expires_at = self._expires_at.get(key)
        if expires_at is not None and expires_at <= self.now:
            self._values.pop(key, None)
            self._hashes.pop(key, None)
            self._expires_at.pop(key, None)
        return key in self._values or key in self._hashes

    def _get(self, key: str) -> bytes | None:
        if key in self._hashes:
            raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong "
                                      "kind of value")
        return self._values[key] if self._live(key) else None

    def _hash(self, key: str, create: bool = False) -> dict[str, bytes]:
        if self._live(key) and key in self._values:
            raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong "
                                      "kind of value")
        if create:
            return self._hashes.setdefault(key, {})
        return self._hashes.get(key, {})

    def _set(self, key: str, value: EncodableValue, ex: int | None) -> None:
        self._values[key] = _encode(value)
        if ex is None:
            self._expires_at.pop(key, None)
        else:
            self._expires_at[key] = self.now + int(ex)

    def _delete(self, key: str) -> int:
        existed = self._live(key)
        self._values.pop(key, None)
        self._hashes.pop(key, None)
        self._expires_at.pop(key, None)
        return int(existed)

    # ------------------------------------------------------------------ redis-py API
    def mget(self, keys: str | bytes | Sequence[str | bytes], *more: str | bytes
             ) -> list[bytes | None]:
        self._command("mget")
        names = [keys] if isinstance(keys, str | bytes) else list(keys)
        return [self._get(_key(name)) for name in [*names, *more]]

    def get(self, key: str | bytes) -> bytes | None:
        self._command("get")
        return self._get(_key(key))

    def set(self, key: str | bytes, value: EncodableValue, ex: int | None = None,
            px: int | None = None) -> bool:
        self._command("set")
        self._set(_key(key), value, ex if px is None else -(-px // 1000))  # whole seconds
        return True

    def exists(self, *keys: str | bytes) -> int:
        self._command("exists")
        return sum(self._live(_key(key)) for key in keys)

    def delete(self, *keys: str | bytes) -> int:
        self._command("delete")
        return sum(self._delete(_key(key)) for key in keys)

    def ttl(self, key: str | bytes) -> int:
        """Seconds left; -1 for a key without expiry, -2 for a missing key (as Redis)."""
        self._command("ttl")
        name = _key(key)
        if not self._live(name):
            return -2
        expires_at = self._expires_at.get(name)
        if expires_at is None:
            return -1
        return max(int(round(expires_at - self.now)), 0)

    def scan_iter(self, match: str | None = None, count: int | None = None) -> Iterator[bytes]:
        self._command("scan_iter")
        for key in self.keys():
            # Redis glob patterns: * ? [...] as fnmatch; braces are literal in both.
            if match is None or fnmatch.fnmatchcase(key, match):
                yield key.encode("utf-8")

    def hset(self, key: str | bytes, field: str | bytes | None = None,
             value: EncodableValue | None = None,
             mapping: dict[str, EncodableValue] | None = None) -> int:
        self._command("hset")
        pairs = dict(mapping or {})
        if field is not None:
            pairs[_key(field)] = value if value is not None else ""
        if not pairs:
            raise redis.DataError("'hset' with no key value pairs")
        stored = self._hash(_key(key), create=True)
        added = sum(1 for name in pairs if _key(name) not in stored)
        stored.update({_key(name): _encode(v) for name, v in pairs.items()})
        return added

    def hget(self, key: str | bytes, field: str | bytes) -> bytes | None:
        self._command("hget")
        return self._hash(_key(key)).get(_key(field))

    def hdel(self, key: str | bytes, *fields: str | bytes) -> int:
        self._command("hdel")
        name = _key(key)
        stored = self._hash(name)
        removed = sum(1 for f in fields if stored.pop(_key(f), None) is not None)
        if name in self._hashes and not stored:
            self._delete(name)  # Redis drops an emptied hash
        return removed

    def hlen(self, key: str | bytes) -> int:
        self._command("hlen")
        return len(self._hash(_key(key)))

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def register_script(self, script: str) -> AdmitScript:
        if script != ADMIT_LUA:
            raise NotImplementedError("FakeRedis emulates only agent_auth.ADMIT_LUA")
        return AdmitScript(self)


class AdmitScript:
    """ADMIT_LUA in Python: KEYS disabled flag, revoked flag, contact key; ARGV contact
    to publish ('' for none), TTL. 1 if refused, else 0 (and the contact published)."""

    def __init__(self, fake: FakeRedis) -> None:
        self._fake = fake

    def __call__(self, keys: Sequence[str] = (), args: Sequence[EncodableValue] = (),
                 client: object = None) -> int:
        fake = self._fake
        fake._command("evalsha")
        disabled, revoked, contact = (_key(k) for k in keys)
        publish, ttl = args
        if fake._live(disabled) or fake._live(revoked):
            return 1
        if publish != "":
            fake._set(contact, publish, int(ttl))
        return 0


class FakePipeline:
    """Queues commands; execute() runs them all, or — when any of them is failed — raises
    before running any, as a MULTI/EXEC whose connection broke."""

    def __init__(self, fake: FakeRedis) -> None:
        self._fake = fake
        self._queued: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    def __getattr__(self, name: str) -> object:
        if name not in COMMANDS:
            raise AttributeError(f"FakePipeline has no command {name!r}")

        def queue(*args: object, **kwargs: object) -> FakePipeline:
            self._queued.append((name, args, kwargs))
            return self

        return queue

    def execute(self) -> list[object]:
        queued, self._queued = self._queued, []
        for name, _, _ in queued:
            if name in self._fake._failures:
                raise self._fake._failures[name]
        return [getattr(self._fake, name)(*args, **kwargs) for name, args, kwargs in queued]
