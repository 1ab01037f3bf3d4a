"""A real redis-server of the ACD tests' own: a free port, a temporary directory, no
persistence, started once per test module and stopped at its end.

Test modules import the fixture: ``from tests.integration.acd_redis import acd_redis``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import free_ports

STARTUP_SECONDS = 10


@dataclass
class RedisServer:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, decode_responses=True,
                           socket_timeout=10)

    def stop(self) -> None:
        """Stops the server and removes its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis_server(host: str = "127.0.0.1") -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        # scripts/install.sh installs it; without it these tests cannot say anything.
        pytest.fail("redis-server is not installed: run `make install` (scripts/install.sh)")
    directory = Path(tempfile.mkdtemp(prefix="omnicc-acd-redis-"))
    port = free_ports(1, host)[0]
    process = subprocess.Popen(
        [binary, "--bind", host, "--port", str(port), "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--daemonize", "no",
         "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(host, port, directory, process)
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            if server.client().ping():
                return server
        except redis.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log_file = directory / "redis.log"
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            server.stop()
            raise RuntimeError(f"redis-server did not start on port {port}:\n{log}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def acd_redis() -> Iterator[RedisServer]:
    server = start_redis_server()
    try:
        yield server
    finally:
        server.stop()
