"""`omnicc up / status / down / migrate` through the real command line, on a stack of
their own: up twice is harmless, down leaves no process, errors name what is wrong."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omnicc.config import load_config
from omnicc.stack import Stack

from .conftest import make_stack_dir, omnicc_cli, write_config

pytestmark = pytest.mark.integration

SERVICES = ["redis", "postgres", "history", "agi", "asterisk", "kamailio"]


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or working directory mention `text`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z" and (text in cmdline or cwd.startswith(text)):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def recorded_pids(directory: Path) -> dict[str, int]:
    run = directory / "var" / "run"
    return {p.stem: int(p.read_text().split()[0]) for p in run.glob("*.pid")}


def pgid_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture(scope="module")
def lifecycle_dir() -> Iterator[Path]:
    directory = make_stack_dir("omnicc-life-")
    write_config(directory, "life")
    yield directory
    omnicc_cli(directory, "down")
    shutil.rmtree(directory, ignore_errors=True)


def test_up_starts_every_service_and_status_lists_them(lifecycle_dir: Path) -> None:
    up = omnicc_cli(lifecycle_dir, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    for name in SERVICES:
        assert f"{name}" in up.stdout
    status = omnicc_cli(lifecycle_dir, "status")
    assert status.returncode == 0, status.stdout
    config = load_config(lifecycle_dir / "omnicc.yaml")
    pids = recorded_pids(lifecycle_dir)
    table = status.stdout.split("\n\n")[0].splitlines()[2:]
    rows = {line.split()[0]: line.split() for line in table}
    assert "bans: none" in status.stdout
    assert sorted(rows) == sorted(SERVICES)
    for name in SERVICES:
        assert rows[name][1] == str(pids[name])
        assert rows[name][-1] == "ok"
    assert f"{config.services.kamailio.port}/udp" in rows["kamailio"][2]
    assert f"{config.services.redis.port}/tcp" in rows["redis"][2]


def test_up_twice_is_harmless(lifecycle_dir: Path) -> None:
    before = recorded_pids(lifecycle_dir)
    again = omnicc_cli(lifecycle_dir, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == len(SERVICES)
    assert recorded_pids(lifecycle_dir) == before


def test_migrate_applies_each_migration_once(lifecycle_dir: Path) -> None:
    # `up` already migrated; running it again changes nothing.
    result = omnicc_cli(lifecycle_dir, "migrate")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    stack = Stack(load_config(lifecycle_dir / "omnicc.yaml"), lifecycle_dir / "omnicc.yaml",
                  lifecycle_dir / "var")
    with psycopg.connect(stack.postgres_dsn()) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migration ORDER BY name")]
        assert names == ["001_init.sql", "002_recordings.sql"]
        conn.execute("SELECT tenant, stream_id, event FROM call_event LIMIT 1")


def test_down_leaves_no_process(lifecycle_dir: Path) -> None:
    pids = recorded_pids(lifecycle_dir)
    assert sorted(pids) == sorted(SERVICES)
    down = omnicc_cli(lifecycle_dir, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    # Every service ran in its own process group: none of those groups has a member left,
    # and no process anywhere still names this stack's directory.
    assert [name for name, pid in pids.items() if pgid_alive(pid)] == []
    assert processes_mentioning(str(lifecycle_dir)) == []
    assert recorded_pids(lifecycle_dir) == {}
    status = omnicc_cli(lifecycle_dir, "status")
    assert status.returncode != 0
    assert status.stdout.count("stopped") == len(SERVICES)


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    directory = make_stack_dir("omnicc-port-")
    try:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        write_config(directory, "port", agi=taken)
        result = omnicc_cli(directory, "up", timeout=60)
        blocker.close()
        assert result.returncode == 1
        assert f"port {taken}/tcp" in result.stderr
        assert "agi" in result.stderr and "services.agi.port" in result.stderr
        # Checked before anything started: no service was left running.
        assert recorded_pids(directory) == {}
        assert processes_mentioning(str(directory)) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_config_error_names_the_key_and_the_line(tmp_path: Path) -> None:
    directory = make_stack_dir("omnicc-cfg-")
    try:
        path = write_config(directory, "cfg")
        lines = path.read_text().splitlines()
        bad_line = next(i for i, line in enumerate(lines) if '"1002"' in line)
        lines[bad_line] = lines[bad_line].replace('"1002"', '"10x2"')
        path.write_text("\n".join(lines) + "\n")
        result = omnicc_cli(directory, "up", timeout=60)
        assert result.returncode == 2
        assert f"omnicc.yaml:{bad_line + 1}: tenants[0].agents[1].extension" in result.stderr
        assert not (directory / "var" / "run").exists() or recorded_pids(directory) == {}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_service_that_dies_on_start_shows_its_log(tmp_path: Path) -> None:
    """Kamailio fails to start (its config names a missing KEMI script): the error says
    which service, and shows the tail of its log; everything else started is left running
    for `down`, which then stops it all."""
    directory = make_stack_dir("omnicc-die-")
    try:
        write_config(directory, "die")
        env_backup = os.environ.get("OMNICC_KEMI_SCRIPT")
        os.environ["OMNICC_KEMI_SCRIPT"] = str(directory / "missing_kemi.py")
        try:
            result = omnicc_cli(directory, "up", timeout=180)
        finally:
            if env_backup is None:
                os.environ.pop("OMNICC_KEMI_SCRIPT", None)
            else:
                os.environ["OMNICC_KEMI_SCRIPT"] = env_backup
        assert result.returncode == 1
        assert "kamailio exited" in result.stderr
        assert "last lines of" in result.stderr and "kamailio.log" in result.stderr
        assert "missing_kemi" in result.stderr
    finally:
        omnicc_cli(directory, "down")
        time.sleep(0.2)
        assert processes_mentioning(str(directory)) == []
        shutil.rmtree(directory, ignore_errors=True)


def test_a_missing_binary_names_its_debian_package(tmp_path: Path) -> None:
    directory = make_stack_dir("omnicc-bin-")
    try:
        write_config(directory, "bin")
        env = dict(os.environ, PATH=str(tmp_path))  # nothing on PATH: no redis-server
        result = subprocess.run(
            [sys.executable, "-m", "omnicc.cli", "up"], cwd=directory, env=env,
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 1
        assert "redis-server not found" in result.stderr
        assert "Debian package redis-server" in result.stderr
        assert processes_mentioning(str(directory)) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)
