"""Authenticated REGISTER/s at zero failures: omnicc's Kamailio (KEMI, Python) beside a plain
native kamailio.cfg doing digest against an htable, same Kamailio binary, same run.

Sides (each a real Kamailio 5.6 with 4 UDP workers, driven by SIPp on loopback):

- omnicc-bearer: omnicc's Kamailio, ``Authorization: Bearer <EdDSA JWT>`` in the first
  REGISTER (one transaction); each agent reuses its token, as a phone re-registering does,
  so the workers' token caches answer after the first REGISTER of each agent.
- omnicc-bearer-new: the same, but every REGISTER carries a token never seen before, so
  every one is a cache miss and costs a signature verification; on a Kamailio of its own
  (same Redis, same secrets), so that its once-seen tokens tax no other side.
- omnicc-digest: omnicc's Kamailio, digest with the static passwords of the config
  (REGISTER, 401 challenge, REGISTER with credentials: two transactions).
- omnicc-ephemeral: the same with time-limited credentials (username ``EXPIRY:EXT``,
  password an HMAC of it), as ``omnicc token digest`` mints them.
- omnicc-bearer-cluster: as omnicc-bearer, through one of two omnicc Kamailios that list
  each other in ``kamailio_nodes`` (same Redis, same keys): every registration is
  replicated to the other over DMQ (dmq_usrloc), and the CPU of both counts. After the
  run the peer must hold every agent's registration with the same contacts (RPC ul.dump).
- native-memory: bench/native_register_auth.cfg.j2, digest against an htable, then
  save("location") with usrloc in shared memory only (db_mode 0): the plain native cfg
  of issue 3's target, and the baseline of every ratio.

omnicc's Kamailio is started by omnicc.stack (rendered from kamailio.cfg.j2, KEMI script
kemi/omnicc_kemi.py): usrloc in memory, the per-IP flood and auth-failure counters in
htables, and the admission of each authenticated request (agent_auth.ADMIT_LUA over
omnicc/lean_redis.py's TrackedAdmission): a round trip for an agent the worker has not
admitted before, or whose disabled/revoked flag Redis has since invalidated; for one it
has, a refreshing REGISTER of the contact the worker published is queued in Kamailio's
shared memory (mqueue) and a flusher process writes the queue to Redis every 20 ms in
one pipelined round trip — or nothing is written, when the same worker published the
same contact, expiring within a second of the new expiry, less than a second ago (with
the default 10,000 agents each agent registers about once a second or less often, so
nearly every refresh is written, as a phone refreshing every few minutes is). Its
config raises security.flood_requests to 1,000,000: every request of the benchmark comes
from 127.0.0.1, which the default (200 in 2 s) would ban.

Each side steps its rate up (``-r RATE -rp 1000``, ``--seconds`` per step; sides are
interleaved per step so a busy moment of the machine hits all of them) and stops at the
first rate where a failed call or an achieved rate more than ``--max-shortfall`` below the
target happened in each of ``--attempts`` runs (other jobs share the machine, so a failing
step is run again). Its result is the highest rate it passed. A registration (one SIPp
call) counts when it ends in 200 OK: for digest that is two REGISTER transactions, for
bearer one. Kamailio's CPU (all its processes, from /proc), Redis's (and the commands it
ran, by command), SIPp's and other processes' are recorded per step, and so are warnings
and errors in the Kamailios' logs.

    .venv/bin/python bench/register_auth.py [--rates R ...] [--seconds S] [--write-doc]

Everything runs on loopback in a temporary directory; every service is stopped at the end.
Exit status 1 if the run could not measure every side, or the cluster's peer lacked
registrations.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import redis
from benchlib import LogWatch, log_tail, percentile, write_doc_section  # noqa: E402

from omnicc.auth_secrets import (
    AuthSecretFiles,
    ensure_local_secrets,
    read_digest_secret,
    read_signing_key,
    resolve_secret_files,
)
from omnicc.config import OmniccConfig, load_config
from omnicc.ephemeral import mint_credentials, tenant_secret
from omnicc.kamailio_rpc import call, dmq_peer_active, fifo_path
from omnicc.keys import agent_contact
from omnicc.sipprobe import sip_options_ping
from omnicc.stack import KAMAILIO_PKG_MB, KAMAILIO_SHM_MB, KamailioService, Stack
from omnicc.tokens import mint_agent_token

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
SCENARIO_DIR = BENCH_DIR / "sipp"
NATIVE_TEMPLATE = "native_register_auth.cfg.j2"
DEFAULT_DOC = REPO_ROOT / "docs" / "benchmarks.md"

HOST = "127.0.0.1"
TENANT = "default"
DOMAIN = "bench.omnicc.test"
FIRST_EXTENSION = 1000
# Enough that each agent registers about once a second or less often at the rates that
# matter: nearly every refresh is written to Redis, as with real phones.
DEFAULT_AGENTS = 10_000
# Kamailio workers: omnicc.render's default for omnicc, and the same for native.
CHILDREN = 4
REGISTER_EXPIRES = 3600
# omnicc-bearer-cluster's two nodes (their `node` names in the config).
CLUSTER_NODES = ("bench-cluster-a", "bench-cluster-b")
# How long the peer of omnicc-bearer-cluster may take, after the last step, to hold every
# registration the other node took (DMQ replication is asynchronous).
REPLICATION_WAIT_SECONDS = 10.0

# Up to where native's limit shows on a 2-core machine: a ratio against a baseline that
# passed every step is only an upper bound.
DEFAULT_RATES = (200, 300, 400, 500, 600, 700, 800, 1000, 1250, 1500, 2000, 2500, 3000, 4000,
                 5000, 6000, 7000, 7500, 8000, 8500, 9000, 9500, 10000, 10500, 11000, 12500,
                 15000, 20000)
DEFAULT_SECONDS = 10.0
# Other jobs share the machine: a step that fails is run once more before its side stops.
DEFAULT_ATTEMPTS = 2
DEFAULT_MAX_SHORTFALL = 0.05
WARMUP_RATE = 200
# Many agents (--agents) warm up faster, at up to this rate.
WARMUP_RATE_MAX = 2000
# Enough for each of the CHILDREN workers to meet most agents (a worker admits an agent
# with a Redis round trip the first time it meets it).
WARMUP_REGISTRATIONS_PER_AGENT = 3 * CHILDREN
# How long the Kamailios are watched doing nothing, before the warm-up.
IDLE_SECONDS = 5.0
# After the steps, one more step per side under `perf record` at this rate (0: none):
# the rate target.
DEFAULT_PROFILE_RATE = 2000
# perf's samples per second per CPU (cpu-clock: no hardware counters needed).
PROFILE_FREQUENCY = 999
# Shared objects under this share of every profiled side's samples are summed as "other".
PROFILE_MIN_SHARE = 0.01
# A call whose next message does not come within this is failed by SIPp (it has
# retransmitted its REGISTER every 500 ms by then).
RECV_TIMEOUT_MS = 5000
RTT_BATCH = 200

# The targets.
TARGET_RATIO = 0.8
TARGET_RATE = 2000

OMNICC_BEARER = "omnicc-bearer"
OMNICC_BEARER_NEW = "omnicc-bearer-new"
OMNICC_DIGEST = "omnicc-digest"
OMNICC_EPHEMERAL = "omnicc-ephemeral"
OMNICC_BEARER_CLUSTER = "omnicc-bearer-cluster"
NATIVE_MEMORY = "native-memory"
ALL_SIDES = (OMNICC_BEARER, OMNICC_BEARER_NEW, OMNICC_DIGEST, OMNICC_EPHEMERAL,
             OMNICC_BEARER_CLUSTER, NATIVE_MEMORY)
# The sides served by one omnicc Kamailio (no DMQ peer). omnicc-bearer-new has one of its
# own (same Redis, same secrets): a token never seen before on every REGISTER fills the
# workers' token caches and, with its jti, what Redis tracks for them, which would tax the
# sides measured after it.
SHARED_NODE_SIDES = (OMNICC_BEARER, OMNICC_DIGEST, OMNICC_EPHEMERAL)
BEARER_NEW_NODE = "bench-register-new"
OMNICC_SIDES = (*SHARED_NODE_SIDES, OMNICC_BEARER_NEW, OMNICC_BEARER_CLUSTER)
# What every ratio and target is measured against: the plain native cfg the issue names.
BASELINE = NATIVE_MEMORY

SIDE_DESCRIPTIONS = {
    OMNICC_BEARER: "omnicc, bearer JWT (EdDSA), each agent reusing its token",
    OMNICC_BEARER_NEW: "omnicc, bearer JWT (EdDSA), a new token every REGISTER",
    OMNICC_DIGEST: "omnicc, digest, static passwords from the config",
    OMNICC_EPHEMERAL: "omnicc, digest, ephemeral credentials (EXPIRY:EXT, HMAC password)",
    OMNICC_BEARER_CLUSTER: "as omnicc-bearer, through a node with one DMQ peer: every "
                           "registration replicated to it (CPU of both Kamailios)",
    NATIVE_MEMORY: "native kamailio.cfg, digest against htable, usrloc in memory (db_mode 0)",
}
BEARER_SIDES = (OMNICC_BEARER, OMNICC_BEARER_NEW, OMNICC_BEARER_CLUSTER)

DOC_BEGIN = "<!-- bench/register_auth.py: begin (generated by --write-doc) -->"
DOC_END = "<!-- bench/register_auth.py: end -->"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- agents


@dataclass(frozen=True)
class Agent:
    extension: str
    password: str


def sipp_can_use(password: str) -> bool:
    """SIPp (3.6.1) reads a password that starts with 0x as hex: its digest answers are
    then wrong, against native and omnicc alike (random passwords start so one time in
    4,096)."""
    return not password.lower().startswith("0x")


def make_agents(count: int) -> list[Agent]:
    def password() -> str:
        while not sipp_can_use(candidate := secrets.token_urlsafe(12)):
            pass
        return candidate

    return [Agent(str(FIRST_EXTENSION + index), password()) for index in range(count)]


def omnicc_config_text(agents: Sequence[Agent], ports: dict[str, int], *,
                       node: str = "bench-register", cluster_ports: Sequence[int] = (),
                       secret_files: AuthSecretFiles | None = None) -> str:
    """omnicc's config for one Kamailio node of the benchmark. `cluster_ports`: the SIP
    ports of every node of its cluster (kamailio_nodes), empty for a single node.
    `secret_files`: the key and secret files of another node, so that both accept the same
    tokens and ephemeral credentials."""
    agent_lines = "".join(
        f'      - {{extension: "{agent.extension}", password: "{agent.password}"}}\n'
        for agent in agents)
    cluster = ""
    if cluster_ports:
        cluster = "kamailio_nodes:\n" + "".join(
            f"  - {{host: {HOST}, port: {port}}}\n" for port in cluster_ports)
    auth = ""
    if secret_files is not None and secret_files.signing_key is not None:
        auth = (
            "auth:\n"
            "  jwt:\n"
            f"    jwks_file: {secret_files.jwks.path}\n"
            f"    signing_key_file: {secret_files.signing_key.path}\n"
            "  digest:\n"
            f"    ephemeral_secret_file: {secret_files.digest_secret.path}\n"
        )
    return (
        "# bench/register_auth.py: omnicc's side of the benchmark (written per run).\n"
        f"node: {node}\n"
        "services:\n"
        f"  listen: {HOST}\n"
        + "".join(f"  {name}: {{port: {port}}}\n" for name, port in ports.items())
        + cluster + auth
        + "security:\n"
        "  # All the load comes from one address (SIPp on 127.0.0.1); the default limit\n"
        "  # (200 requests in 2 s) would ban it within the first step.\n"
        "  flood_requests: 1000000\n"
        "tenants:\n"
        f"  - name: {TENANT}\n"
        f"    domain: {DOMAIN}\n"
        "    agents:\n"
        + agent_lines
    )


# ---------------------------------------------------------------------------- processes


def free_ports(count: int) -> list[int]:
    """Ports free for both UDP and TCP on loopback right now, all different."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held += [tcp, udp]
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports



def udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind((HOST, port))
        except OSError:
            return False
    return True


def process_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after "pid (comm)"; index 0 is the state."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    fields = process_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = process_stat(int(entry.name))
            if fields and int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process of a process group (a Kamailio and its
    workers). Workers live as long as Kamailio, so deltas over a step are exact."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = process_stat(int(entry.name))
        if fields and int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def process_busy_seconds() -> float:
    """CPU time processes have used since boot (user, nice, system, steal), summed over
    CPUs. Interrupt time is left out: on loopback it is mostly the benchmark's packets."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + steal) / CLOCK_TICKS


def udp_receive_errors() -> int:
    """Datagrams the kernel dropped system-wide because a socket's buffer was full."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")]
    counters = dict(zip(rows[0][1:], rows[1][1:], strict=True))
    return int(counters.get("RcvbufErrors", 0))


@dataclass
class Server:
    """A service of the benchmark: its process group, port and log."""

    name: str
    pgid: int
    port: int
    log: Path
    rpc_fifo: Path | None = None  # omnicc's Kamailio: its jsonrpcs FIFO


def stop_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def redis_server(workdir: Path, port: int) -> Iterator[Server]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (Debian package: redis-server)")
    log = workdir / "redis.log"
    command = [binary, "--port", str(port), "--bind", HOST, "--save", "",
               "--appendonly", "no", "--dir", str(workdir)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        with redis.Redis(host=HOST, port=port) as client:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(
                            f"redis-server did not start:\n{log_tail(log)}") from None
                    time.sleep(0.05)
        yield Server("redis-server", process.pid, port, log)
    finally:
        stop_group(process.pid)
        process.wait()


@contextmanager
def omnicc_kamailio(stack: Stack) -> Iterator[Server]:
    """omnicc's Kamailio as the local stack starts it (render, secrets, KEMI, env)."""
    for directory in (stack.etc_dir, stack.log_dir, stack.run_dir, stack.data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    service = next(s for s in stack.services if isinstance(s, KamailioService))
    service.start(progress=lambda line: print(line, flush=True))
    name = f"omnicc kamailio ({stack.config.node})"
    try:
        pid = service.pid()
        if pid is None:
            raise SystemExit(f"{name} is not running:\n{log_tail(service.log_file)}")
        yield Server(name, pid, stack.config.services.kamailio.port, service.log_file,
                     fifo_path(stack.run_dir))
    finally:
        service.stop(progress=lambda line: print(line, flush=True))


def write_password_table(directory: Path, agents: Sequence[Agent]) -> None:
    """The agents' passwords as a db_text table (passwd) for the native cfg's htable:
    loaded at start-up whatever their number, as a native deployment loads it from its
    database. (Assigning each in the cfg runs out of pkg memory past a few thousand.)"""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version").write_text("table_name(string) table_version(int)\npasswd:2\n")
    rows = "".join(f"{number}:{agent.extension}:0:0:{agent.password}:0\n"
                   for number, agent in enumerate(agents, start=1))
    (directory / "passwd").write_text(
        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) "
        "expires(int)\n" + rows)


def render_native_cfg(out: Path, *, port: int, agents: Sequence[Agent]) -> None:
    dbtext = out.parent / "dbtext"
    write_password_table(dbtext, agents)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(BENCH_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    text = env.get_template(NATIVE_TEMPLATE).render(
        listen=HOST, port=port, domain=DOMAIN, children=CHILDREN,
        tcp_children=max(2, CHILDREN // 2), dbtext_dir=dbtext,
        htable_size=max(10, len(agents).bit_length()),
        decoy_password=secrets.token_urlsafe(24),
    )
    out.write_text(text)


@contextmanager
def native_kamailio(workdir: Path, *, port: int, agents: Sequence[Agent]) -> Iterator[Server]:
    directory = workdir / "native"
    directory.mkdir()
    cfg = directory / "kamailio.cfg"
    render_native_cfg(cfg, port=port, agents=agents)
    log = directory / "kamailio.log"
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    # The same memory sizes as omnicc.stack gives omnicc's Kamailio.
    command = [binary, "-f", str(cfg), "-Y", str(directory), "-DD", "-E",
               "-m", str(KAMAILIO_SHM_MB), "-M", str(KAMAILIO_PKG_MB), "-x", "tlsf"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=directory, stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        # Any answer to OPTIONS will do (this cfg answers 405): it is serving.
        while not sip_options_ping(HOST, port, timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"native Kamailio did not start:\n{log_tail(log)}")
        print(f"  native Kamailio pid {process.pid} on {port}", flush=True)
        yield Server("native kamailio", process.pid, port, log)
    finally:
        stop_group(process.pid)
        process.wait()



# " 3(7150) ERROR: {1 2 REGISTER 4-7236@127.0.0.1} <core> [core/x.c:12]: f(): text"
_KAMAILIO_RECORD = re.compile(
    r"^\s*\d+\(\d+\)\s+(?P<level>[A-Z]+):\s*(?:\{[^}]*\}\s*)?(?P<text>.*)$")
_ERROR_LEVELS = ("ERROR", "CRITICAL", "ALERT", "BUG")
_PROBLEM_LEVELS = ("WARNING", *_ERROR_LEVELS)


def kamailio_log_problems(lines: Sequence[str]) -> Counter[str]:
    """Warnings and errors (and omnicc's own KEMI messages, e.g. a failed authentication),
    grouped: numbers become N, so a thousand alike lines are one entry."""
    problems: Counter[str] = Counter()
    for line in lines:
        record = _KAMAILIO_RECORD.match(line)
        if record is None:
            continue
        text = record["text"]
        if record["level"] in _PROBLEM_LEVELS or "omnicc:" in text:
            text = re.sub(r"\d+", "N", text)[:240]
            problems[f"{record['level']}: {text}"] += 1
    return problems


# ---------------------------------------------------------------------------- SIPp


@dataclass
class SippOutcome:
    successful: int
    failed: int
    retransmissions: int
    elapsed: float  # wall seconds from SIPp's start to its exit
    cpu: float  # SIPp's own user+system seconds
    latencies_ms: list[float]  # per successful registration, sorted
    returncode: int
    failure_kinds: Counter[str]  # SIPp's Failed...(C) counters that are not zero
    errors: Counter[str]  # SIPp's error log (it does not log every failure), grouped


def last_stats_row(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="") as stats:
            rows = list(csv.reader(stats, delimiter=";"))
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def read_latencies(directory: Path) -> list[float]:
    """Registration times (first REGISTER sent to its 200 received), from SIPp's rtt files:
    lines "date_ms;response_time_ms;rtd_name"."""
    values: list[float] = []
    for path in directory.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                try:
                    values.append(float(parts[1]))
                except ValueError:
                    continue
    return sorted(values)


# An event of SIPp's error log: "2026-11-26<TAB>15:31:25.88<TAB>1795707085.88: text", where
# the text may run over several lines and the next event may follow on the same line.
_SIPP_EVENT = re.compile(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ([^\n]*?)(?=\d{4}-\d\d-\d\d\t|\n|$)")


def grouped_sipp_errors(path: Path) -> Counter[str]:
    """SIPp's error log, one entry per kind (first line of each event, numbers as N).
    A late copy of a 200 for a call already done ("Dead call ... (successful)") is left
    out: SIPp retransmitted, both copies were answered, nothing failed."""
    errors: Counter[str] = Counter()
    if not path.exists():
        return errors
    for match in _SIPP_EVENT.finditer(path.read_text(errors="replace")):
        text = match.group(1)
        if "(successful)" in text:
            continue
        text = re.sub(r"[\w.-]+@[\d.]+", "CALL-ID", text)
        errors[re.sub(r"\d+", "N", text)[:200]] += 1
    return errors


def failure_kinds(stats: dict[str, str]) -> Counter[str]:
    """Why SIPp failed calls, from its cumulative counters (FailedTimeoutOnRecv, ...)."""
    kinds: Counter[str] = Counter()
    for name, value in stats.items():
        if (name.startswith("Failed") and name.endswith("(C)") and name != "FailedCall(C)"
                and value.isdigit() and int(value)):
            kinds[name.removesuffix("(C)")] = int(value)
    return kinds


def run_sipp(directory: Path, *, port: int, scenario: Path, injection: Path, rate: int,
             calls: int, local_port: int) -> SippOutcome:
    directory.mkdir(parents=True)
    binary = shutil.which("sipp")
    if binary is None:
        raise SystemExit("sipp is not on PATH (Debian package: sip-tester)")
    command = [
        binary, f"{HOST}:{port}", "-sf", str(scenario), "-inf", str(injection),
        "-key", "domain", DOMAIN, "-key", "expires", str(REGISTER_EXPIRES),
        "-i", HOST, "-p", str(local_port), "-r", str(rate), "-rp", "1000", "-m", str(calls),
        # At most one second of calls open at a time: if the server falls behind, SIPp
        # slows down and the achieved rate shows it.
        "-l", str(max(100, rate)),
        "-recv_timeout", str(RECV_TIMEOUT_MS), "-timeout", f"{int(calls / rate) + 60}s",
        "-nostdin", "-trace_stat", "-stf", "stats.csv", "-fd", "1",
        # -nd: a failed call just fails (no BYE or CANCEL sent to clean it up).
        "-nd", "-trace_err", "-error_file", "errors.log",
        # Registration times are written every RTT_BATCH calls (the last partial batch
        # is not): enough of a sample for p50 and p99.
        "-trace_rtt", "-rtt_freq", str(RTT_BATCH),
    ]
    started = time.perf_counter()
    with (directory / "sipp.out").open("wb") as out:
        process = subprocess.Popen(command, cwd=directory, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT)
    # wait4: SIPp's own CPU time comes with its exit status.
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stats = last_stats_row(directory / "stats.csv")

    def counter(name: str) -> int:
        return int(stats.get(name) or 0)

    return SippOutcome(
        successful=counter("SuccessfulCall(C)"), failed=counter("FailedCall(C)"),
        retransmissions=counter("Retransmissions(C)"),
        elapsed=elapsed, cpu=usage.ru_utime + usage.ru_stime,
        latencies_ms=read_latencies(directory), returncode=process.returncode,
        failure_kinds=failure_kinds(stats),
        errors=grouped_sipp_errors(directory / "errors.log"),
    )


# ---------------------------------------------------------------------------- credentials


@dataclass
class Credentials:
    """What SIPp's injection files are made from."""

    agents: list[Agent]
    signing_key: bytes
    kid: str
    issuer: str
    digest_secret: bytes  # this tenant's, derived from the shared one
    # Each agent's own token and ephemeral login, made once: a phone keeps them between
    # re-registrations, so the workers' token caches know them after the warm-up.
    kept_tokens: dict[str, str] = field(default_factory=dict)
    kept_logins: dict[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of_stack(cls, stack: Stack, agents: list[Agent]) -> Credentials:
        config = stack.config
        files = ensure_local_secrets(config, stack.config_path, stack.var).files
        return cls(agents, read_signing_key(files), config.auth.jwt.signing_kid,
                   config.auth.jwt.issuer, tenant_secret(read_digest_secret(files), TENANT))

    def token(self, extension: str, now: float) -> str:
        return mint_agent_token(self.signing_key, kid=self.kid, algorithm="EdDSA",
                                issuer=self.issuer, audience=DOMAIN, subject=extension,
                                ttl_seconds=4 * 3600, now=now)

    def kept_token(self, extension: str) -> str:
        if extension not in self.kept_tokens:
            self.kept_tokens[extension] = self.token(extension, time.time())
        return self.kept_tokens[extension]

    def kept_login(self, extension: str) -> tuple[str, str]:
        if extension not in self.kept_logins:
            now = time.time()
            login = mint_credentials(self.digest_secret, extension, ttl_seconds=4 * 3600,
                                     now=now)
            while not sipp_can_use(login[1]):  # another expiry, another password
                now += 1
                login = mint_credentials(self.digest_secret, extension,
                                         ttl_seconds=4 * 3600, now=now)
            self.kept_logins[extension] = login
        return self.kept_logins[extension]

    def write_injection(self, side: str, path: Path, calls: int) -> None:
        """SIPp's -inf file for a side: a line per agent (or per call), used in order."""
        lines: list[str] = []
        if side in (OMNICC_BEARER, OMNICC_BEARER_CLUSTER):
            lines = [f"{a.extension};{self.kept_token(a.extension)}" for a in self.agents]
        elif side == OMNICC_BEARER_NEW:
            # One token per call, so no REGISTER finds its token in a worker's cache.
            now = time.time()
            lines = [f"{a.extension};{self.token(a.extension, now)}"
                     for a in (self.agents[i % len(self.agents)] for i in range(calls))]
        elif side == OMNICC_EPHEMERAL:
            lines = [digest_line(a.extension, *self.kept_login(a.extension))
                     for a in self.agents]
        else:  # static digest, omnicc's or native
            lines = [digest_line(a.extension, a.extension, a.password) for a in self.agents]
        path.write_text("SEQUENTIAL\n" + "\n".join(lines) + "\n")


def digest_line(extension: str, username: str, password: str) -> str:
    # The whole [authentication] keyword is injected: SIPp 3.6 mangles a scenario's
    # [authentication username=[field1] ...], but expands a keyword that a field holds.
    return f"{extension};[authentication username={username} password={password}]"


def scenario_of(side: str) -> Path:
    name = "register_bearer.xml" if side in BEARER_SIDES else "register_digest.xml"
    return SCENARIO_DIR / name


def requests_per_registration(side: str) -> int:
    """REGISTER transactions per registration: bearer one; digest the challenge too."""
    return 1 if side in BEARER_SIDES else 2


# ---------------------------------------------------------------------------- perf


@contextmanager
def perf_record(pids: Sequence[int], data: Path, log: Path) -> Iterator[None]:
    """Samples the given processes' CPU (every thread, user and kernel) into `data`."""
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not on PATH (Debian package: linux-perf)")
    command = [perf, "record", "-q", "-e", "cpu-clock", "-F", str(PROFILE_FREQUENCY),
               "-p", ",".join(map(str, pids)), "-o", str(data)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    time.sleep(0.5)  # attached to every process before the load starts
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.returncode not in (0, -signal.SIGINT, 130):
        raise SystemExit(f"perf record failed ({process.returncode}):\n{log_tail(log)}")


_PERF_ROW = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")
_PERF_SAMPLES = re.compile(r"^# Samples: (\S+)", re.MULTILINE)


def perf_shares(data: Path) -> tuple[dict[str, float], str]:
    """Each shared object's fraction of the samples (kernel, libpython, the kamailio
    binary, each module...), and perf's sample count as it prints it."""
    perf = shutil.which("perf") or "perf"
    report = subprocess.run(
        [perf, "report", "-i", str(data), "--stdio", "--sort", "dso", "--percent-limit", "0"],
        capture_output=True, text=True, check=False, timeout=300)
    shares: dict[str, float] = {}
    for line in report.stdout.splitlines():
        if line.startswith("#"):
            continue
        row = _PERF_ROW.match(line)
        if row:
            shares[row[2]] = shares.get(row[2], 0.0) + float(row[1]) / 100
    samples = _PERF_SAMPLES.search(report.stdout)
    return shares, samples[1] if samples else "?"


@dataclass
class Profile:
    """One step of a side run again under perf (not counted in the results)."""

    step: StepResult
    shares: dict[str, float]  # of the side's Kamailios' CPU samples, by shared object
    samples: str

    def ms_per_registration(self, dso: str) -> float:
        return self.shares.get(dso, 0.0) * self.step.cpu_ms_per_registration()


# ---------------------------------------------------------------------------- steps


@dataclass
class StepResult:
    side: str
    rate: int  # the target, registrations/s
    attempt: int
    calls: int
    sipp: SippOutcome
    kamailio_cpu: float  # seconds, whole process groups of every Kamailio of the side
    peer_cpu: float  # the part of kamailio_cpu the side's DMQ peer used (0: no peer)
    redis_cpu: float
    other_cpu: float  # processes not of this benchmark, over the same span
    udp_drops: int  # system-wide RcvbufErrors during the step
    redis_commands: int  # commands Redis processed during the step (all clients)
    # The same by command (INFO commandstats); a script's own commands are counted too.
    redis_calls: Counter[str]
    log_problems: Counter[str]
    max_shortfall: float
    # omnicc-bearer-cluster: whether the peer held every agent's latest registration.
    replication: Replication | None = None

    @property
    def log_errors(self) -> int:
        """Lines at ERROR level or worse in the side's Kamailio logs (e.g. a DMQ message
        it could not send): a registration that Kamailio got wrong counts as a failure
        even when SIPp saw 200 OK."""
        return sum(count for problem, count in self.log_problems.items()
                   if problem.split(":", 1)[0] in _ERROR_LEVELS)

    @property
    def achieved(self) -> float:
        return self.sipp.successful / self.sipp.elapsed if self.sipp.elapsed else 0.0

    @property
    def failures(self) -> int:
        # Calls SIPp never finished count as failed too (it was killed or gave up).
        unfinished = self.calls - self.sipp.successful - self.sipp.failed
        return self.sipp.failed + max(0, unfinished)

    @property
    def short(self) -> bool:
        return self.achieved < (1 - self.max_shortfall) * self.rate

    @property
    def passed(self) -> bool:
        return (self.failures == 0 and not self.short and self.sipp.returncode == 0
                and not self.log_errors
                and (self.replication is None or self.replication.complete))

    def core_share(self, seconds: float) -> float:
        return seconds / self.sipp.elapsed if self.sipp.elapsed else 0.0

    @property
    def done(self) -> int:
        return self.sipp.successful + self.sipp.failed

    def redis_commands_per_registration(self) -> float:
        return self.redis_commands / self.done if self.done else float("nan")

    def redis_calls_per_registration(self) -> dict[str, float]:
        """Per command, the ones called at least once per ten registrations (so the
        benchmark's own INFO calls stay out)."""
        if not self.done:
            return {}
        return {name: count / self.done for name, count in self.redis_calls.most_common()
                if count / self.done >= 0.1}

    def cpu_ms_per_registration(self) -> float:
        return 1000 * self.kamailio_cpu / self.done if self.done else float("nan")

    def peer_cpu_ms_per_registration(self) -> float:
        return 1000 * self.peer_cpu / self.done if self.done else float("nan")

    def redis_cpu_ms_per_registration(self) -> float:
        return 1000 * self.redis_cpu / self.done if self.done else float("nan")

    def cpu_ceiling(self) -> float:
        """Registrations/s this machine could do if nothing else ran on it: its CPUs over
        the CPU one registration costs Kamailio, Redis and SIPp together."""
        spent = self.kamailio_cpu + self.redis_cpu + self.sipp.cpu
        return len(os.sched_getaffinity(0)) * self.done / spent if spent else float("nan")

    def latency(self, pct: float) -> float:
        return percentile(self.sipp.latencies_ms, pct)

    def why_not(self) -> str:
        reasons = []
        if self.failures:
            reasons.append(f"{self.failures} failed")
        if self.short:
            reasons.append(f"achieved {self.achieved:.0f}/s")
        if self.sipp.returncode not in (0, 1) or (self.sipp.returncode and not self.failures):
            reasons.append(f"sipp exit {self.sipp.returncode}")
        if self.log_errors:
            reasons.append(f"{self.log_errors} Kamailio errors")
        if self.replication is not None and not self.replication.complete:
            reasons.append(f"peer had {self.replication.same} of {self.replication.agents} "
                           "latest registrations")
        return ", ".join(reasons)


def format_ms(value: float) -> str:
    """SIPp times registrations in whole milliseconds: 0 means under one."""
    if value != value:  # NaN: no sample
        return "-"
    return "<1" if value < 1 else f"{value:.0f}"



@dataclass
class Bench:
    workdir: Path
    redis_server: Server
    # By side: the Kamailio SIPp sends to, then any DMQ peer of it (its CPU counts too).
    kamailios: dict[str, tuple[Server, ...]]
    credentials: Credentials
    max_shortfall: float
    steps_run: int = 0
    watches: dict[str, LogWatch] = field(default_factory=dict)
    sipp_ports: dict[str, int] = field(default_factory=dict)

    def sipp_port(self, kamailio: Server) -> int:
        """SIPp's port towards a Kamailio: the same in every step and for every side that
        Kamailio serves, so each agent keeps one contact, as a phone re-registering does
        (a new port would add a binding per step, and a lost update of an old one would
        never be repaired; a port per side would change every agent's contact when the
        next side starts, and each worker would publish it again with a round trip)."""
        port = self.sipp_ports.get(kamailio.name)
        if port is None or not udp_port_free(port):
            port = self.sipp_ports[kamailio.name] = free_ports(1)[0]
        return port

    def redis_commands(self) -> tuple[int, Counter[str]]:
        """Commands Redis has processed, in all and by command."""
        with redis.Redis(host=HOST, port=self.redis_server.port) as client:
            total = int(client.info("stats")["total_commands_processed"])
            by_command = Counter({name.removeprefix("cmdstat_"): int(stats["calls"])
                                  for name, stats in client.info("commandstats").items()})
        return total, by_command

    def own_cpu_seconds(self) -> float:
        """This process, Redis and every Kamailio of the benchmark (idle ones included)."""
        return (time.process_time() + cpu_seconds(self.redis_server.pgid)
                + sum(group_cpu_seconds(pgid) for pgid in {
                    server.pgid for servers in self.kamailios.values() for server in servers}))

    def idle_cores(self, seconds: float = IDLE_SECONDS) -> dict[str, float]:
        """CPU each Kamailio uses with no traffic (timers, DMQ pings), in cores."""
        servers = {server.name: server for servers in self.kamailios.values()
                   for server in servers}
        before = {name: group_cpu_seconds(s.pgid) for name, s in servers.items()}
        time.sleep(seconds)
        return {name: (group_cpu_seconds(s.pgid) - before[name]) / seconds
                for name, s in servers.items()}

    def profile_step(self, side: str, rate: int, seconds: float) -> Profile:
        """A step with every process of the side's Kamailios under perf record."""
        pids = [pid for server in self.kamailios[side] for pid in group_pids(server.pgid)]
        data = self.workdir / f"perf-{side}.data"
        with perf_record(pids, data, self.workdir / f"perf-{side}.log"):
            step = self.run_step(side, rate, seconds)
        shares, samples = perf_shares(data)
        data.unlink(missing_ok=True)
        return Profile(step, shares, samples)

    def run_step(self, side: str, rate: int, seconds: float, attempt: int = 1) -> StepResult:
        self.steps_run += 1
        calls = max(1, round(rate * seconds))
        kamailios = self.kamailios[side]
        entry = kamailios[0]
        directory = self.workdir / "steps" / f"{self.steps_run:03d}-{side}-{rate}"
        injection = self.workdir / f"{side}.csv"
        self.credentials.write_injection(side, injection, calls)
        watches = [self.watches.setdefault(k.log.as_posix(), LogWatch(k.log))
                   for k in kamailios]
        for watch in watches:
            watch.new_lines()
        local_port = self.sipp_port(entry)
        before_kamailio = [group_cpu_seconds(k.pgid) for k in kamailios]
        before_redis = cpu_seconds(self.redis_server.pgid)
        before_ours = self.own_cpu_seconds()
        before_busy = process_busy_seconds()
        before_drops = udp_receive_errors()
        before_commands, before_calls = self.redis_commands()
        outcome = run_sipp(directory, port=entry.port, scenario=scenario_of(side),
                           injection=injection, rate=rate, calls=calls, local_port=local_port)
        kamailio_cpu = [group_cpu_seconds(k.pgid) - before
                        for k, before in zip(kamailios, before_kamailio, strict=True)]
        redis_cpu = cpu_seconds(self.redis_server.pgid) - before_redis
        ours = self.own_cpu_seconds() - before_ours + outcome.cpu
        other = max(0.0, process_busy_seconds() - before_busy - ours)
        after_commands, after_calls = self.redis_commands()
        replication = (check_replication(kamailios[0], kamailios[1], self.credentials.agents)
                       if len(kamailios) > 1 else None)
        return StepResult(
            side=side, rate=rate, attempt=attempt, calls=calls, sipp=outcome,
            kamailio_cpu=sum(kamailio_cpu), peer_cpu=sum(kamailio_cpu[1:]),
            redis_cpu=redis_cpu, other_cpu=other,
            udp_drops=udp_receive_errors() - before_drops,
            redis_commands=after_commands - before_commands,
            redis_calls=after_calls - before_calls,
            log_problems=kamailio_log_problems(
                [line for watch in watches for line in watch.new_lines()]),
            max_shortfall=self.max_shortfall,
            replication=replication,
        )


def format_redis_calls(step: StepResult) -> str:
    calls = step.redis_calls_per_registration()
    return ", ".join(f"{name} {count:.2f}" for name, count in calls.items()) or "none"


def describe_step(step: StepResult) -> str:
    text = (
        f"{step.sipp.successful}/{step.calls} in {step.sipp.elapsed:.1f} s = "
        f"{step.achieved:.0f}/s, p50 {format_ms(step.latency(50))} ms, "
        f"p99 {format_ms(step.latency(99))} ms, "
        f"kamailio {100 * step.core_share(step.kamailio_cpu):.0f}% "
        f"({step.cpu_ms_per_registration():.2f} ms/reg"
        + (f", peer {step.peer_cpu_ms_per_registration():.2f}" if step.peer_cpu else "")
        + "), "
        f"redis {100 * step.core_share(step.redis_cpu):.0f}%, "
        f"sipp {100 * step.core_share(step.sipp.cpu):.0f}%, "
        f"redis commands/reg {step.redis_commands_per_registration():.1f} "
        f"({format_redis_calls(step)}), "
        f"other {100 * step.core_share(step.other_cpu):.0f}%, "
        f"retrans {step.sipp.retransmissions}"
    )
    if step.udp_drops:
        text += f", UDP drops {step.udp_drops}"
    return text + ("" if step.passed else f"  -> STOP ({step.why_not()})")


def print_step_problems(step: StepResult) -> None:
    if step.sipp.failure_kinds:
        print("      sipp failures: " + ", ".join(
            f"{count} {kind}" for kind, count in step.sipp.failure_kinds.most_common()))
    for problem, count in step.sipp.errors.most_common(3):
        print(f"      sipp x{count}: {problem}")
    for problem, count in step.log_problems.most_common(5):
        print(f"      kamailio log x{count}: {problem}")


# ---------------------------------------------------------------------------- results


@dataclass
class SideResult:
    side: str
    steps: list[StepResult]

    def _by_rate(self) -> list[list[StepResult]]:
        rates = sorted({step.rate for step in self.steps})
        return [[step for step in self.steps if step.rate == rate] for rate in rates]

    @property
    def best(self) -> StepResult | None:
        """The passed attempt of the highest rate passed before the first rate that no
        attempt passed."""
        best = None
        for attempts in self._by_rate():
            passed = next((step for step in attempts if step.passed), None)
            if passed is None:
                break
            best = passed
        return best

    @property
    def stopped_by(self) -> StepResult | None:
        """The last failed attempt at the rate that ended this side, if one did."""
        for attempts in self._by_rate():
            if not any(step.passed for step in attempts):
                return attempts[-1]
        return None

    @property
    def max_rate(self) -> int:
        best = self.best
        return best.rate if best else 0

    @property
    def log_problems(self) -> Counter[str]:
        return sum((step.log_problems for step in self.steps), Counter())


def ratio(results: dict[str, SideResult], side: str, baseline: str) -> float | None:
    if side not in results or baseline not in results or not results[baseline].max_rate:
        return None
    return results[side].max_rate / results[baseline].max_rate


def print_summary(results: dict[str, SideResult], rates: Sequence[int]) -> None:
    header = (f"{'side':22} {'max reg/s':>9} {'REGISTER/s':>10} {'kam CPU':>8} "
              f"{'ms/reg':>7} {'p50 ms':>7} {'p99 ms':>7} {'vs native':>9}  stopped by")
    print("\nResults (highest step passed with zero failures; CPU at that step):")
    print(header)
    print("-" * len(header))
    for side, result in results.items():
        best = result.best
        stop = result.stopped_by
        stopped = (f"{stop.rate}/s: {stop.why_not()}" if stop
                   else f"passed every step up to {rates[-1]}/s")
        versus = (format_ratio(ratio(results, side, BASELINE), baseline_unbounded(results))
                  if side in OMNICC_SIDES else "")
        if best is None:
            print(f"{side:22} {'<' + str(rates[0]):>9} {'-':>10} {'':>8} {'':>7} {'':>7} "
                  f"{'':>7} {versus:>9}  {stopped}")
            continue
        print(f"{side:22} {best.rate:>9} {best.rate * requests_per_registration(side):>10} "
              f"{100 * best.core_share(best.kamailio_cpu):>7.0f}% "
              f"{best.cpu_ms_per_registration():>7.2f} {format_ms(best.latency(50)):>7} "
              f"{format_ms(best.latency(99)):>7} {versus:>9}  {stopped}")


def format_ratio(value: float | None, upper_bound: bool = False) -> str:
    """A ratio against the baseline; "≤" when the baseline passed every step, so that its
    limit, the ratio's denominator, is only known to be higher than its figure."""
    if value is None:
        return "-"
    return ("≤" if upper_bound else "") + f"{value:.2f}"


def baseline_unbounded(results: dict[str, SideResult]) -> bool:
    baseline = results.get(BASELINE)
    return baseline is not None and bool(baseline.steps) and baseline.stopped_by is None


# ---------------------------------------------------------------------------- the doc


def machine_facts(revision: str) -> dict[str, str]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = "not Debian"

    def version_of(command: list[str], pattern: str) -> str:
        try:
            output = subprocess.run(command, capture_output=True, text=True,
                                    check=False, timeout=10)
        except OSError:
            return "?"
        found = re.search(pattern, output.stdout + output.stderr)
        return found.group(1) if found else "?"

    return {
        "omnicc commit": revision,
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": cpu_model,
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "OS": f"Debian {debian}, Linux {platform.release()}",
        "Kamailio": version_of(["kamailio", "-v"], r"kamailio (\S+)"),
        "SIPp": version_of(["sipp", "-v"], r"SIPp (v[\w.-]+?)\.?\s"),
        "redis-server": version_of(["redis-server", "--version"], r"v=(\S+)"),
        "Python (in Kamailio and the bench)": platform.python_version(),
    }


def omnicc_revision() -> str:
    """The commit measured, and whether the code Kamailio runs had uncommitted changes."""
    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=REPO_ROOT, capture_output=True,
                                  text=True, check=False, timeout=10).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("diff", "HEAD", "--name-only", "--", "kemi", "omnicc", "kamailio.cfg.j2")
    files = ", ".join(changed.split())
    return commit + (f" (with uncommitted changes in {files})" if files else "")


def other_load_note(results: dict[str, SideResult]) -> str:
    steps = [step for result in results.values() for step in result.steps]
    cpus = len(os.sched_getaffinity(0))
    shares = [step.core_share(step.other_cpu) / cpus for step in steps if step.sipp.elapsed]
    if not shares:
        return ""
    return (f"Other processes on the machine (not part of this benchmark) used "
            f"{100 * statistics.mean(shares):.0f}% of its CPU on average during the steps "
            f"(up to {100 * max(shares):.0f}% in one step).")


def summary_table(results: dict[str, SideResult], rates: Sequence[int]) -> list[str]:
    rate = common_rate(results)
    out = [
        "| side | what | registrations/s (highest step at zero failures) | REGISTER requests/s "
        "| Kamailio CPU at that step: cores / ms per registration | p50 / p99 ms "
        f"| omnicc / {BASELINE} | stopped at "
        f"| Kamailio CPU ms/registration at {rate}/s "
        f"| Redis CPU ms/registration at {rate}/s "
        f"| Redis commands/registration at {rate}/s "
        f"| CPU ceiling at {rate}/s (registrations/s) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for side, result in results.items():
        at_common = step_at(result, rate) if rate is not None else None
        costs = ("| - | - | - | - |" if at_common is None else
                 f"| {format_cpu_ms(at_common)} "
                 f"| {at_common.redis_cpu_ms_per_registration():.3f} "
                 f"| {format_redis_calls(at_common)} | {at_common.cpu_ceiling():.0f} |")
        best = result.best
        stop = result.stopped_by
        next_step = (f"{stop.rate}/s: {stop.why_not()}" if stop
                     else f"none (passed every step up to {rates[-1]}/s)")
        versus = (format_ratio(ratio(results, side, BASELINE), baseline_unbounded(results))
                  if side in OMNICC_SIDES else "")
        if best is None:
            out.append(f"| {side} | {SIDE_DESCRIPTIONS[side]} | below {rates[0]} | - | - "
                       f"| - | {versus} | {next_step} {costs}")
            continue
        out.append(
            f"| {side} | {SIDE_DESCRIPTIONS[side]} | **{best.rate}** "
            f"| {best.rate * requests_per_registration(side)} "
            f"| {format_cores_and_ms(best)} "
            f"| {format_ms(best.latency(50))} / {format_ms(best.latency(99))} "
            f"| {versus} | {next_step} {costs}")
    return out


def format_cpu_ms(step: StepResult) -> str:
    """Kamailio CPU per registration; for a side with a DMQ peer, the peer's part too."""
    text = f"{step.cpu_ms_per_registration():.3f}"
    if step.peer_cpu:
        text += f" (peer {step.peer_cpu_ms_per_registration():.3f})"
    return text


def format_cores(step: StepResult) -> str:
    text = f"{step.core_share(step.kamailio_cpu):.2f}"
    if step.peer_cpu:
        text += f" (peer {step.core_share(step.peer_cpu):.2f})"
    return text


def format_cores_and_ms(step: StepResult) -> str:
    text = f"{step.core_share(step.kamailio_cpu):.2f} / {step.cpu_ms_per_registration():.3f}"
    if step.peer_cpu:
        text += (f" (peer {step.core_share(step.peer_cpu):.2f} / "
                 f"{step.peer_cpu_ms_per_registration():.3f})")
    return text


def steps_table(results: dict[str, SideResult]) -> list[str]:
    out = [
        "| side | target/s | attempt | registrations | failed | achieved/s | p50 ms | p99 ms "
        "| retransmissions | UDP drops | Kamailio CPU (cores) | Redis CPU (cores) "
        "| SIPp CPU (cores) | other processes (cores) | passed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for side, result in results.items():
        for step in result.steps:
            out.append(
                f"| {side} | {step.rate} | {step.attempt} | {step.sipp.successful} "
                f"| {step.failures} | {step.achieved:.0f} | {format_ms(step.latency(50))} "
                f"| {format_ms(step.latency(99))} | {step.sipp.retransmissions} "
                f"| {step.udp_drops} | {format_cores(step)} "
                f"| {step.core_share(step.redis_cpu):.2f} | {step.core_share(step.sipp.cpu):.2f} "
                f"| {step.core_share(step.other_cpu):.2f} "
                f"| {'yes' if step.passed else 'no: ' + step.why_not()} |")
    return out


def problems_section(results: dict[str, SideResult]) -> list[str]:
    out: list[str] = []
    for side, result in results.items():
        lines: list[str] = []
        for step in result.steps:
            if step.sipp.failure_kinds:
                kinds = ", ".join(f"{count} {kind}"
                                  for kind, count in step.sipp.failure_kinds.most_common())
                lines.append(f"  - at {step.rate}/s (attempt {step.attempt}): SIPp failed "
                             f"{step.failures} call(s): {kinds}")
            for problem, count in step.sipp.errors.most_common(2):
                lines.append(f"    - SIPp's error log, {count} x: `{problem}`")
        for problem, count in result.log_problems.most_common(5):
            lines.append(f"  - {count} x Kamailio log (all steps): `{problem}`")
        if lines:
            out += [f"- {side}:", *lines]
    return ["", "### Failures and log problems", "", *out] if out else []


def verdict_sentences(results: dict[str, SideResult],
                      replication: Replication | None = None) -> list[str]:
    sentences: list[str] = []
    common = common_rate(results)
    baseline = results.get(BASELINE)
    baseline_step = step_at(baseline, common) if baseline and common is not None else None
    for side in OMNICC_SIDES:
        if side not in results:
            continue
        rate = results[side].max_rate
        parts = [f"**{side}**: {rate} registrations/s "
                 f"({'meets' if rate >= TARGET_RATE else 'misses'} the "
                 f"{TARGET_RATE}/s target)"]
        value = ratio(results, side, BASELINE)
        if value is not None and value < TARGET_RATIO:
            parts.append(f"{format_ratio(value, baseline_unbounded(results))} x {BASELINE} "
                         f"(misses the {TARGET_RATIO} target)")
        elif value is not None and baseline_unbounded(results):
            parts.append(f"at most {value:.2f} x {BASELINE} (whether it meets the "
                         f"{TARGET_RATIO} target is not shown: {BASELINE}'s limit is above "
                         "the highest step)")
        elif value is not None:
            parts.append(f"{value:.2f} x {BASELINE} (meets the {TARGET_RATIO} target)")
        at_common = step_at(results[side], common) if common is not None else None
        if baseline_step is not None and at_common is not None:
            times = at_common.cpu_ms_per_registration() / baseline_step.cpu_ms_per_registration()
            parts.append(f"and at {common}/s one registration took {times:.1f} x the "
                         f"Kamailio CPU of one on {BASELINE}")
        sentences.append(", ".join(parts) + ".")
    if baseline is not None and baseline.steps and baseline.stopped_by is None:
        sentences.append(f"{BASELINE} passed every step, so its limit is higher than its "
                         "figure here and the ratios against it are upper bounds.")
    if replication is not None:
        sentences.append(f"{OMNICC_BEARER_CLUSTER}, after the run: {replication.describe()}.")
    return sentences


def common_rate(results: dict[str, SideResult]) -> int | None:
    """The highest rate every side passed: where their costs compare at equal load."""
    rates = [result.max_rate for result in results.values()]
    return min(rates) if rates and min(rates) else None


def step_at(result: SideResult, rate: int) -> StepResult | None:
    return next((s for s in result.steps if s.rate == rate and s.passed), None)


def cost_sentences(costs: dict[str, StepResult | None]) -> list[str]:
    """Where omnicc's CPU per registration goes, from the differences between sides that
    differ in one thing each."""
    ms = {side: step.cpu_ms_per_registration() for side, step in costs.items() if step}
    out = []
    native, digest, bearer = ms.get(NATIVE_MEMORY), ms.get(OMNICC_DIGEST), ms.get(OMNICC_BEARER)
    if native is not None and digest is not None:
        out.append(
            f"A digest registration is two REGISTER transactions (the challenge, then the "
            f"authenticated one). {NATIVE_MEMORY} does both in native cfg script: "
            f"{native:.3f} ms. {OMNICC_DIGEST} does the same two through the KEMI Python "
            f"route, plus the admission on the authenticated one (for these agents, admitted "
            f"before, the reachability refresh queued for the flusher, whose process is one "
            f"of the Kamailio's): {digest:.3f} ms, "
            f"{digest / native:.1f} x.")
    if digest is not None and bearer is not None:
        out.append(
            f"{OMNICC_BEARER} is one transaction, with its token found in the worker's cache "
            f"and the same admission: {bearer:.3f} ms; digest's challenge transaction "
            f"(which makes no Redis call) and its digest check add {digest - bearer:+.3f} "
            "ms.")
    if bearer is not None and OMNICC_BEARER_NEW in ms:
        out.append(f"A token never seen before adds its EdDSA signature check: "
                   f"{OMNICC_BEARER_NEW} {ms[OMNICC_BEARER_NEW]:.3f} ms, "
                   f"{ms[OMNICC_BEARER_NEW] - bearer:+.3f} ms.")
    if digest is not None and OMNICC_EPHEMERAL in ms:
        out.append(f"Ephemeral credentials add the HMAC of the username: {OMNICC_EPHEMERAL} "
                   f"{ms[OMNICC_EPHEMERAL]:.3f} ms, {ms[OMNICC_EPHEMERAL] - digest:+.3f} ms "
                   f"over static passwords.")
    cluster = costs.get(OMNICC_BEARER_CLUSTER)
    if bearer is not None and cluster is not None:
        out.append(
            f"Replicating each registration to one DMQ peer: {OMNICC_BEARER_CLUSTER} "
            f"{ms[OMNICC_BEARER_CLUSTER]:.3f} ms for both Kamailios together, "
            f"{ms[OMNICC_BEARER_CLUSTER] - bearer:+.3f} ms over {OMNICC_BEARER}, of which the "
            f"peer (receiving the KDMQ request in the KEMI route, dmq_usrloc saving the "
            f"contact) {cluster.peer_cpu_ms_per_registration():.3f} ms and the rest the node "
            "that took the registration (sending the KDMQ request through tm, and its reply).")
    omnicc_steps = [step for side, step in costs.items() if side in OMNICC_SIDES and step]
    if omnicc_steps:
        evalsha = [step.redis_calls_per_registration().get("evalsha", 0.0)
                   + step.redis_calls_per_registration().get("eval", 0.0)
                   for step in omnicc_steps]
        sets = [step.redis_calls_per_registration().get("set", 0.0) for step in omnicc_steps]
        redis_ms = [step.redis_cpu_ms_per_registration() for step in omnicc_steps]
        out.append(
            f"The Redis commands column shows what omnicc sends: {span(evalsha, 2)} script "
            "calls (EVALSHA: the admission's round trip, when a worker meets an agent it has "
            "not admitted or a contact it has not published, and the flusher's write of a "
            "queued refresh, one each, pipelined) and "
            f"{span(sets, 2)} SETs per registration on the omnicc sides (each script call "
            "writes the agent's reachability key; nothing is written when the same worker "
            "published the same contact with an expiry within a second of the new one less "
            "than a second before), and Redis spent "
            f"{span(redis_ms, 3)} ms of its own CPU per registration. What sending costs "
            "inside Kamailio (the lean client's system calls) is part of the Kamailio "
            "figures above: process CPU does not separate it from the Python route's other "
            "work.")
    return out


def profile_rows(profiles: dict[str, Profile]) -> list[str]:
    """The shared objects worth a row: at least PROFILE_MIN_SHARE of some side's CPU."""
    totals: Counter[str] = Counter()
    for profile in profiles.values():
        totals.update(profile.shares)
    return [dso for dso, _ in totals.most_common()
            if any(p.shares.get(dso, 0.0) >= PROFILE_MIN_SHARE for p in profiles.values())]


def profile_section(profiles: dict[str, Profile], rate: int) -> list[str]:
    if not profiles:
        return []
    sides = list(profiles)
    rows = profile_rows(profiles)
    out = [
        f"### Where Kamailio's CPU goes (perf, at {rate}/s)",
        "",
        f"After the steps each side ran once more at {rate}/s for the same length with every "
        f"process of its Kamailio(s) under `perf record -e cpu-clock -F {PROFILE_FREQUENCY}` "
        "(user and kernel, not counted in the results above). Each cell: the share of the "
        "side's Kamailio CPU samples in that shared object, and what that is in ms per "
        "registration (the share times the step's Kamailio CPU per registration). "
        "`[kernel.kallsyms]` is the kernel on the Kamailios' behalf (UDP in and out, the "
        "Redis socket, scheduling); `kamailio` the core binary; the `.so` names are "
        "Kamailio's modules and the libraries they load (libpython for the KEMI script).",
        "",
        "| shared object | " + " | ".join(sides) + " |",
        "|---|" + "---:|" * len(sides),
    ]
    for dso in rows:
        cells = [f"{100 * profiles[s].shares.get(dso, 0.0):.0f}% / "
                 f"{profiles[s].ms_per_registration(dso):.3f}" for s in sides]
        out.append(f"| {dso} | " + " | ".join(cells) + " |")
    other = [1.0 - sum(profiles[s].shares.get(dso, 0.0) for dso in rows) for s in sides]
    out.append("| everything else | " + " | ".join(
        f"{100 * max(0.0, share):.0f}% / "
        f"{max(0.0, share) * profiles[s].step.cpu_ms_per_registration():.3f}"
        for s, share in zip(sides, other, strict=True)) + " |")
    out.append("| **Kamailio CPU, ms per registration** | " + " | ".join(
        f"**{profiles[s].step.cpu_ms_per_registration():.3f}**" for s in sides) + " |")
    out.append("| samples; step passed | " + " | ".join(
        f"{profiles[s].samples}; {'yes' if profiles[s].step.passed else 'no'}"
        for s in sides) + " |")
    out += ["", *profile_sentences(profiles), ""]
    return out


PROFILE_PARTS = (
    ("Python (libpython, app_python3)", lambda dso: "python" in dso.lower()),
    ("the kamailio binary", lambda dso: dso == "kamailio"),
    ("the kernel", lambda dso: dso == "[kernel.kallsyms]"),
    ("libcrypto", lambda dso: dso.startswith("libcrypto")),
)


def profile_parts(profile: Profile) -> dict[str, float]:
    """ms per registration by part (PROFILE_PARTS, then everything else)."""
    parts = {name: sum(profile.ms_per_registration(dso) for dso in profile.shares
                       if belongs(dso)) for name, belongs in PROFILE_PARTS}
    parts["everything else"] = profile.step.cpu_ms_per_registration() - sum(parts.values())
    return parts


def profile_sentences(profiles: dict[str, Profile]) -> list[str]:
    """omnicc's extra Kamailio CPU over native, by part, from the profiles."""
    native = profiles.get(NATIVE_MEMORY)
    if native is None:
        return []
    native_parts = profile_parts(native)
    native_total = native.step.cpu_ms_per_registration()
    out = []
    for side in (OMNICC_BEARER, OMNICC_DIGEST):
        profile = profiles.get(side)
        if profile is None:
            continue
        total = profile.step.cpu_ms_per_registration()
        extra = {name: ms - native_parts[name] for name, ms in profile_parts(profile).items()}
        listed = ", ".join(f"{name} {ms:+.3f}" for name, ms in sorted(
            extra.items(), key=lambda item: -item[1]) if abs(ms) >= 0.0005)
        transactions = ("one SIP transaction against native's two" if side in BEARER_SIDES
                        else "the same two SIP transactions as native")
        out.append(f"- {side} ({transactions}): {total:.3f} ms of Kamailio CPU per "
                   f"registration against {native_total:.3f} on {NATIVE_MEMORY}, "
                   f"{total - native_total:+.3f} ms: {listed}.")
    if out:
        out.append(
            "- Python is the interpreter running the KEMI route on every request. The "
            "kamailio binary's extra is the core's side of the KEMI calls the script makes "
            "(each `KSR.pv.get`, header and transaction function goes through it). The "
            "kernel's extra is mostly the Redis SETs the registrations send (how many: "
            "the Redis commands of the step), as the SIP packets are the same or fewer: "
            "each wakes Redis, which on 2 CPUs often takes the "
            "CPU (an earlier call-graph profile, `perf record --call-graph dwarf`, not part "
            "of this script, put the omnicc worker's extra context switches in the lean "
            "client's send). libcrypto is the EdDSA verification of a token not yet "
            "in the worker's cache. In both, a large part of the kamailio binary's time is "
            "its own pkg-memory allocator (qm_malloc: about a third of native's CPU in the "
            "same call-graph profile), which omnicc and native pay alike.")
    return out


def span(values: Sequence[float], decimals: int) -> str:
    low, high = f"{min(values):.{decimals}f}", f"{max(values):.{decimals}f}"
    return low if low == high else f"{low} to {high}"


def interpretation(results: dict[str, SideResult], idle: dict[str, float]) -> str:
    sentences = []
    rate = common_rate(results)
    if rate is not None:
        costs = {side: step_at(result, rate) for side, result in results.items()}
        listed = ", ".join(f"{side} {step.cpu_ms_per_registration():.3f} ms"
                           for side, step in costs.items() if step is not None)
        sentences.append(f"At {rate}/s, which every side passed, one registration cost this "
                         f"much Kamailio CPU (all its processes): {listed}.")
        sentences += cost_sentences(costs)
        ceilings = {side: step.cpu_ceiling() for side, step in costs.items() if step}
        if ceilings:
            cpus = len(os.sched_getaffinity(0))
            listed = ", ".join(f"{side} {value:.0f}/s" for side, value in ceilings.items())
            sentences.append(
                f"On CPU alone ({cpus} CPUs over what one registration cost Kamailio, Redis "
                f"and SIPp together at {rate}/s, with nothing else running) this machine "
                f"could do about: {listed}. These are pessimistic: a registration costs "
                "less CPU the busier the Kamailio (compare each side's ms/registration at "
                "its highest step with the figures above)."
                + (f" Not because of timers: idle, before the warm-up, the Kamailios used "
                   f"at most {max(idle.values()):.3f} of a core each. Presumably it is "
                   "per-request overhead a busy worker pays less of (at a low rate each "
                   "request wakes a sleeping worker, at a high one the next is often "
                   "already waiting)." if idle else "")
                + " "
                f"{TARGET_RATE}/s leaves {1000 * cpus / TARGET_RATE:.1f} ms of CPU per "
                "registration for Kamailio, Redis and SIPp together.")
    failed = [result.stopped_by for result in results.values() if result.stopped_by]
    for step in failed:
        shm = sum(count for problem, count in step.log_problems.items()
                  if "shared memory" in problem or "shmem" in problem)
        dmq = sum(count for problem, count in step.log_problems.items()
                  if "error sending dmq message" in problem)
        if shm:
            sentences.append(
                f"{step.side} stopped at {step.rate}/s with its Kamailio out of shared "
                f"memory ({shm} allocation errors in tm in the step; omnicc starts Kamailio "
                f"with -m {KAMAILIO_SHM_MB})"
                + (f": {dmq} KDMQ messages, each a registration to replicate, were never "
                   "sent, so the peer missed those registrations while SIPp saw 200 OK"
                   if dmq else "") + ".")
        if (step.replication is not None and not step.replication.complete
                and not shm and not step.log_errors):
            sentences.append(
                f"{step.side} stopped at {step.rate}/s because after the step the peer held "
                f"an older registration (an earlier Call-ID) than the node that took it for "
                f"{step.replication.agents - step.replication.same} agents, and had not "
                f"caught up {REPLICATION_WAIT_SECONDS:g} s later, with no error logged"
                + (f"; the step had {step.udp_drops} UDP drops, so presumably a "
                   "retransmitted replication message overtook a newer one (not verified)"
                   if step.udp_drops else "") + ".")
    dropping = [step for step in failed if step.udp_drops]
    if dropping:
        sentences.append(
            "Where a side failed, the kernel had dropped requests from full UDP receive "
            "buffers (the UDP drops column, a system-wide counter): a Kamailio (or SIPp) "
            "had fallen behind, SIPp retransmitted after 500 ms, and registrations that "
            "waited too long failed or the achieved rate fell short.")
    bests = [r.best for r in results.values() if r.best is not None]
    top = max(bests, key=lambda step: step.rate) if bests else None
    if top is not None and top.core_share(top.sipp.cpu) >= 0.25:
        sentences.append(
            "SIPp, Redis and the Kamailios share the machine: at the highest step any side "
            f"passed ({top.side}, {top.rate}/s) SIPp itself used "
            f"{top.core_share(top.sipp.cpu):.2f} of a core, so the highest figures are also "
            "bounded by the load generator.")
    return " ".join(sentences)


def refresh_frequency(agents: int) -> str:
    """How often one agent registers at the rates that matter, in words."""
    if agents >= 5000:
        return ("registering about once a second at 10000/s and less often below, is "
                "rare: nearly every refresh is written, as a real phone's is")
    return ("registering many times a second, is most of the time (a phone refreshing "
            "every few minutes is written every time: run with more --agents)")


def doc_section(results: dict[str, SideResult], registered: int | None,
                replication: Replication | None, idle: dict[str, float],
                profiles: dict[str, Profile], args: argparse.Namespace, command: str,
                when: str, revision: str) -> str:
    after_run = ""
    if registered is not None:
        after_run += (f" After the run Redis held the ACD's reachability key of {registered} "
                      f"of the {args.agents} agents.")
    if replication is not None:
        after_run += f" For {OMNICC_BEARER_CLUSTER}, {replication.describe()} (RPC ul.dump)."
    out = [
        DOC_BEGIN,
        "## Authenticated REGISTER/s: omnicc vs a native kamailio.cfg (`bench/register_auth.py`)",
        "",
        f"{args.agents} agents ({FIRST_EXTENSION}..{FIRST_EXTENSION + args.agents - 1}) "
        "re-register over and over through a real Kamailio, driven by one SIPp on loopback "
        "with an injection file (a line per agent, or per call for `omnicc-bearer-new`). "
        "omnicc's Kamailio is the one `omnicc.stack` starts (kamailio.cfg.j2 + "
        "kemi/omnicc_kemi.py): usrloc in memory (db_mode 0); the per-IP flood and "
        "authentication-failure counters in Kamailio htables, so screening a request makes "
        "no Redis call; and the admission of each authenticated request, "
        "`agent_auth.ADMIT_LUA` over `omnicc/lean_redis.py`'s TrackedAdmission (is the "
        "agent disabled or the token revoked, and for a REGISTER the agent's reachability "
        "key for the ACD): a round trip the first time a worker meets an agent, after "
        "which the worker remembers the answer and Redis invalidates it (CLIENT TRACKING) "
        "the moment either flag is set, so a refreshing REGISTER of the contact the "
        "worker published makes no round trip: the refresh is queued in Kamailio's shared "
        "memory (mqueue) and a flusher process (rtimer) writes the queue to Redis every "
        "20 ms, one pipelined round trip for all (write-back); nothing is written when "
        "the same worker published the same contact, expiring within a second of the new "
        "expiry, less than a second before, which with "
        f"{args.agents} agents {refresh_frequency(args.agents)}. "
        f"`{OMNICC_BEARER}`, `{OMNICC_DIGEST}` and `{OMNICC_EPHEMERAL}` share one such "
        f"Kamailio, without DMQ peers; `{OMNICC_BEARER_NEW}` has one of its own (its "
        "once-seen tokens would fill the others' caches). "
        f"`{OMNICC_BEARER_CLUSTER}` runs two more (nodes bench-cluster-a and bench-cluster-b "
        "on two loopback ports, `kamailio_nodes` listing both, the same Redis and keys): "
        "SIPp registers through a, which replicates every registration to b over DMQ "
        "(dmq_usrloc), and the CPU of both Kamailios counts. The native side is "
        "`bench/native_register_auth.cfg.j2`: no Python, digest with `pv_auth_check` against "
        "passwords in an htable, then `save(\"location\")` with usrloc in memory (db_mode 0): "
        f"the plain native kamailio.cfg the issue names, and the baseline of every ratio. "
        f"Same Kamailio binary, {CHILDREN} UDP workers each, the same memory sizes, one "
        "redis-server of the benchmark's own (no persistence). omnicc's config raises "
        "`security.flood_requests` to 1,000,000: all the load comes from 127.0.0.1, which "
        "the default limit (200 requests in 2 s) would ban; the flood counter still runs on "
        "every request.",
        "",
        "A registration is one SIPp call ending in 200 OK: for digest that is REGISTER, 401, "
        "REGISTER with credentials, 200 (two REGISTER requests, one of them authenticated; "
        "a 401 instead of the 200 is answered again with its new nonce, as RFC 7616 3.3 has "
        "a phone answer a stale=true challenge: omnicc counts nonce uses, so the copy of an "
        "authenticated REGISTER that SIPp retransmits when its 200 OK was lost is a replay "
        "to it, where native, without nonce counting, authenticates the copy again), "
        "for bearer one REGISTER carrying the token; the targets count registrations (one "
        "authenticated REGISTER each), the REGISTER requests/s column both kinds. Each side "
        f"steps its rate up ({', '.join(map(str, args.rates))}/s, {args.seconds:g} s per "
        "step, sides interleaved per step) and stops at the first rate with a failed call or "
        f"an achieved rate more than {100 * args.max_shortfall:g}% below the target in "
        f"each of {args.attempts} attempt(s) (the machine is shared with other jobs, so a "
        "failing step is run again before the side stops); its result is the highest rate "
        "it passed. A step also fails if an ERROR (or worse) appears in the side's "
        "Kamailio logs during it, and for the cluster if, after it, the peer does not hold "
        "every agent's latest registration (same contacts and Call-ID as the node SIPp "
        f"registered through, RPC ul.dump) within {REPLICATION_WAIT_SECONDS:g} s: a "
        "registration Kamailio answered 200 but did not replicate is not a success. "
        "p50/p99: first REGISTER sent to 200 received, as SIPp times it (whole "
        "milliseconds). Redis commands per registration: from INFO commandstats over all "
        "Redis clients, commands run by a Lua script included (so one EVALSHA round trip "
        "shows as evalsha and the script's exists and set)." + after_run,
        "",
        f"Run {when}. Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine_facts(revision).items()),
        "",
        "SIPp, Redis and the Kamailios share these CPUs. " + other_load_note(results),
        "",
        "### Summary",
        "",
        *summary_table(results, args.rates),
        "",
        *(f"- {sentence}" for sentence in verdict_sentences(results, replication)),
        "",
        "### Where omnicc's time goes",
        "",
        interpretation(results, idle),
        "",
        *profile_section(profiles, args.profile_rate),
        "### Every step",
        "",
        *steps_table(results),
        *problems_section(results),
        DOC_END,
    ]
    return "\n".join(out) + "\n"



# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Authenticated REGISTER/s at zero failures: omnicc vs native kamailio.cfg.")
    parser.add_argument("--rates", type=int, nargs="+", default=list(DEFAULT_RATES),
                        metavar="R", help="target registrations/s of the steps, ascending")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, metavar="S",
                        help=f"length of a step (default {DEFAULT_SECONDS:g})")
    parser.add_argument("--sides", nargs="+", choices=ALL_SIDES, default=list(ALL_SIDES),
                        help="which sides to run (default all)")
    parser.add_argument("--agents", type=int, default=DEFAULT_AGENTS, metavar="N",
                        help=f"agents in the configs (default {DEFAULT_AGENTS})")
    parser.add_argument("--max-shortfall", type=float, default=DEFAULT_MAX_SHORTFALL,
                        metavar="F", help="a step whose achieved rate is below (1-F) x target "
                        f"fails (default {DEFAULT_MAX_SHORTFALL})")
    parser.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS, metavar="N",
                        help="runs of a failing step before its side stops "
                        f"(default {DEFAULT_ATTEMPTS})")
    parser.add_argument("--profile-rate", type=int, default=DEFAULT_PROFILE_RATE, metavar="R",
                        help="after the steps, run one more per side at R/s under perf "
                        "record, for where Kamailio's CPU goes (default "
                        f"{DEFAULT_PROFILE_RATE}; 0: no profile)")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the results into the doc (see --doc)")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC,
                        help="default docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (configs, logs, SIPp traces)")
    args = parser.parse_args(argv)
    if sorted(args.rates) != args.rates or any(rate < 1 for rate in args.rates):
        parser.error("--rates must be positive and ascending")
    if (not 1 <= args.agents <= 100_000 or args.seconds <= 0
            or not 0 < args.max_shortfall < 1 or not 1 <= args.attempts <= 5
            or not 0 <= args.profile_rate <= 100_000):
        parser.error("--agents 1..100000, --seconds > 0, 0 < --max-shortfall < 1, "
                     "--attempts 1..5, --profile-rate 0..100000")
    if args.profile_rate and shutil.which("perf") is None:
        parser.error("--profile-rate needs perf (Debian package: linux-perf); 0 runs without")
    if args.rates[-1] * args.seconds > 500_000:
        parser.error("a step of more than 500,000 registrations: lower --rates or --seconds")
    args.sides = [side for side in ALL_SIDES if side in args.sides]
    return args


def count_registered(redis_port: int) -> int:
    """Agents omnicc shows reachable after the run (every agent must be there once): the
    reachability keys its Kamailio publishes for the ACD ({t:TENANT}:agent:EXT:contact)."""
    with redis.Redis(host=HOST, port=redis_port) as client:
        return sum(1 for _ in client.scan_iter(match=agent_contact(TENANT, "*"), count=1000))


# ---------------------------------------------------------------------------- the cluster


Binding = tuple[str, str]  # a contact's address and the Call-ID of its latest REGISTER


def usrloc_bindings(server: Server) -> dict[str, frozenset[Binding]]:
    """Every AOR a Kamailio's usrloc holds, with its contacts (RPC ul.dump). Each
    registration of the benchmark has a Call-ID of its own, so a peer that missed the
    latest one shows an older Call-ID."""
    if server.rpc_fifo is None:
        raise ValueError(f"{server.name} has no control FIFO")
    dump = call(server.rpc_fifo, "ul.dump", timeout=20)
    bindings: dict[str, frozenset[Binding]] = {}

    def addresses(node: object) -> Iterator[Binding]:
        if isinstance(node, dict):
            if isinstance(node.get("Address"), str):
                yield node["Address"], str(node.get("Call-ID", ""))
            for value in node.values():
                yield from addresses(value)
        elif isinstance(node, list):
            for value in node:
                yield from addresses(value)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("AoR"), str):
                bindings[node["AoR"]] = frozenset(addresses(node.get("Contacts", [])))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dump)
    return bindings


@dataclass(frozen=True)
class Replication:
    """What omnicc-bearer-cluster's two nodes held after a step, or after the run."""

    agents: int
    entry_aors: int  # AORs in the usrloc of the node SIPp registered through
    peer_aors: int  # AORs in its DMQ peer's usrloc
    # AORs of the agents the peer holds with exactly the entry's contacts and Call-IDs
    same: int
    waited: float  # seconds until the peer held them all (or the wait ran out)

    @property
    def complete(self) -> bool:
        return self.entry_aors == self.peer_aors == self.same == self.agents

    def describe(self) -> str:
        return (f"the node SIPp registered through held {self.entry_aors} AORs, its DMQ peer "
                f"{self.peer_aors}, {self.same} of the {self.agents} agents' with the same "
                "contacts and the same latest registration (Call-ID) on both"
                + (" (complete)" if self.complete else " (INCOMPLETE)"))


def check_replication(entry: Server, peer: Server, agents: Sequence[Agent]) -> Replication:
    """Whether the peer holds every agent's registration as the entry node does; it may
    lag a little behind (DMQ is asynchronous), so it is asked until it agrees or
    REPLICATION_WAIT_SECONDS have passed."""
    aors = {f"{agent.extension}@{DOMAIN}" for agent in agents}
    started = time.monotonic()
    while True:
        at_entry, at_peer = usrloc_bindings(entry), usrloc_bindings(peer)
        same = sum(1 for aor in aors if at_entry.get(aor) and
                   at_peer.get(aor) == at_entry[aor])
        waited = time.monotonic() - started
        result = Replication(len(aors), len(at_entry), len(at_peer), same, waited)
        if result.complete or waited > REPLICATION_WAIT_SECONDS:
            return result
        time.sleep(0.5)


def wait_for_dmq_peer(server: Server, timeout: float = 30.0) -> None:
    """Until the node's DMQ has its peer active (else the first registrations could go
    unreplicated, and the replication cost unmeasured)."""
    assert server.rpc_fifo is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dmq_peer_active(server.rpc_fifo):
            return
        time.sleep(0.5)
    raise SystemExit(f"{server.name}: its DMQ peer is not active after {timeout:g} s "
                     "(RPC dmq.list_nodes)")


# ---------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Ports:
    """Ports of the benchmark's omnicc configs. Only Kamailio and Redis run; the others
    just have to be distinct."""

    redis: int
    asterisk: int
    agi: int
    postgres: int

    @classmethod
    def pick(cls, redis_port: int) -> Ports:
        return cls(redis_port, *free_ports(3))

    def with_kamailio(self, kamailio: int) -> dict[str, int]:
        return {"kamailio": kamailio, "asterisk": self.asterisk, "agi": self.agi,
                "redis": self.redis, "postgres": self.postgres}


def make_stack(directory: Path, config_text: str) -> Stack:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "omnicc.yaml"
    path.write_text(config_text)
    config: OmniccConfig = load_config(path)
    return Stack(config, path, directory / "var")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/register_auth.py",
                          *(argv if argv is not None else sys.argv[1:])])
    agents = make_agents(args.agents)
    # Taken now: Kamailio loads the KEMI script and the omnicc package at start-up.
    revision = omnicc_revision()
    workdir = Path(tempfile.mkdtemp(prefix="omnicc-bench-register-"))
    results: dict[str, SideResult] = {side: SideResult(side, []) for side in args.sides}
    registered: int | None = None
    replication: Replication | None = None
    idle: dict[str, float] = {}
    profiles: dict[str, Profile] = {}
    problems_seen = False
    try:
        with ExitStack() as services:
            redis_port = free_ports(1)[0]
            store = services.enter_context(redis_server(workdir, redis_port))
            print(f"redis-server on port {redis_port}; work directory {workdir}", flush=True)
            ports = Ports.pick(redis_port)
            # The single node; its secrets (made now) are every omnicc node's.
            stack = make_stack(workdir / "omnicc", omnicc_config_text(
                agents, ports.with_kamailio(free_ports(1)[0])))
            credentials = Credentials.of_stack(stack, agents)
            kamailios: dict[str, tuple[Server, ...]] = {}
            shared = resolve_secret_files(stack.config, stack.config_path, stack.var)
            if any(side in SHARED_NODE_SIDES for side in args.sides):
                omnicc = services.enter_context(omnicc_kamailio(stack))
                kamailios.update({side: (omnicc,) for side in SHARED_NODE_SIDES})
            if OMNICC_BEARER_NEW in args.sides:
                new_stack = make_stack(workdir / BEARER_NEW_NODE, omnicc_config_text(
                    agents, ports.with_kamailio(free_ports(1)[0]), node=BEARER_NEW_NODE,
                    secret_files=shared))
                kamailios[OMNICC_BEARER_NEW] = (
                    services.enter_context(omnicc_kamailio(new_stack)),)
            if OMNICC_BEARER_CLUSTER in args.sides:
                node_ports = free_ports(len(CLUSTER_NODES))
                cluster: list[Server] = []
                for node, port in zip(CLUSTER_NODES, node_ports, strict=True):
                    node_stack = make_stack(workdir / node, omnicc_config_text(
                        agents, ports.with_kamailio(port), node=node,
                        cluster_ports=node_ports, secret_files=shared))
                    cluster.append(services.enter_context(omnicc_kamailio(node_stack)))
                for server in cluster:
                    wait_for_dmq_peer(server)
                # SIPp registers through the first; the second is its DMQ peer.
                kamailios[OMNICC_BEARER_CLUSTER] = tuple(cluster)
            if NATIVE_MEMORY in args.sides:
                native = services.enter_context(native_kamailio(
                    workdir, port=free_ports(1)[0], agents=agents))
                kamailios[NATIVE_MEMORY] = (native,)
            bench = Bench(workdir, store, kamailios, credentials, args.max_shortfall)
            idle = bench.idle_cores()
            print("  idle: " + ", ".join(f"{name} {cores:.3f} cores"
                                         for name, cores in idle.items()), flush=True)
            # Warm-up, not counted: every agent registered on every registrar (so the steps
            # measure re-registrations), every worker's interpreter and caches warm, and
            # (most likely) every worker has admitted every agent once.
            for side in args.sides:
                warmup_rate = min(WARMUP_RATE_MAX, max(WARMUP_RATE, args.agents // 3))
                calls = WARMUP_REGISTRATIONS_PER_AGENT * args.agents
                warm = bench.run_step(side, warmup_rate, calls / warmup_rate)
                print(f"  warm-up {side}: {describe_step(warm)}", flush=True)
                if warm.failures:
                    print_step_problems(warm)
                    raise SystemExit(f"warm-up of {side} failed; see {workdir}")
            alive = list(args.sides)
            for rate in args.rates:
                for side in list(alive):
                    for attempt in range(1, args.attempts + 1):
                        step = bench.run_step(side, rate, args.seconds, attempt)
                        results[side].steps.append(step)
                        print(f"  {side} @ {rate}/s (attempt {attempt}): {describe_step(step)}",
                              flush=True)
                        print_step_problems(step)
                        problems_seen |= bool(step.log_problems or step.sipp.errors)
                        time.sleep(1.0)  # let timers and queues settle between steps
                        if step.passed:
                            break
                    else:
                        alive.remove(side)
                if not alive:
                    break
            if args.profile_rate:
                for side in args.sides:
                    profile = bench.profile_step(side, args.profile_rate, args.seconds)
                    profiles[side] = profile
                    print(f"  {side} @ {args.profile_rate}/s under perf: "
                          f"{describe_step(profile.step)}", flush=True)
                    print("      " + ", ".join(
                        f"{dso} {100 * share:.0f}%" for dso, share in sorted(
                            profile.shares.items(), key=lambda item: -item[1])[:6]))
                    time.sleep(1.0)
            if any(side in OMNICC_SIDES for side in args.sides):
                registered = count_registered(redis_port)
                print(f"  agents reachable in Redis (omnicc): {registered} of {args.agents}")
            if OMNICC_BEARER_CLUSTER in args.sides:
                entry, peer = kamailios[OMNICC_BEARER_CLUSTER]
                replication = check_replication(entry, peer, agents)
                print(f"  {OMNICC_BEARER_CLUSTER}: {replication.describe()}")
                problems_seen |= not replication.complete
    finally:
        if args.keep or problems_seen:
            print(f"\nwork directory (logs, SIPp traces) kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results, args.rates)
    print()
    for sentence in verdict_sentences(results, replication):
        print(sentence.replace("**", ""))
    print(interpretation(results, idle))
    if args.write_doc:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        write_doc_section(args.doc, DOC_BEGIN, DOC_END,
                          doc_section(results, registered, replication, idle, profiles, args,
                                      command, when, revision))
        print(f"\nwrote {args.doc}")
    measured = all(result.steps for result in results.values())
    replicated = replication is None or replication.complete
    return 0 if measured and replicated else 1


if __name__ == "__main__":
    sys.exit(main())
