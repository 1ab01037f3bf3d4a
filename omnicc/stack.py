"""The local stack: omnicc's own Redis, PostgreSQL, FastAGI server, Asterisk and Kamailio,
started and stopped together from one config file, everything under one var/ directory.

    var/etc/     rendered configs        var/log/   one log per service
    var/run/     pid files, sockets      var/data/  Redis and PostgreSQL data
    var/secrets/ signing key, JWKS, digest secret (0700)

`up` returns only when every service answers its health check; a second `up` leaves
running services alone; `down` stops each service's whole process group.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omnicc.config import OmniccConfig
from omnicc.render import KEMI_SCRIPT, REPO_ROOT, AsteriskDirs, render_asterisk, render_kamailio
from omnicc.sipprobe import sip_options_ping

DEFAULT_ASTERISK_ROOT = "/var/cache/omnicc/asterisk-root"
# Where the var/ directory appears inside the Asterisk root.
CHROOT_VAR = "/omnicc"


class StackError(Exception):
    """A service could not be started or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    ports: str
    healthy: bool
    detail: str = ""


def _port_free(host: str, port: int, proto: str) -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if proto == "tcp":
            # Servers set SO_REUSEADDR too: a socket in TIME_WAIT is not "taken".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _find_binary(name: str, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    found = shutil.which(name)
    for pattern in extra_dirs:
        if found:
            break
        matches = sorted(glob.glob(os.path.join(pattern, name)))
        found = matches[-1] if matches else None
    if not found:
        raise StackError(f"{name} not found: install the Debian package {package} (make install)")
    return found


class Service:
    """One process of the stack. Subclasses say how to prepare, start and check it."""

    name = ""
    stop_signal = signal.SIGTERM
    start_timeout = 30.0

    def __init__(self, stack: Stack):
        self.stack = stack
        self.cfg = stack.config

    # -- what subclasses provide
    def ports(self) -> list[tuple[int, str]]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configs, create data directories; must be idempotent."""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def healthy(self) -> bool:
        raise NotImplementedError

    def user(self) -> str | None:
        return None

    def after_start(self) -> None:
        """One-time work once the service answers (e.g. create the database)."""

    # -- common behaviour
    @property
    def host(self) -> str:
        return self.cfg.services.listen

    @property
    def log_file(self) -> Path:
        return self.stack.log_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.stack.run_dir / f"{self.name}.pid"

    def pid(self) -> int | None:
        """The pid of this stack's running process, or None."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            return None
        return None if state == "Z" else pid

    def check_ports(self) -> None:
        for port, proto in self.ports():
            if not _port_free(self.host, port, proto):
                raise StackError(
                    f"{self.name}: port {port}/{proto} on {self.host} is already in use by "
                    f"another program; free it or change services.{self.name}.port in "
                    f"{self.stack.config_path}"
                )

    def ports_text(self) -> str:
        return ", ".join(f"{port}/{proto}" for port, proto in self.ports()) or "-"

    def start(self, progress: Callable[[str], None]) -> None:
        pid = self.pid()
        if pid is not None:
            self._wait_healthy(pid, progress, already=True)
            return
        self.check_ports()
        self.prepare()
        argv = self.argv()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        user = self.user()
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== omnicc: starting {self.name} at {time.ctime()}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=str(self.stack.var),
                start_new_session=True,  # its own process group: `down` stops all of it
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_healthy(proc.pid, progress, already=False, proc=proc)
        except StackError:
            # Leave nothing half-started behind.
            self.stop(lambda _line: None, timeout=5.0)
            raise
        self.after_start()

    def _wait_healthy(self, pid: int, progress: Callable[[str], None], *, already: bool,
                      proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name} exited with status {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            if self.healthy():
                word = "already running" if already else "started"
                progress(f"  {self.name:<9} {word:<16} pid {pid:<8} {self.ports_text()}")
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} (pid {pid}) did not answer its health check within "
                    f"{self.start_timeout:.0f} s; last lines of {self.log_file}:\n"
                    f"{_tail(self.log_file)}"
                )
            time.sleep(0.2)

    def stop(self, progress: Callable[[str], None], timeout: float = 15.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _group_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        progress(f"  {self.name:<9} stopped")

    def status(self) -> ServiceStatus:
        pid = self.pid()
        healthy = pid is not None and self.healthy()
        return ServiceStatus(self.name, pid, self.ports_text(), healthy)


def _group_alive(pgid: int) -> bool:
    """True while any process of the group is alive and not a zombie."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    # Reap our own child if it was ours (tests start stacks in-process).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)
    return False


class RedisService(Service):
    name = "redis"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.cfg.services.redis.port, "tcp")]

    def prepare(self) -> None:
        data = self.stack.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.stack.etc_dir / "redis.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# redis.conf for the omnicc local stack — rendered by omnicc\n"
            f"bind {self.host}\nport {self.cfg.services.redis.port}\n"
            "protected-mode yes\ndaemonize no\n"
            f"dir {data}\nappendonly yes\nappendfsync everysec\n"
            'save ""\nloglevel notice\nlogfile ""\n'
        )

    def argv(self) -> list[str]:
        conf = self.stack.etc_dir / "redis.conf"
        return [_find_binary("redis-server", "redis-server"), str(conf)]

    def healthy(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.host, port=self.cfg.services.redis.port,
                                    socket_timeout=1).ping())
        except redis.RedisError:
            return False


class PostgresService(Service):
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients to leave
    start_timeout = 60.0

    @property
    def pgdata(self) -> Path:
        return self.stack.data_dir / "postgres"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.cfg.services.postgres.port, "tcp")]

    def user(self) -> str | None:
        # PostgreSQL refuses to run as root: run it as the postgres system user.
        return "postgres" if os.geteuid() == 0 else None

    def _bin(self, name: str) -> str:
        # Debian keeps the server binaries off PATH, per major version.
        return _find_binary(name, "postgresql", ("/usr/lib/postgresql/*/bin",))

    def prepare(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        user = self.user()
        secret = self.stack.postgres_password()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        pwfile = self.stack.run_dir / "postgres.pwfile"
        pwfile.write_text(secret + "\n")
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            for path in (self.pgdata, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            _check_traversable(self.pgdata, user)
        try:
            result = subprocess.run(
                [self._bin("initdb"), "-D", str(self.pgdata), "-U", "omnicc", "-E", "UTF8",
                 "--no-locale", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-instructions"],
                capture_output=True, text=True, user=user, group=user,
                extra_groups=[] if user else None, cwd="/",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"postgres: initdb failed:\n{result.stdout}{result.stderr}")

    def argv(self) -> list[str]:
        sockdir = self.stack.run_dir / "postgresql"
        sockdir.mkdir(parents=True, exist_ok=True)
        if self.user():
            import pwd

            entry = pwd.getpwnam("postgres")
            os.chown(sockdir, entry.pw_uid, entry.pw_gid)
        return [
            self._bin("postgres"), "-D", str(self.pgdata),
            "-p", str(self.cfg.services.postgres.port),
            "-c", f"listen_addresses={self.host}",
            "-c", f"unix_socket_directories={sockdir}",
            "-c", "logging_collector=off",
        ]

    def healthy(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.stack.postgres_dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def after_start(self) -> None:
        import psycopg

        with psycopg.connect(self.stack.postgres_dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'omnicc'").fetchone()
            if not exists:
                conn.execute("CREATE DATABASE omnicc")


def _check_traversable(path: Path, user: str) -> None:
    """PostgreSQL runs as `user`: every directory above its data must let others through."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise StackError(
                f"postgres: the {user} user cannot enter {parent} (mode {oct(mode & 0o777)}); "
                "put var/ under a directory others can traverse"
            )


def python_service_env(**extra: str) -> dict[str, str]:
    """Environment of omnicc's own Python services: the checkout importable, no buffering."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class HistoryService(Service):
    """Copies the Redis event streams into PostgreSQL (omnicc/history.py)."""

    name = "history"

    def ports(self) -> list[tuple[int, str]]:
        return []

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "omnicc.history", "--config", str(self.stack.config_path),
                "--redis", self.stack.redis_url]

    def env(self) -> dict[str, str]:
        # The URL holds the password: the environment keeps it out of `ps`.
        return python_service_env(OMNICC_DATABASE_URL=self.stack.postgres_dsn())

    def healthy(self) -> bool:
        import redis

        from omnicc.history import heartbeat_key

        try:
            client = redis.Redis(host=self.host, port=self.cfg.services.redis.port,
                                 socket_timeout=1)
            return bool(client.exists(heartbeat_key(self.cfg.node)))
        except redis.RedisError:
            return False


class AgiService(Service):
    name = "agi"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.cfg.services.agi.port, "tcp")]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "agi.app", "--config", str(self.stack.config_path),
                "--redis", self.stack.redis_url]

    def env(self) -> dict[str, str]:
        return python_service_env()

    def healthy(self) -> bool:
        from omnicc.agiprobe import agi_health_check

        return agi_health_check(self.host, self.cfg.services.agi.port)


class AsteriskService(Service):
    name = "asterisk"
    start_timeout = 60.0

    def ports(self) -> list[tuple[int, str]]:
        return [(self.cfg.services.asterisk.port, "udp")]

    def _root(self) -> Path | None:
        """The Debian-unstable root Asterisk runs in, or None for a system asterisk."""
        if shutil.which("asterisk"):
            return None
        root = Path(os.environ.get("OMNICC_ASTERISK_ROOT", DEFAULT_ASTERISK_ROOT))
        if not (root / ".omnicc-complete").exists():
            raise StackError(
                f"asterisk: not on PATH and no Asterisk root at {root}; build it with "
                "`make install` (scripts/build-asterisk-root.sh), or install an asterisk package"
            )
        return root

    def _dirs(self, root: Path | None) -> AsteriskDirs:
        var = CHROOT_VAR if root is not None else str(self.stack.var)
        base = root or Path("/")
        mods = sorted(glob.glob(str(base / "usr/lib/*/asterisk/modules"))) or sorted(
            glob.glob(str(base / "usr/lib/asterisk/modules"))
        )
        if not mods:
            raise StackError(f"asterisk: no modules directory under {base}/usr/lib")
        mod = "/" + os.path.relpath(mods[-1], base)
        return AsteriskDirs(
            etc=f"{var}/etc/asterisk", mod=mod,
            varlib="/var/lib/asterisk", data="/usr/share/asterisk",
            db=f"{var}/data/asterisk", spool=f"{var}/data/asterisk/spool",
            run=f"{var}/run/asterisk", log=f"{var}/log/asterisk",
        )

    def prepare(self) -> None:
        dirs = self._dirs(self._root())
        render_asterisk(self.cfg, self.stack.etc_dir / "asterisk", dirs=dirs)
        for sub in ("data/asterisk/spool", "run/asterisk", "log/asterisk"):
            (self.stack.var / sub).mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        root = self._root()
        conf = f"{self._dirs(root).etc}/asterisk.conf"
        if root is None:
            return [_find_binary("asterisk", "asterisk"), "-f", "-n", "-C", conf]
        # A private mount namespace: the bind mounts vanish with Asterisk, leaving nothing
        # mounted behind even if it is killed.
        script = (
            'set -e; mkdir -p "$1/omnicc"; mount --bind "$2" "$1/omnicc"; '
            'mount -t proc proc "$1/proc"; mount --bind /dev "$1/dev"; '
            'exec chroot "$1" /usr/sbin/asterisk -f -n -C "$3"'
        )
        return [_find_binary("unshare", "util-linux"), "--mount", "--propagation", "private",
                "sh", "-c", script, "omnicc-asterisk", str(root), str(self.stack.var), conf]

    def healthy(self) -> bool:
        return sip_options_ping(self.host, self.cfg.services.asterisk.port, timeout=0.5)

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """The output of `asterisk -rx COMMAND` against this stack's running Asterisk (its
        control socket under var/run/asterisk); StackError when it cannot be asked."""
        root = self._root()
        conf = f"{self._dirs(root).etc}/asterisk.conf"
        if root is None:
            argv = [_find_binary("asterisk", "asterisk"), "-C", conf, "-rx", command]
        else:  # the same private mounts as the running Asterisk's (argv())
            script = (
                'set -e; mkdir -p "$1/omnicc"; mount --bind "$2" "$1/omnicc"; '
                'mount -t proc proc "$1/proc"; mount --bind /dev "$1/dev"; '
                'exec chroot "$1" /usr/sbin/asterisk -C "$3" -rx "$4"'
            )
            argv = [_find_binary("unshare", "util-linux"), "--mount", "--propagation",
                    "private", "sh", "-c", script, "omnicc-asterisk-cli", str(root),
                    str(self.stack.var), conf, command]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StackError(f"asterisk -rx {command!r}: no answer in {timeout:.0f} s") from None
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise StackError(f"asterisk -rx {command!r}: {reason[-1] if reason else 'failed'}")
        return done.stdout


# Kamailio's memory (MB). Shared memory holds transactions, dialogs, usrloc and the htables:
# a registration replicated over DMQ keeps its KDMQ transaction (~10 KB) in tm's wait timer
# for 5 s, so at 3000 registrations/s 128 MB ran out (docs/benchmarks.md); 512 MB holds
# about 10000/s. Linux backs the pages only when they are used. The allocator is TLSF
# (-x tlsf, constant time): with the default q_malloc, perf put 15% of Kamailio's CPU
# under registration load in qm_malloc's search of its free lists.
KAMAILIO_SHM_MB = 512
KAMAILIO_PKG_MB = 16


class KamailioService(Service):
    name = "kamailio"

    def ports(self) -> list[tuple[int, str]]:
        port = self.cfg.services.kamailio.port
        return [(port, "udp"), (port, "tcp")]

    def prepare(self) -> None:
        # OMNICC_KEMI_SCRIPT: run a KEMI script of your own instead of kemi/omnicc_kemi.py.
        kemi = Path(os.environ.get("OMNICC_KEMI_SCRIPT", str(KEMI_SCRIPT)))
        from omnicc.auth_secrets import SecretsError, ensure_local_secrets, nonce_secret

        try:
            files = ensure_local_secrets(self.cfg, self.stack.config_path, self.stack.var).files
            secret = nonce_secret(files)
        except SecretsError as exc:
            raise StackError(f"kamailio: {exc}") from None
        render_kamailio(self.cfg, self.stack.etc_dir / "kamailio", kemi_script=kemi,
                        rundir=self.stack.run_dir, log_stderr=True, nonce_secret=secret)

    def argv(self) -> list[str]:
        return [_find_binary("kamailio", "kamailio"), "-f",
                str(self.stack.etc_dir / "kamailio" / "kamailio.cfg"),
                "-DD", "-E", "-m", str(KAMAILIO_SHM_MB), "-M", str(KAMAILIO_PKG_MB), "-x", "tlsf"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMNICC_CONFIG"] = str(self.stack.config_path)
        env["OMNICC_VAR"] = str(self.stack.var)
        env["OMNICC_REDIS_URL"] = self.stack.redis_url
        env["OMNICC_PYTHONPATH"] = os.pathsep.join(
            [sysconfig.get_paths()["purelib"], str(REPO_ROOT)]
        )
        return env

    def healthy(self) -> bool:
        return sip_options_ping(self.host, self.cfg.services.kamailio.port, timeout=0.5)


class Stack:
    """The whole local stack of one config file and one var/ directory."""

    def __init__(self, config: OmniccConfig, config_path: Path, var: Path):
        self.config = config
        self.config_path = config_path.resolve()
        self.var = var.resolve()
        self.etc_dir = self.var / "etc"
        self.log_dir = self.var / "log"
        self.run_dir = self.var / "run"
        self.data_dir = self.var / "data"
        # Start order: storage first, then the FastAGI server Asterisk asks, then
        # Asterisk, then Kamailio, the door, last (so no call arrives half-ready).
        self.services: list[Service] = [
            RedisService(self), PostgresService(self), HistoryService(self), AgiService(self),
            AsteriskService(self), KamailioService(self),
        ]

    @property
    def redis_url(self) -> str:
        return f"redis://{self.config.services.listen}:{self.config.services.redis.port}/0"

    def postgres_password(self) -> str:
        path = self.data_dir / "postgres.secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def postgres_dsn(self, database: str = "omnicc") -> str:
        services = self.config.services
        return (f"postgresql://omnicc:{self.postgres_password()}@{services.listen}:"
                f"{services.postgres.port}/{database}")

    def _dirs(self) -> None:
        for path in (self.etc_dir, self.log_dir, self.run_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        # Services that drop root (PostgreSQL) need to reach their files below var/.
        for path in (self.var, self.data_dir, self.run_dir, self.log_dir):
            path.chmod(0o755)

    def check_ports(self) -> None:
        """Before starting anything: every port a stopped service needs must be free."""
        for service in self.services:
            if service.pid() is None:
                service.check_ports()

    def up(self, progress: Callable[[str], None] = print) -> None:
        self._dirs()
        self.check_ports()
        for service in self.services:
            service.start(progress)
            if service.name == "postgres":
                from omnicc.migrate import apply_migrations

                applied = apply_migrations(self.postgres_dsn())
                if applied:
                    progress(f"  {'':<9} migrations applied: {', '.join(applied)}")

    def down(self, progress: Callable[[str], None] = print) -> None:
        for service in reversed(self.services):
            service.stop(progress)

    def status(self) -> list[ServiceStatus]:
        return [service.status() for service in self.services]
