"""Drive SIPp with the scenarios of sipp-scenarios/: agents that register and answer,
carriers that place calls. Used by `omnicc demo`, the integration tests and bench/.

Each run keeps its message trace, error log and statistics in a work directory, so a
failed call can be read afterwards exactly as SIPp saw it.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from dataclasses import dataclass, field
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

    def first_lines(self) -> list[str]:
        """Request and status lines of every SIP message SIPp sent or received, in order."""
        return [
            line.strip() for line in self.trace().splitlines()
            if line.startswith("SIP/2.0 ") or (line[:1].isupper() and " sip:" in line
                                                 and line.rstrip().endswith("SIP/2.0"))
        ]


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
                name: str | None = None) -> SippRun:
    name = name or f"phone-{port}"
    argv = [
        sipp_binary(), "-sf", str(SCENARIOS / "agent_answer.xml"), "-i", local_ip,
        "-p", str(port), "-m", str(calls), *_common(name, workdir),
    ]
    return SippRun(name, argv, workdir)


def carrier_calls(
    workdir: Path, *, proxy: str, did: str, local_ip: str, calls: int = 1,
    rate: float = 1.0, talk_ms: int = 2000, caller: str = "5491155550000",
    name: str | None = None,
) -> SippRun:
    name = name or f"calls-{did}"
    argv = [
        sipp_binary(), proxy, "-sf", str(SCENARIOS / "caller.xml"), "-i", local_ip,
        "-s", did, "-m", str(calls), "-r", str(rate), "-rp", "1000",
        "-l", "50", "-d", str(talk_ms), "-key", "caller", caller, "-timeout", "60s",
        *_common(name, workdir),
    ]
    return SippRun(name, argv, workdir)


def wait_all(runs: list[SippRun], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for run in runs:
        run.wait(max(1.0, deadline - time.monotonic()))
