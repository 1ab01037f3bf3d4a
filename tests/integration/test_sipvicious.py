"""sipvicious (svmap, svwar, svcrack) against the real stack's Kamailio on loopback: issue 3's
"must show" for scanners. The scanner is banned; svwar cannot tell existing extensions from
missing ones; svcrack finds no password; no trunk and no Asterisk node is banned.

Every scan sends from a loopback address of its own, so the scans run side by side and the
bans of one never touch another (or the rest of the suite, whose agents use 127.0.0.1); all
of them are lifted when the module ends. The tools run through data/sipvicious_tool.py,
which binds them to that address and, where a test says so, changes their User-Agent and
repairs svcrack's digest answers (its docstring says what and why). svcrack is shown both
ways: with the right password 40th in its list the auth-failure ban stops it long before;
with the same password 3rd it finds it, which proves it really is cracking.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.sip_security import ban_key

from .conftest import DOMAIN, TRUNK_IP, RunningStack, omnicc_cli
from .test_first_call import events_since, final_status, now_id

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
TOOL_RUNNER = DATA / "sipvicious_tool.py"
GUESSES = DATA / "svcrack_guesses.txt"

PHONE_USER_AGENT = "Yealink SIP-T46S 66.86.0.15"
EXISTING_EXTENSIONS = ("1001", "1002")
EXTENSION_RANGE = "1000-1010"
CRACKED_EXTENSION = "1001"
PASSWORD_POSITION_OUT_OF_REACH = 40
PASSWORD_POSITION_WITHIN_REACH = 3
SCAN_TIMEOUT_SECONDS = 60

# One loopback address per scan (127.0.0.71-.81: used by no other test).
SOURCES = {
    "svmap-as-shipped": "127.0.0.71",
    "svwar-as-shipped": "127.0.0.72",
    "svcrack-as-shipped": "127.0.0.73",
    "svmap-as-a-phone": "127.0.0.74",
    "svmap-new-user-agent-only": "127.0.0.82",
    "svwar-register": "127.0.0.75",
    "svwar-register-forced": "127.0.0.76",
    "svwar-invite-forced": "127.0.0.77",
    "svwar-options-forced": "127.0.0.78",
    "svcrack-password-out-of-reach": "127.0.0.79",
    "svcrack-password-within-reach": "127.0.0.80",
}
RAW_PROBE_SOURCE = "127.0.0.81"
# A missing extension like the one svwar probes first: a random 32-bit number.
RANDOM_EXTENSION = "2718281828"


@dataclass(frozen=True)
class ScanResult:
    source_ip: str
    returncode: int
    output: str  # the tool's stdout and stderr: its log lines and its report table

    @property
    def reported_anything(self) -> bool:
        # Every sipvicious report is a table with a "+===" rule under its header row.
        return "+===" in self.output

    @property
    def passwords_tried(self) -> list[str]:
        return re.findall(r"DEBUG:ASipOfRedWine:trying (.*)", self.output)


def sipvicious(tool: str, source_ip: str, *tool_args: str, user_agent: str | None = None,
               digest_challenge: bool = False, expires: int | None = None) -> list[str]:
    argv = [sys.executable, str(TOOL_RUNNER), tool, "--source", source_ip]
    if user_agent:
        argv += ["--user-agent", user_agent]
    if digest_challenge:
        argv.append("--digest-challenge")
    if expires is not None:
        argv += ["--expires", str(expires)]
    return [*argv, "--", *tool_args]


def dictionary(path: Path, password: str, position: int, *, ends_there: bool = False) -> Path:
    """The common guesses with the real password put at `position` (1-based); with
    `ends_there`, nothing after it (svcrack then has no later word in flight to count as
    a failure however late the 200 OK comes)."""
    guesses = GUESSES.read_text().split()
    after = [] if ends_there else guesses[position - 1:]
    path.write_text("\n".join([*guesses[:position - 1], password, *after]))
    return path


def planned_scans(stack: RunningStack, workdir: Path) -> dict[str, list[str]]:
    port = str(stack.config.services.kamailio.port)
    host = "127.0.0.1"
    svwar_args = ("-p", port, "--domain", DOMAIN, "-e", EXTENSION_RANGE, "--maximumtime", "1",
                  "-v")
    password = stack.config.tenant("default").agent(CRACKED_EXTENSION).password
    svcrack_args = ("-p", port, "--domain", DOMAIN, "-u", CRACKED_EXTENSION,
                    "--maximumtime", "1", "-vvv")
    out_of_reach = dictionary(workdir / "out-of-reach.txt", password,
                              PASSWORD_POSITION_OUT_OF_REACH)
    within_reach = dictionary(workdir / "within-reach.txt", password,
                              PASSWORD_POSITION_WITHIN_REACH, ends_there=True)

    return {
        # The tools with their own User-Agent ("friendly-scanner"); svmap entirely as shipped.
        "svmap-as-shipped": [sys.executable, "-m", "sipvicious.svmap",
                             "-b", SOURCES["svmap-as-shipped"], "-p", port, host],
        "svwar-as-shipped": sipvicious("svwar", SOURCES["svwar-as-shipped"], *svwar_args, host),
        "svcrack-as-shipped": sipvicious("svcrack", SOURCES["svcrack-as-shipped"],
                                         *svcrack_args, "-d", str(out_of_reach), host),
        # The same tools passing for a phone.
        # (svmap's From names it "sipvicious" unless told otherwise, and omnicc looks there
        # too: a phone in disguise changes both.)
        "svmap-as-a-phone": sipvicious("svmap", SOURCES["svmap-as-a-phone"], "-p", port,
                                       "--fromname", "Alice", host,
                                       user_agent=PHONE_USER_AGENT),
        "svmap-new-user-agent-only": sipvicious(
            "svmap", SOURCES["svmap-new-user-agent-only"], "-p", port, host,
            user_agent=PHONE_USER_AGENT),
        "svwar-register": sipvicious("svwar", SOURCES["svwar-register"], *svwar_args, host,
                                     user_agent=PHONE_USER_AGENT),
        **{
            f"svwar-{method.lower()}-forced": sipvicious(
                "svwar", SOURCES[f"svwar-{method.lower()}-forced"], *svwar_args, "-m", method,
                "--force", host, user_agent=PHONE_USER_AGENT)
            for method in ("REGISTER", "INVITE", "OPTIONS")
        },
        "svcrack-password-out-of-reach": sipvicious(
            "svcrack", SOURCES["svcrack-password-out-of-reach"], *svcrack_args,
            "-d", str(out_of_reach), host, user_agent=PHONE_USER_AGENT, digest_challenge=True),
        # Expires 0: the REGISTER that succeeds binds no contact for the agent.
        "svcrack-password-within-reach": sipvicious(
            "svcrack", SOURCES["svcrack-password-within-reach"], *svcrack_args,
            "-d", str(within_reach), host, user_agent=PHONE_USER_AGENT, digest_challenge=True,
            expires=0),
    }


@pytest.fixture(scope="module")
def scans(running_stack: RunningStack,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ScanResult]]:
    """Every scan, run side by side (each from its own address); their results by name."""
    if importlib.util.find_spec("sipvicious") is None:
        pytest.fail("sipvicious is not installed: pip install -e '.[test]'")
    workdir = tmp_path_factory.mktemp("sipvicious")
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for name, argv in planned_scans(running_stack, workdir).items():
            log = workdir / f"{name}.log"
            with open(log, "wb") as out:
                running[name] = (subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, cwd=workdir), log)
        deadline = time.monotonic() + SCAN_TIMEOUT_SECONDS
        results = {}
        for name, (proc, log) in running.items():
            try:
                returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running after {SCAN_TIMEOUT_SECONDS} s: {log}")
            results[name] = ScanResult(SOURCES[name], returncode, log.read_text())
        yield results
    finally:
        for proc, _log in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        redis = running_stack.redis()
        for source_ip in [*SOURCES.values(), RAW_PROBE_SOURCE]:
            if redis.keys("{ip:" + source_ip + "}:*"):  # a ban or a counter
                omnicc_cli(running_stack.directory, "unban", source_ip)
        left = [ip for ip in [*SOURCES.values(), RAW_PROBE_SOURCE] if redis.exists(ban_key(ip))]
        assert not left, f"bans not lifted: {left}"


def ban_reason(stack: RunningStack, ip: str) -> str | None:
    record = stack.redis().get(ban_key(ip))
    return None if record is None else json.loads(record)["reason"]


def listed_bans(stack: RunningStack) -> dict[str, str]:
    """`omnicc status`'s bans table: reason by IP address."""
    status = omnicc_cli(stack.directory, "status")
    assert "bans:" in status.stdout, status.stdout + status.stderr
    bans = {}
    for line in status.stdout.split("bans:", 1)[1].splitlines():
        fields = line.split()
        try:
            bans[str(ipaddress.ip_address(fields[0]))] = fields[1]
        except (IndexError, ValueError):
            continue  # the header, its rule, "none"
    return bans


@pytest.mark.parametrize("tool", ["svmap", "svwar", "svcrack"])
def test_the_scanner_user_agent_is_banned_at_its_first_request(
    running_stack: RunningStack, scans: dict[str, ScanResult], tool: str
) -> None:
    scan = scans[f"{tool}-as-shipped"]
    assert not scan.reported_anything, scan.output
    assert "found nothing" in scan.output, scan.output
    assert ban_reason(running_stack, scan.source_ip) == "scanner"
    assert listed_bans(running_stack).get(scan.source_ip) == "scanner"


def test_svmap_passing_for_a_phone_does_see_the_server(
    running_stack: RunningStack, scans: dict[str, ScanResult]
) -> None:
    # The control: the silence above is the ban's doing, not a scan that cannot work.
    scan = scans["svmap-as-a-phone"]
    assert f"127.0.0.1:{running_stack.config.services.kamailio.port}" in scan.output
    assert ban_reason(running_stack, scan.source_ip) is None


def test_svmap_with_only_its_user_agent_changed_is_still_banned(
    running_stack: RunningStack, scans: dict[str, ScanResult]
) -> None:
    scan = scans["svmap-new-user-agent-only"]
    assert f"127.0.0.1:{running_stack.config.services.kamailio.port}" not in scan.output
    assert ban_reason(running_stack, scan.source_ip) == "scanner"


@pytest.mark.parametrize("scan_name", ["svwar-register", "svwar-register-forced",
                                       "svwar-invite-forced", "svwar-options-forced"])
def test_svwar_cannot_tell_existing_extensions_from_missing_ones(
    scans: dict[str, ScanResult], scan_name: str
) -> None:
    scan = scans[scan_name]
    # svwar reports an extension whose reply differs from the reply to a random one.
    assert not re.search(r"extension '\d+' (probably )?exists", scan.output), scan.output
    assert not scan.reported_anything, scan.output
    assert "found nothing" in scan.output, scan.output
    assert scan.returncode == 0, scan.output  # 40: "found something"
    if "forced" not in scan_name:
        # Unforced, svwar itself concludes that it cannot enumerate this server.
        assert "authentication request for an unknown extension" in scan.output, scan.output


def probe_request(method: str, extension: str, local: tuple[str, int]) -> bytes:
    """A request as svwar sends it (From and To the extension), without credentials."""
    uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{extension}@{DOMAIN}"
    aor = f"<sip:{extension}@{DOMAIN}>"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: {aor};tag={uuid.uuid4().hex[:10]}\r\nTo: {aor}\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:{extension}@{local[0]}:{local[1]}>\r\n"
        f"User-Agent: {PHONE_USER_AGENT}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


# What differs between two replies whatever the extension: made equal before comparing.
PER_REQUEST_PARTS = [
    (re.compile(r";branch=[^;\r\n]+"), ";branch=*"),
    (re.compile(r";tag=[^;>\r\n]+"), ";tag=*"),
    (re.compile(r'nonce="[^"]*"'), 'nonce="*"'),
    (re.compile(r"^Call-ID: .*$", re.MULTILINE), "Call-ID: *"),
]


def normalised_reply(reply: str, extension: str) -> str:
    reply = reply.replace(f"sip:{extension}@", "sip:EXTENSION@")
    for pattern, replacement in PER_REQUEST_PARTS:
        reply = pattern.sub(replacement, reply)
    return reply


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_existing_and_missing_extensions_get_the_same_reply(
    running_stack: RunningStack, scans: dict[str, ScanResult], method: str
) -> None:
    """What svwar compares (and more): whole replies, not only their status lines.
    (`scans` lifts what this leaves too: RAW_PROBE_SOURCE's flood counter.)"""
    first, last = (int(n) for n in EXTENSION_RANGE.split("-"))
    extensions = [str(n) for n in range(first, last + 1)] + [RANDOM_EXTENSION]
    replies = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((RAW_PROBE_SOURCE, 0))
        sock.settimeout(2.0)
        for extension in extensions:
            sock.sendto(probe_request(method, extension, sock.getsockname()),
                        ("127.0.0.1", running_stack.config.services.kamailio.port))
            reply = sock.recvfrom(65535)[0].decode(errors="replace")
            replies[extension] = normalised_reply(reply, extension)
    assert replies["1001"].split()[1] in ("401", "407"), replies["1001"]
    existing = {replies[ext] for ext in EXISTING_EXTENSIONS}
    missing = {replies[ext] for ext in extensions if ext not in EXISTING_EXTENSIONS}
    assert existing == missing and len(existing) == 1, (existing, missing)


def test_svcrack_is_banned_before_it_reaches_the_right_password(
    running_stack: RunningStack, scans: dict[str, ScanResult]
) -> None:
    scan = scans["svcrack-password-out-of-reach"]
    password = running_stack.config.tenant("default").agent(CRACKED_EXTENSION).password
    assert "The password for" not in scan.output and not scan.reported_anything, scan.output
    assert "found nothing" in scan.output, scan.output
    # It was really guessing, each guess a failure, until the ban left it without answers.
    assert len(scan.passwords_tried) > running_stack.config.security.auth_failures
    assert password not in scan.passwords_tried
    assert ban_reason(running_stack, scan.source_ip) == "auth-failures"
    assert listed_bans(running_stack).get(scan.source_ip) == "auth-failures"


def test_svcrack_with_its_own_user_agent_never_gets_to_guess(
    scans: dict[str, ScanResult]
) -> None:
    # Banned at its first request, it never sees a challenge to answer.
    scan = scans["svcrack-as-shipped"]
    assert scan.passwords_tried == [] and "The password for" not in scan.output, scan.output


def test_svcrack_does_find_the_password_when_it_comes_before_the_ban(
    running_stack: RunningStack, scans: dict[str, ScanResult]
) -> None:
    # The control: the cracker works against omnicc; only the ban keeps it from the 40th guess.
    scan = scans["svcrack-password-within-reach"]
    password = running_stack.config.tenant("default").agent(CRACKED_EXTENSION).password
    assert f"The password for {CRACKED_EXTENSION} is {password}" in scan.output, scan.output
    assert scan.passwords_tried[-1] == password, scan.passwords_tried
    assert ban_reason(running_stack, scan.source_ip) is None


def test_no_trunk_or_asterisk_node_is_banned_and_carrier_calls_still_work(
    running_stack: RunningStack, scans: dict[str, ScanResult], sipp_dir: Path
) -> None:
    trusted = [TRUNK_IP, *(node.host for node in running_stack.config.dispatcher_nodes)]
    bans = listed_bans(running_stack)
    assert bans, "the scans above must have left bans to look through"
    for ip in trusted:
        assert ban_reason(running_stack, ip) is None, ip
        assert ip not in bans, bans
    # A call from the trunk to a hangup destination: Asterisk answers it with 403.
    since = now_id()
    caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550199",
                                local_ip=TRUNK_IP, talk_ms=500, name="after-sipvicious")
    caller.run(timeout=60)
    assert final_status(caller) == 403, caller.first_lines()
    routed = [e for e in events_since(running_stack, since, want=1)
              if e["event"] == "call_routed"]
    assert routed and routed[0]["destination"] == "hangup"
