"""A fake Asterisk for unit tests: it plays the channel's side of a FastAGI session.

Unit tests only; behaviour against real Asterisk is tested under tests/integration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from agi.protocol import AGISession, close_writer, read_request

# Given a received command split into words, return the reply text to send (several
# lines allowed, e.g. "HANGUP\n200 result=-1"), "" to stay silent, DROP_CONNECTION to
# close the socket instead of answering, or None to fall back to the default reply.
Responder = Callable[[tuple[str, ...]], str | None]
DROP_CONNECTION = "\0drop-connection"

T = TypeVar("T")

USAGE_SET_VARIABLE = (
    "520-Invalid command syntax.  Proper usage follows:\n"
    "Usage: SET VARIABLE <variablename> <value>\n"
    " Sets a variable to the current channel.\n"
    "520 End of proper usage.\n"
)


def split_agi_command(line: str) -> list[str]:
    """Split a command line into words as Asterisk's parse_args does.

    Double quotes group words, a backslash makes the next character literal, and
    spaces or tabs outside quotes separate words; ``""`` is an empty word.
    """
    words: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
            continue
        elif ch == '"':
            quoted = not quoted
            if current is None:
                current = []
            continue
        elif ch in " \t" and not quoted:
            if current is not None:
                words.append("".join(current))
                current = None
            continue
        if current is None:
            current = []
        current.append(ch)
    if current is not None:
        words.append("".join(current))
    return words


def default_environment(
    host: str,
    port: int,
    script: str,
    *,
    args: Sequence[str] = (),
    params: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An environment like the one Asterisk 22 sends for ``AGI(agi://host:port/script?...)``."""
    query = urlencode(dict(params or {}))
    network_script = f"{script}?{query}" if query else script
    env = {
        "agi_network": "yes",
        "agi_network_script": network_script,
        "agi_request": f"agi://{host}:{port}/{network_script}",
        "agi_channel": "PJSIP/kamailio-00000001",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": "1700000000.1",
        "agi_version": "22.10.1",
        "agi_callerid": "5551234",
        "agi_calleridname": "Test Caller",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "8005550100",
        "agi_rdnis": "unknown",
        "agi_context": "omnicc-inbound",
        "agi_extension": "8005550100",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140000000000000",
    }
    for number, value in enumerate(args, start=1):
        env[f"agi_arg_{number}"] = value
    return env


@dataclass
class FakeCallRecord:
    """What the fake saw during one call."""

    env: dict[str, str]
    commands: list[tuple[str, ...]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)  # those the server SET
    closed_by_server: bool = False


class FakeAsterisk:
    """One fake channel: connects, sends the environment, answers commands."""

    def __init__(
        self,
        host: str,
        port: int,
        script: str = "test",
        *,
        args: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        variables: Mapping[str, str] | None = None,
        responder: Responder | None = None,
        timeout: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port
        self.env = default_environment(host, port, script, args=args, params=params)
        self.env.update(env or {})
        self.channel_variables = dict(variables or {})  # what GET VARIABLE answers from
        self.responder = responder
        self.timeout = timeout  # bounds run() so a broken test fails instead of hanging
        self.record = FakeCallRecord(env=dict(self.env))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def commands(self) -> list[tuple[str, ...]]:
        return self.record.commands

    @property
    def variables(self) -> dict[str, str]:
        return self.record.variables

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise RuntimeError("FakeAsterisk is not connected")
        return self._reader, self._writer

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def send_raw(self, data: bytes) -> None:
        _, writer = self._streams()
        writer.write(data)
        await writer.drain()

    async def send_environment(self, *, lines: int | None = None, finish: bool = True) -> None:
        """Send the first ``lines`` environment lines (all by default), then the blank line."""
        items = list(self.env.items())[:lines]
        block = "".join(f"{key}: {value}\n" for key, value in items)
        await self.send_raw((block + ("\n" if finish else "")).encode("utf-8"))

    async def send_hangup(self) -> None:
        """What Asterisk writes at once when the caller hangs up during a FastAGI session."""
        await self.send_raw(b"HANGUP\n")

    def default_reply(self, words: tuple[str, ...]) -> str:
        """Asterisk's answer to the commands handlers use most."""
        verb = " ".join(words[:2]).upper()
        if verb == "SET VARIABLE":
            if len(words) != 4:
                return USAGE_SET_VARIABLE
            self.channel_variables[words[2]] = words[3]
            self.record.variables[words[2]] = words[3]
            return "200 result=1"
        if verb == "GET VARIABLE":
            value = self.channel_variables.get(words[2]) if len(words) == 3 else None
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if verb == "STREAM FILE":
            return "200 result=0 endpos=8000"
        head = words[0].upper() if words else ""
        if head in ("ANSWER", "EXEC"):
            return "200 result=0"
        if head in ("VERBOSE", "HANGUP"):
            return "200 result=1"
        return "510 Invalid or unknown command"

    async def answer_commands(self) -> None:
        """Answer every command until the server closes the connection."""
        reader, writer = self._streams()
        while True:
            try:
                raw = await reader.readline()
            except ConnectionError:
                raw = b""
            if not raw:
                self.record.closed_by_server = True
                return
            words = tuple(split_agi_command(raw.decode("utf-8").rstrip("\r\n")))
            self.record.commands.append(words)
            reply = self.responder(words) if self.responder is not None else None
            if reply is None:
                reply = self.default_reply(words)
            if reply == DROP_CONNECTION:
                await self.close()
                return
            if reply:
                try:
                    await self.send_raw((reply.rstrip("\n") + "\n").encode("utf-8"))
                except ConnectionError:
                    pass  # the server went away; the next read sees EOF

    async def read_until_closed(self) -> bytes:
        """Wait for the server to close the connection, close ours, return what it sent."""
        reader, _ = self._streams()
        try:
            data = await reader.read()
        except ConnectionError:
            data = b""
        self.record.closed_by_server = True
        await self.close()
        return data

    async def close(self) -> None:
        if self._writer is not None:
            await close_writer(self._writer)

    async def run(self) -> FakeCallRecord:
        """A whole call: connect, send the environment, answer until the server hangs up."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.connect()
                await self.send_environment()
                await self.answer_commands()
        finally:
            await self.close()
        return self.record


async def run_fake_call(
    host: str, port: int, script: str = "test", **options: Any
) -> FakeCallRecord:
    """Shorthand for ``FakeAsterisk(host, port, script, **options).run()``."""
    return await FakeAsterisk(host, port, script, **options).run()


async def drive_session(
    body: Callable[[AGISession], Awaitable[None]],
    *,
    command_timeout: float = 1.0,
    **fake_options: Any,
) -> FakeCallRecord:
    """Run ``body`` on a real AGISession talking to a FakeAsterisk, without FastAGIServer.

    For testing the protocol layer or one handler alone; ``body``'s exception, if
    any, is re-raised after the fake's call has ended.
    """
    outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: AGISession | None = None
        try:
            request = await read_request(reader, timeout=command_timeout)
            session = AGISession(reader, writer, request, command_timeout=command_timeout)
            await body(session)
            outcome.set_result(None)
        except Exception as exc:
            outcome.set_exception(exc)
        finally:
            if session is not None:
                await session.close()
            else:
                await close_writer(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        record = await run_fake_call("127.0.0.1", port, **fake_options)
        await outcome
    finally:
        server.close()
        await server.wait_closed()
    return record


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll until ``condition()`` holds (for state that settles just after a close)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


def run_async(main: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
    """Run a coroutine from a plain test function, with a timeout so no test can hang."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main

    return asyncio.run(bounded())
