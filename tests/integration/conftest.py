"""Integration fixtures: a real omnicc stack (Redis, PostgreSQL, FastAGI, Asterisk,
Kamailio) in a temporary directory on free ports, started once per test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from omnicc.config import OmniccConfig, load_config
from omnicc.stack import Stack

TRUNK_IP = "127.0.0.3"      # the test carrier sends from here
STRANGER_IP = "127.0.0.5"   # an address omnicc trusts for nothing
PEER_NODE_IP = "127.0.0.4"  # the second Kamailio node of test_cluster.py
DOMAIN = "it.omnicc.test"

# The stack's own lines of a test config: its node name and the ports free_ports() found
# (write_config fills them); a test module adds its tenants.
SERVICES_TEMPLATE = """\
node: it-{name}
services:
  listen: 127.0.0.1
  kamailio: {{port: {kamailio}}}
  asterisk: {{port: {asterisk}}}
  agi:      {{port: {agi}}}
  redis:    {{port: {redis}}}
  postgres: {{port: {postgres}}}
"""

CONFIG_TEMPLATE = SERVICES_TEMPLATE + """\
# Registrations and bans replicate over DMQ between these Kamailio nodes; the second is
# the node tests/integration/test_cluster.py starts beside this stack's, on an address
# of its own (as another machine would be).
kamailio_nodes:
  - {{host: 127.0.0.1, port: {kamailio}}}
  - {{host: 127.0.0.4, port: {kamailio_peer}}}
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
    inbound_routes:
      - {{did: "5550100", destination: "agent:1001"}}
      - {{did: "5550101", destination: "agent:1002"}}
      - {{did: "5550199", destination: "hangup"}}
"""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free for both TCP and UDP right now (held open together so none repeats)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((host, port))
            except OSError:
                tcp.close()
                udp.close()
                continue
            held += [tcp, udp]
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def make_stack_dir(prefix: str) -> Path:
    # Not pytest's tmp_path: PostgreSQL runs as the postgres user and must traverse it.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def write_config(directory: Path, name: str, template: str = CONFIG_TEMPLATE,
                 **overrides: int) -> Path:
    """omnicc.yaml in `directory` from `template`, every service on a free port."""
    keys = ["kamailio", "asterisk", "agi", "redis", "postgres", "kamailio_peer"]
    ports = dict(zip(keys, free_ports(len(keys)), strict=True))
    ports.update(overrides)
    path = directory / "omnicc.yaml"
    path.write_text(template.format(name=name, domain=DOMAIN, trunk=TRUNK_IP, **ports))
    return path


def omnicc_cli(directory: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real `omnicc` command line in `directory` (its omnicc.yaml and var/)."""
    return subprocess.run(
        [sys.executable, "-m", "omnicc.cli", *args], cwd=directory, capture_output=True,
        text=True, timeout=timeout,
    )


@dataclass
class RunningStack:
    directory: Path
    stack: Stack

    @property
    def config(self) -> OmniccConfig:
        return self.stack.config

    @property
    def proxy(self) -> str:
        return f"127.0.0.1:{self.config.services.kamailio.port}"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.redis_url, socket_timeout=5,
                                    decode_responses=True)


@contextlib.contextmanager
def stack_up(prefix: str, name: str, template: str = CONFIG_TEMPLATE,
             **overrides: int) -> Iterator[RunningStack]:
    """A whole stack from `template` in a new directory, up for the block, then down;
    `overrides` fill more of the template's fields (ports of services started apart)."""
    directory = make_stack_dir(prefix)
    config_path = write_config(directory, name, template, **overrides)
    stack = Stack(load_config(config_path), config_path, directory / "var")
    try:
        stack.up(progress=lambda line: print(line, flush=True))
        yield RunningStack(directory, stack)
    finally:
        stack.down(progress=lambda _line: None)
        if os.environ.get("OMNICC_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def kamailio_beside(running: RunningStack, node: str, config_text: str) -> Iterator[Stack]:
    """One more Kamailio of `running`'s deployment, from `config_text` (its own node name,
    address or port): the deployment's secrets, Redis and Asterisk nodes; up for the block."""
    directory = make_stack_dir(f"omnicc-{node}-")
    path = directory / "omnicc.yaml"
    path.write_text(config_text)
    stack = Stack(load_config(path), path, directory / "var")
    stack._dirs()
    # Nodes of one deployment share the secrets (the digest secret above all: ephemeral
    # credentials and digest nonces must check on every node).
    shutil.copytree(running.stack.var / "secrets", stack.var / "secrets")
    kamailio = next(s for s in stack.services if s.name == "kamailio")
    node_env = kamailio.env
    # The shared Redis listens on the running stack's address.
    kamailio.env = lambda: {**node_env(), "OMNICC_REDIS_URL": running.stack.redis_url}
    kamailio.start(progress=print)
    try:
        yield stack
    finally:
        kamailio.stop(progress=print)
        if os.environ.get("OMNICC_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def running_stack() -> Iterator[RunningStack]:
    with stack_up("omnicc-it-", "main") as running:
        yield running


@pytest.fixture
def sipp_dir(tmp_path: Path) -> Path:
    return tmp_path
