"""Several Kamailio nodes on one Redis: the registrar is shared, so an agent registered
through one node is reachable through any other."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import redis as redis_lib

from omnicc import sipp
from omnicc.config import load_config
from omnicc.render import REGISTRAR_REDIS_DB
from omnicc.stack import Stack

from .conftest import TRUNK_IP, RunningStack, free_ports, make_stack_dir
from .test_first_call import agent_online, events_since, now_id

pytestmark = pytest.mark.integration


@pytest.fixture
def second_kamailio(running_stack: RunningStack):
    """Node B: another Kamailio (own port, own var/) on the same Redis and Asterisk."""
    directory = make_stack_dir("omnicc-node-b-")
    port = free_ports(1)[0]
    text = running_stack.stack.config_path.read_text()
    text = text.replace("node: it-main", "node: it-node-b")
    text = re.sub(r"kamailio: \{port: \d+\}", f"kamailio: {{port: {port}}}", text)
    path = directory / "omnicc.yaml"
    path.write_text(text)
    stack = Stack(load_config(path), path, directory / "var")
    stack._dirs()
    kamailio = next(s for s in stack.services if s.name == "kamailio")
    kamailio.start(progress=print)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        kamailio.stop(progress=print)
        shutil.rmtree(directory, ignore_errors=True)


def test_agent_registered_through_one_node_gets_a_call_relayed_by_another(
    running_stack: RunningStack, second_kamailio: str, sipp_dir: Path
) -> None:
    since = now_id()
    with agent_online(running_stack, sipp_dir, "1001", proxy=second_kamailio) as phone:
        # The contact is in the shared Redis, saved by node B's socket.
        shared = redis_lib.Redis(host="127.0.0.1", port=running_stack.config.services.redis.port,
                                 db=REGISTRAR_REDIS_DB, decode_responses=True)
        entries = shared.smembers("location:usrdom::1001:it.omnicc.test")
        assert entries, "no contact for 1001 in the shared registrar"
        sockets = {shared.hget(e, "socket") for e in entries}
        assert f"udp:{second_kamailio}" in sockets
        # The carrier's call enters through node A (the running stack's Kamailio).
        caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=500)
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
    ended = [e for e in events_since(running_stack, since, want=2) if e["event"] == "call_ended"]
    assert ended and ended[0]["dialstatus"] == "ANSWER"


@pytest.fixture
def second_node_with_two_asterisks(running_stack: RunningStack):
    """Node B: its own Kamailio and Asterisk, on the shared Redis and FastAGI server, with
    both Asterisk nodes (A's and B's) in its dispatcher set."""
    directory = make_stack_dir("omnicc-node-b2-")
    kamailio_port, asterisk_port = free_ports(2)
    a_asterisk = running_stack.config.services.asterisk.port
    text = running_stack.stack.config_path.read_text()
    text = text.replace("node: it-main", "node: it-node-b2")
    text = re.sub(r"kamailio: \{port: \d+\}", f"kamailio: {{port: {kamailio_port}}}", text)
    text = re.sub(r"asterisk: \{port: \d+\}", f"asterisk: {{port: {asterisk_port}}}", text)
    text = text.replace("tenants:", "asterisk_nodes:\n"
                        f"  - {{host: 127.0.0.1, port: {a_asterisk}}}\n"
                        f"  - {{host: 127.0.0.1, port: {asterisk_port}}}\n"
                        "tenants:", 1)
    path = directory / "omnicc.yaml"
    path.write_text(text)
    stack = Stack(load_config(path), path, directory / "var")
    stack._dirs()
    services = {s.name: s for s in stack.services}
    started = []
    try:
        for name in ("asterisk", "kamailio"):
            services[name].start(progress=print)
            started.append(services[name])
        yield f"127.0.0.1:{kamailio_port}", services["asterisk"]
    finally:
        for service in reversed(started):
            service.stop(progress=print)
        shutil.rmtree(directory, ignore_errors=True)


def test_calls_fail_over_to_the_asterisk_node_that_is_still_up(
    running_stack: RunningStack, second_node_with_two_asterisks, sipp_dir: Path
) -> None:
    proxy_b, asterisk_b = second_node_with_two_asterisks

    def calls_through_b(count: int, name: str) -> list[str]:
        since = now_id()
        caller = sipp.carrier_calls(sipp_dir, proxy=proxy_b, did="5550199",
                                    local_ip=TRUNK_IP, calls=count, rate=2, talk_ms=100,
                                    name=name)
        caller.run(timeout=90)
        routed = [e for e in events_since(running_stack, since, want=count)
                  if e["event"] == "call_routed"]
        assert len(routed) == count, routed
        # Each Asterisk names its calls' uniqueids after its node (systemname).
        return sorted(e["uniqueid"].rsplit("-", 1)[0] for e in routed)

    # Both nodes up: the dispatcher shares the calls between them.
    assert calls_through_b(4, "both-up") == ["it-main"] * 2 + ["it-node-b2"] * 2
    asterisk_b.stop(progress=print)
    # B's Asterisk stopped: every call still reaches an Asterisk (A's).
    assert calls_through_b(4, "one-down") == ["it-main"] * 4
