"""The FastAGI wire protocol: request environment, command replies, and one session.

Asterisk connects, writes ``agi_key: value`` lines ended by a blank line, then waits
for commands. Each command gets one reply line (``200 result=...``), except a usage
error, which is a multi-line ``520-`` block. When the caller hangs up, Asterisk
writes an unsolicited ``HANGUP`` line, at any moment, even between commands.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

# Asterisk reads a command into a 2048-byte buffer (AGI_BUF_LEN in res_agi.c); the
# tail of a longer line would be run as a second command, so we refuse to send one.
MAX_COMMAND_BYTES = 2047
# GET VARIABLE values are the longest replies; Asterisk caps them near 1 KiB or 4 KiB.
MAX_REPLY_LINE_BYTES = 16384
# Usage texts are a few dozen lines; more means the peer is not Asterisk.
MAX_USAGE_LINES = 200


class AGIError(Exception):
    """Base of every error the AGI layer raises."""


class AGIHangup(AGIError):
    """The channel hung up: a ``HANGUP`` line, a ``511`` reply, or the connection closed."""


class AGIProtocolError(AGIError):
    """The peer sent something that is not AGI (garbage, unparseable or oversized)."""


class AGITimeout(AGIError):
    """The peer stayed silent past the allowed time."""


class AGICommandError(AGIError):
    """Asterisk rejected a command: 510 (invalid or unknown) or 520 (usage error)."""

    def __init__(self, code: int, text: str, command: str = "") -> None:
        self.code = code
        self.text = text
        self.command = command
        summary = text.splitlines()[0] if text else ""
        super().__init__(f"{command or 'AGI command'} rejected: {code} {summary}")


def _excerpt(text: str | bytes, limit: int = 80) -> str:
    """A short repr of bad input for error messages, so a huge line cannot flood the log."""
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown


async def _read_line(reader: asyncio.StreamReader, max_bytes: int) -> str | None:
    """Read one line without its terminator; None at EOF (a partial last line is dropped)."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        raise AGIProtocolError(
            f"line longer than the stream buffer ({exc.consumed}+ bytes without a newline)"
        ) from None
    line = raw[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > max_bytes:
        raise AGIProtocolError(
            f"line of {len(line)} bytes exceeds the limit of {max_bytes}: {_excerpt(line)}"
        )
    return line.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------
# The request: the environment block Asterisk sends first
# ---------------------------------------------------------------------------

_ENV_KEY = re.compile(r"agi_[A-Za-z0-9_]+")
_ARG_KEY = re.compile(r"agi_arg_([0-9]+)")


@dataclass(frozen=True)
class AGIRequest:
    """What Asterisk told us when it opened the session."""

    env: Mapping[str, str]
    script: str
    args: tuple[str, ...]
    params: Mapping[str, str]

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> AGIRequest:
        """Build a request from the raw ``agi_*`` lines; AGIProtocolError if not FastAGI."""
        raw_script = env.get("agi_network_script")
        if raw_script is None:
            # Asterisk omits the key when the URL has no path (agi://host), so there
            # is nothing to route on.
            raise AGIProtocolError("AGI environment has no agi_network_script")
        path, _, query = raw_script.partition("?")
        if not query:
            query = urlsplit(env.get("agi_request", "")).query
        numbered = []
        for key, value in env.items():
            match = _ARG_KEY.fullmatch(key)
            if match:
                numbered.append((int(match.group(1)), value))
        numbered.sort(key=lambda pair: pair[0])  # numeric: agi_arg_10 after agi_arg_9
        return cls(
            env=MappingProxyType(dict(env)),
            script=unquote(path).lstrip("/"),
            args=tuple(value for _, value in numbered),
            # A repeated parameter keeps its last value, like a dict built from the pairs.
            params=MappingProxyType(dict(parse_qsl(query, keep_blank_values=True))),
        )

    def _get(self, key: str) -> str:
        return self.env.get(key, "")

    @property
    def channel(self) -> str:
        return self._get("agi_channel")

    @property
    def uniqueid(self) -> str:
        return self._get("agi_uniqueid")

    @property
    def callerid(self) -> str:
        """Raw ``agi_callerid``: Asterisk writes ``unknown`` when there is none."""
        return self._get("agi_callerid")

    @property
    def extension(self) -> str:
        return self._get("agi_extension")

    @property
    def context(self) -> str:
        return self._get("agi_context")

    @property
    def dnid(self) -> str:
        """Raw ``agi_dnid``: Asterisk writes ``unknown`` when there is none."""
        return self._get("agi_dnid")

    @property
    def language(self) -> str:
        return self._get("agi_language")


async def _read_environment(
    reader: asyncio.StreamReader, env: dict[str, str], max_lines: int, max_line_bytes: int
) -> None:
    """Fill ``env`` up to the blank line; filled in place so a timeout can say how far it got."""
    while True:
        line = await _read_line(reader, max_line_bytes)
        if line is None:
            raise AGIProtocolError(
                f"peer closed in the middle of the AGI environment (after {len(env)} lines)"
            )
        if line == "":
            return
        if len(env) >= max_lines:
            raise AGIProtocolError(f"AGI environment longer than {max_lines} lines")
        key, sep, value = line.partition(": ")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise AGIProtocolError(f"not an AGI environment line: {_excerpt(line)}")
        if key in env:
            raise AGIProtocolError(f"AGI environment repeats {key!r}")
        env[key] = value


async def read_request(
    reader: asyncio.StreamReader,
    *,
    timeout: float,
    max_lines: int = 200,
    max_line_bytes: int = 4096,
) -> AGIRequest:
    """Read the environment block; ``timeout`` bounds the whole block, not each line."""
    env: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout):
            await _read_environment(reader, env, max_lines, max_line_bytes)
    except TimeoutError:
        raise AGITimeout(
            f"AGI environment not complete within {timeout:g} s (got {len(env)} lines)"
        ) from None
    return AGIRequest.from_environment(env)


# ---------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AGIResult:
    """A parsed ``200 result=<result> [(<data>)] [key=value ...]`` reply."""

    code: int
    result: str
    data: str | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# The data part is greedy so a value containing ")" still ends at the last ")" that is
# followed only by key=value pairs (GET VARIABLE does not escape what it returns).
_RESULT_LINE = re.compile(
    r"(?P<code>[0-9]{3}) result=(?P<result>\S*)"
    r"(?: \((?P<data>.*)\))?"
    r"(?P<extra>(?: [^\s=()]+=\S*)*)"
    r"\s*"
)


def parse_result_line(line: str) -> AGIResult:
    """Parse one result line; AGIProtocolError if it is not one."""
    match = _RESULT_LINE.fullmatch(line)
    if match is None:
        raise AGIProtocolError(f"not an AGI result line: {_excerpt(line)}")
    extra = dict(pair.split("=", 1) for pair in match.group("extra").split())
    return AGIResult(
        code=int(match.group("code")),
        result=match.group("result"),
        data=match.group("data"),
        extra=MappingProxyType(extra),
    )


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

_COMMAND_NAME = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")


def quote_arg(value: str) -> str:
    """Quote one command argument the way Asterisk's parser undoes it.

    CR, LF and NUL are refused: a line break would end the command early and let the
    rest of the value run as a second AGI command.
    """
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"AGI argument contains CR, LF or NUL: {_excerpt(value)}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_command(name: str, *args: str) -> bytes:
    """The bytes of one command line; ValueError for a bad name, argument or length."""
    if not _COMMAND_NAME.fullmatch(name):
        raise ValueError(f"not an AGI command name: {_excerpt(name)}")
    line = " ".join([name, *(quote_arg(arg) for arg in args)]).encode("utf-8") + b"\n"
    if len(line) > MAX_COMMAND_BYTES:
        raise ValueError(f"{name} command is {len(line)} bytes; Asterisk takes {MAX_COMMAND_BYTES}")
    return line


def _command_error_text(lines: tuple[str, ...]) -> str:
    """The text of a 510/520 reply without the code prefixes on its first and last line."""
    if len(lines) == 1:
        return lines[0][4:].strip()
    return "\n".join([lines[0][4:], *lines[1:-1], lines[-1][4:]]).strip()


@dataclass(frozen=True)
class _Reply:
    """One reply as read: a single line or a whole 520 block."""

    lines: tuple[str, ...]
    # Whether a HANGUP line came before this reply: decided by stream order, not by
    # when the waiting command happens to wake up.
    after_hangup: bool


# What the reader queues: a reply, an error it hit, or None for end of stream.
_QueuedReply = _Reply | AGIError | None


class AGISession:
    """One FastAGI conversation with Asterisk.

    A background task reads everything Asterisk writes, so a ``HANGUP`` is noticed even
    while no command is running (``wait_for_hangup``). Commands run one at a time.

    Hang-up rule: the first command whose reply comes after a ``HANGUP`` line in the
    stream raises AGIHangup (once its reply is consumed, so the stream stays in step),
    whether the hang-up came during that command or while idle before it. Later commands
    are sent normally: Asterisk still runs some of them on a dead channel (SET VARIABLE,
    GET VARIABLE, VERBOSE) and answers ``511`` to the rest, which raises AGIHangup.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: AGIRequest,
        *,
        command_timeout: float,
    ) -> None:
        self.request = request
        self._reader = reader
        self._writer = writer
        self._command_timeout = command_timeout
        self._replies: asyncio.Queue[_QueuedReply] = asyncio.Queue()
        self._command_lock = asyncio.Lock()
        self._hangup = asyncio.Event()
        self._hangup_reported = False
        self._peer_closed = False
        # Set when the reply stream can no longer be trusted (timeout, oversized line).
        self._broken: str | None = None
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def hung_up(self) -> bool:
        """True once the channel hung up or the AGI connection was lost or became unusable."""
        return self._hangup.is_set()

    async def wait_for_hangup(self) -> None:
        """Return once ``hung_up`` becomes true; meant to race a handler's long waits."""
        self._start_reader()
        await self._hangup.wait()

    async def command(self, name: str, *args: str) -> AGIResult:
        """Send one command and return its ``200`` result."""
        line = format_command(name, *args)
        async with self._command_lock:
            reply = await self._exchange(name, line)
        first = reply.lines[0]
        if first.startswith("511"):
            self._hangup.set()
            self._hangup_reported = True
            raise AGIHangup(f"{name}: {first}")
        if reply.after_hangup and not self._hangup_reported:
            self._hangup_reported = True
            raise AGIHangup(f"{name}: the channel hung up")
        if first.startswith(("510", "520")):
            raise AGICommandError(int(first[:3]), _command_error_text(reply.lines), name)
        try:
            result = parse_result_line(first)
        except AGIProtocolError:
            raise AGIProtocolError(f"unparseable reply to {name}: {_excerpt(first)}") from None
        if result.code != 200:
            raise AGIProtocolError(f"unexpected reply to {name}: {_excerpt(first)}")
        return result

    async def _exchange(self, name: str, line: bytes) -> _Reply:
        if self._broken is not None:
            raise AGIProtocolError(f"{name} not sent: session unusable ({self._broken})")
        if self._peer_closed:
            raise AGIHangup(f"{name} not sent: the AGI connection is closed")
        self._start_reader()
        try:
            self._writer.write(line)
            await self._writer.drain()
        except ConnectionError as exc:
            raise AGIHangup(f"{name}: connection lost while sending ({exc})") from exc
        answered = False
        try:
            async with asyncio.timeout(self._command_timeout):
                reply = await self._replies.get()
            answered = True
        except TimeoutError:
            raise AGITimeout(f"no reply to {name} within {self._command_timeout:g} s") from None
        finally:
            if not answered:
                # A late reply would be taken as the answer to the next command.
                self._broken = f"{name} was left without its reply"
        if reply is None:
            raise AGIHangup(f"{name}: the AGI connection closed (channel gone)")
        if isinstance(reply, AGIError):
            raise reply
        return reply

    def _start_reader(self) -> None:
        if self._reader_task is None:
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_replies(), name=f"agi-reader {self.request.channel}"
            )

    async def _read_replies(self) -> None:
        """Sort everything Asterisk writes into hang-up notices and command replies."""
        try:
            while True:
                line = await _read_line(self._reader, MAX_REPLY_LINE_BYTES)
                if line is None:
                    break
                if line == "HANGUP":
                    self._hangup.set()
                    continue
                lines: tuple[str, ...] | None = (line,)
                if line.startswith("520-"):
                    lines = await self._read_usage_block(line)
                    if lines is None:
                        break
                self._replies.put_nowait(_Reply(lines, after_hangup=self._hangup.is_set()))
            self._peer_closed = True
            self._replies.put_nowait(None)
        except ConnectionError:
            self._peer_closed = True  # a reset is just an abrupt close
            self._replies.put_nowait(None)
        except AGIProtocolError as exc:
            self._broken = str(exc)
            self._replies.put_nowait(exc)
        finally:
            # However reading ends, nothing more will arrive: release wait_for_hangup()
            # so a waiting handler (a queued caller) does not wait forever.
            self._hangup.set()

    async def _read_usage_block(self, first: str) -> tuple[str, ...] | None:
        lines = [first]
        while len(lines) < MAX_USAGE_LINES:
            line = await _read_line(self._reader, MAX_REPLY_LINE_BYTES)
            if line is None:
                return None
            lines.append(line)
            if line.startswith("520 "):
                return tuple(lines)
        raise AGIProtocolError(f"520 usage block longer than {MAX_USAGE_LINES} lines")

    async def close(self) -> None:
        """Stop reading and close the connection (Asterisk then ends the AGI app)."""
        try:
            if self._reader_task is not None:
                self._reader_task.cancel()
                # asyncio.wait does not re-raise the task's CancelledError, so a
                # cancellation of our own caller still propagates normally.
                await asyncio.wait({self._reader_task})
        finally:
            await close_writer(self._writer)

    # -- convenience commands ------------------------------------------------

    async def answer(self) -> AGIResult:
        return await self.command("ANSWER")

    async def hangup(self) -> AGIResult:
        return await self.command("HANGUP")

    async def verbose(self, message: str, level: int = 1) -> None:
        # A log line: flatten line breaks rather than refuse the message.
        flat = " ".join(message.replace("\0", " ").splitlines())
        await self.command("VERBOSE", flat, str(level))

    async def set_variable(self, name: str, value: str) -> None:
        await self.command("SET VARIABLE", name, value)

    async def get_variable(self, name: str) -> str | None:
        """The variable's value; None when it is not set (``200 result=0``)."""
        result = await self.command("GET VARIABLE", name)
        if result.result == "0":
            return None
        if result.result == "1":
            return result.data if result.data is not None else ""
        raise AGIProtocolError(f"unexpected GET VARIABLE result: {result.result!r}")

    async def exec(self, app: str, *args: str) -> AGIResult:
        """Run a dialplan application; EXEC takes all its options as one ``,``-joined word."""
        if not args:
            return await self.command("EXEC", app)
        return await self.command("EXEC", app, ",".join(args))

    async def stream_file(self, name: str, escape_digits: str = "") -> AGIResult:
        return await self.command("STREAM FILE", name, escape_digits)


async def close_writer(writer: asyncio.StreamWriter, *, grace: float = 1.0) -> None:
    """Close a connection; abort it if a peer that stopped reading blocks the flush."""
    writer.close()
    try:
        async with asyncio.timeout(grace):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # already reset by the peer: closed is closed
