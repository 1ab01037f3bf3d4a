"""Drive SIPp with the scenarios of sipp-scenarios/: agents that register and answer,
carriers that place calls. Used by `omnicc demo`, the integration tests and bench/.

Each run keeps its message trace, error log and statistics in a work directory, so a
failed call can be read afterwards exactly as SIPp saw it.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omnicc.render import REPO_ROOT

SCENARIOS = REPO_ROOT / "sipp-scenarios"


class SippError(Exception):
    pass


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if not found:
        raise SippError("sipp not found: install the Debian package sip-tester (make install)")
    return found


@dataclass
class SippRun:
    """One SIPp process and the files it leaves."""

    name: str
    argv: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    stats: dict[str, str] = field(default_factory=dict)

    @property
    def messages(self) -> Path:
        return self.workdir / f"{self.name}.messages.log"

    @property
    def errors(self) -> Path:
        return self.workdir / f"{self.name}.errors.log"

    @property
    def stat_file(self) -> Path:
        return self.workdir / f"{self.name}.stats.csv"

    @property
    def output(self) -> Path:
        return self.workdir / f"{self.name}.out"

    def start(self) -> SippRun:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
            )
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None, "start() first"
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise SippError(
                f"sipp {self.name} still running after {timeout:.0f} s; see {self.messages}"
            ) from None
        self.stats = _last_stats(self.stat_file)
        return self.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def run(self, timeout: float) -> int:
        return self.start().wait(timeout)

    @property
    def successful_calls(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", 0) or 0)

    @property
    def failed_calls(self) -> int:
        return int(self.stats.get("FailedCall(C)", 0) or 0)

    def trace(self) -> str:
        return self.messages.read_text(errors="replace") if self.messages.exists() else ""

    def traced_messages(self) -> list[TracedMessage]:
        """Every SIP message of the run's -trace_msg file, with SIPp's own timestamps."""
        return read_trace(self.messages)

    def traced_dialogs(self) -> list[TracedDialog]:
        return dialogs(self.traced_messages())

    def first_lines(self) -> list[str]:
        """Request and status lines of every SIP message SIPp sent or received, in order."""
        return [
            line.strip() for line in self.trace().splitlines()
            if line.startswith("SIP/2.0 ") or (line[:1].isupper() and " sip:" in line
                                                 and line.rstrip().endswith("SIP/2.0"))
        ]


# SIPp's -trace_msg file: each message follows a line of dashes and a local timestamp,
# then "UDP message sent (N bytes):" or "UDP message received [N] bytes :".
_TRACE_SEPARATOR = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")
_TRACE_DIRECTION = re.compile(r"\bmessage (sent|received)\b")
_URI_USER = re.compile(r"sips?:([^@;>\s]+)@")


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message as SIPp logged it (sent or received), at SIPp's clock."""

    at: float  # seconds since the epoch
    sent: bool
    first_line: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order

    def header(self, name: str) -> str:
        """The first header `name` (case-insensitive), or ""."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), "")

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method a response answers."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        return self.header("cseq").rsplit(" ", 1)[-1]

    @property
    def status(self) -> int:
        """A response's status code; 0 for a request."""
        return 0 if self.is_request else int(self.first_line.split()[1])

    @property
    def call_id(self) -> str:
        return self.header("call-id")


def read_trace(path: Path) -> list[TracedMessage]:
    """The SIP messages of a SIPp -trace_msg file, in the order SIPp logged them."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return parse_trace(text.splitlines())


def parse_trace(lines: Iterable[str]) -> list[TracedMessage]:
    out: list[TracedMessage] = []
    block: list[str] = []
    stamp: str | None = None
    for line in [*lines, None]:
        match = _TRACE_SEPARATOR.match(line.strip()) if line is not None else None
        if line is not None and match is None:
            block.append(line.rstrip("\r"))
            continue
        if stamp is not None:
            message = _traced_message(stamp, block)
            if message is not None:
                out.append(message)
        stamp, block = (match.group(1) if match else None), []
    return out


def _traced_message(stamp: str, block: list[str]) -> TracedMessage | None:
    found = [(i, m) for i, m in enumerate(map(_TRACE_DIRECTION.search, block[:2])) if m]
    if not found:
        return None  # not a message (SIPp logs a few other notes in the same file)
    index, direction = found[0]
    body = [line.strip() for line in block[index + 1:]]
    while body and not body[0]:
        body.pop(0)
    if not body:
        return None
    headers = []
    for line in body[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return TracedMessage(at, direction.group(1) == "sent", body[0], tuple(headers))


@dataclass(frozen=True)
class TracedDialog:
    """One call (one Call-ID) as one SIPp instance saw it."""

    call_id: str
    user: str          # user part of the INVITE's request URI (the agent, or the DID)
    caller: str        # user part of the INVITE's From
    invited_at: float  # the first INVITE
    ended_at: float    # the last message of the call
    answered: bool     # a 200 OK answered the INVITE
    # The request that ended the call and its direction, e.g. "BYE sent", "CANCEL
    # received"; "" when none was traced (e.g. a final error response).
    ended_by: str
    hangup_at: float   # when that request was sent or received; 0.0 without one
    final_status: int  # the final response to the INVITE; 0 if none was traced


def dialogs(messages: Iterable[TracedMessage]) -> list[TracedDialog]:
    """The calls of a trace, by Call-ID, in the order of their first INVITE. Messages of a
    Call-ID without an INVITE (a REGISTER, an OPTIONS) are left out."""
    by_call: dict[str, list[TracedMessage]] = {}
    for message in messages:
        by_call.setdefault(message.call_id, []).append(message)
    out = []
    for call_id, group in by_call.items():
        invite = next((m for m in group if m.is_request and m.method == "INVITE"), None)
        if invite is None:
            continue
        finals = [m.status for m in group
                  if not m.is_request and m.method == "INVITE" and m.status >= 200]
        ending = next((m for m in group if m.is_request and m.method in ("BYE", "CANCEL")),
                      None)
        user = _URI_USER.search(invite.first_line)
        caller = _URI_USER.search(invite.header("from"))
        out.append(TracedDialog(
            call_id=call_id,
            user=user.group(1) if user else "",
            caller=caller.group(1) if caller else "",
            invited_at=invite.at,
            ended_at=max(m.at for m in group),
            answered=200 in finals,
            ended_by=(f"{ending.method} {'sent' if ending.sent else 'received'}"
                      if ending is not None else ""),
            hangup_at=ending.at if ending is not None else 0.0,
            final_status=finals[0] if finals else 0,
        ))
    return sorted(out, key=lambda d: d.invited_at)


def _last_stats(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _common(name: str, workdir: Path) -> list[str]:
    return [
        "-nostdin", "-trace_msg", "-message_file", str(workdir / f"{name}.messages.log"),
        "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
        "-trace_stat", "-stf", str(workdir / f"{name}.stats.csv"), "-fd", "1",
    ]


def agent_register(
    workdir: Path, *, proxy: str, extension: str, password: str, domain: str,
    local_ip: str, contact_port: int, expires: int = 300, name: str | None = None,
) -> SippRun:
    name = name or f"register-{extension}"
    argv = [
        sipp_binary(), proxy, "-sf", str(SCENARIOS / "agent_register.xml"), "-m", "1",
        "-i", local_ip, "-s", extension, "-au", extension, "-ap", password,
        "-key", "domain", domain, "-key", "contact_port", str(contact_port),
        "-key", "expires", str(expires), "-timeout", "15s", *_common(name, workdir),
    ]
    return SippRun(name, argv, workdir)


def agent_phone(workdir: Path, *, local_ip: str, port: int, calls: int,
                name: str | None = None, scenario: str = "agent_answer.xml") -> SippRun:
    """An agent's phone (a SIPp UAS) on `port`; `scenario` says how it takes calls."""
    name = name or f"phone-{port}"
    argv = [
        sipp_binary(), "-sf", str(SCENARIOS / scenario), "-i", local_ip,
        "-p", str(port), "-m", str(calls), *_common(name, workdir),
    ]
    return SippRun(name, argv, workdir)


def carrier_calls(
    workdir: Path, *, proxy: str, did: str, local_ip: str, calls: int = 1,
    rate: float = 1.0, talk_ms: int = 2000, caller: str = "5491155550000",
    name: str | None = None, scenario: str = "caller.xml", run_timeout_s: int = 60,
) -> SippRun:
    """`calls` calls to `did` at `rate` per second; SIPp stops after `run_timeout_s`
    whatever is left. caller_waits_for_bye.xml ignores `talk_ms` (omnicc hangs up)."""
    name = name or f"calls-{did}"
    argv = [
        sipp_binary(), proxy, "-sf", str(SCENARIOS / scenario), "-i", local_ip,
        "-s", did, "-m", str(calls), "-r", str(rate), "-rp", "1000",
        "-l", "50", "-d", str(talk_ms), "-key", "caller", caller,
        "-timeout", f"{run_timeout_s}s", *_common(name, workdir),
    ]
    return SippRun(name, argv, workdir)


def wait_all(runs: list[SippRun], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for run in runs:
        run.wait(max(1.0, deadline - time.monotonic()))
