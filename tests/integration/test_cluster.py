"""Several Kamailio nodes: registrations replicate between them over DMQ, so an agent
registered through one node is reachable through any other."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import redis as redis_lib

from omnicc import sipp
from omnicc.config import load_config
from omnicc.kamailio_rpc import dmq_peer_active, fifo_path
from omnicc.keys import agent_contact
from omnicc.stack import Stack

from .conftest import (
    PEER_NODE_IP,
    TRUNK_IP,
    RunningStack,
    free_ports,
    kamailio_beside,
    make_stack_dir,
    omnicc_cli,
)
from .test_first_call import agent_online, events_since, now_id

pytestmark = pytest.mark.integration


@pytest.fixture
def second_kamailio(running_stack: RunningStack):
    """Node B: another Kamailio at the address the stack's config lists as its DMQ peer
    (an IP of its own, as another machine would have), on the same Redis."""
    config = running_stack.config
    (peer,) = [n for n in config.kamailio_nodes if n.host == PEER_NODE_IP]
    text = running_stack.stack.config_path.read_text()
    text = text.replace("node: it-main", "node: it-node-b")
    text = text.replace(f"listen: {config.services.listen}", f"listen: {PEER_NODE_IP}")
    text = re.sub(r"kamailio: \{port: \d+\}", f"kamailio: {{port: {peer.port}}}", text)
    with kamailio_beside(running_stack, "node-b", text) as node_b:
        # Replication (bans, withdrawals, registrations) reaches only a peer DMQ knows.
        fifos = [fifo_path(running_stack.stack.run_dir), fifo_path(node_b.run_dir)]
        deadline = time.monotonic() + 20
        while not all(dmq_peer_active(fifo) for fifo in fifos):
            if time.monotonic() > deadline:
                pytest.fail("node A and node B do not list each other as active DMQ peers")
            time.sleep(0.2)
        yield f"{PEER_NODE_IP}:{peer.port}"


def test_agent_registered_through_one_node_gets_a_call_relayed_by_another(
    running_stack: RunningStack, second_kamailio: str, sipp_dir: Path
) -> None:
    since = now_id()
    with agent_online(running_stack, sipp_dir, "1001", proxy=second_kamailio) as phone:
        # Node B took the registration (its name on the ACD's reachability key) ...
        shared = redis_lib.Redis(host="127.0.0.1", port=running_stack.config.services.redis.port,
                                 decode_responses=True)
        reachable = shared.get(agent_contact("default", "1001")) or ""
        assert reachable.startswith("it-node-b "), reachable
        # ... and the carrier's call enters through node A (the running stack's Kamailio),
        # which knows the binding only from DMQ.
        caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=500)
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        # The call came the way of the agent's Path: through node B, whose address the
        # phone's NAT (if any) would let in, not straight from node A.
        (invite,) = [m for m in phone.traced_messages()
                     if m.is_request and m.method == "INVITE" and not m.sent]
        assert invite.header("via").split(";")[0].endswith(f"UDP {second_kamailio}"), invite
    ended = [e for e in events_since(running_stack, since, want=2) if e["event"] == "call_ended"]
    assert ended and ended[0]["dialstatus"] == "ANSWER"


def test_a_digest_nonce_from_one_node_is_accepted_by_another(
    running_stack: RunningStack, second_kamailio: str
) -> None:
    """The nodes make nonces under one secret (derived from the shared digest secret), so
    a phone whose authenticated REGISTER reaches another node than the challenge came from
    (DNS SRV, a load balancer) is let in, not refused and counted as a failure."""
    from .test_digest_replay import RawPhone, digest_authorization, status

    phone = RawPhone(running_stack)
    try:
        challenge = phone.register()
        assert status(challenge) == 401, challenge
        phone.server = (PEER_NODE_IP, int(second_kamailio.rsplit(":", 1)[1]))
        reply = phone.register(authorization=digest_authorization(challenge, 1, "c1"))
        # Node B checks the nonce under the shared secret and finds it good but not its
        # own to count (nonce counts are per node): stale=true, so the phone answers
        # again without asking its user, and nothing counts towards a ban.
        assert status(reply) == 401, reply
        assert "stale=true" in reply.lower(), reply
        assert status(phone.register(authorization=digest_authorization(reply, 1, "c2"))) \
            == 200
    finally:
        phone.close()


def test_an_agent_unregistered_through_one_node_is_published_again_by_the_other(
    running_stack: RunningStack, second_kamailio: str
) -> None:
    """Node A's workers published the agent's contact a moment ago, so a refresh would
    send nothing; the phone unregisters through node B and registers again through A at
    once: the withdrawal's mark reaches A over DMQ, and A publishes the contact again
    before its 200 OK."""
    from .test_digest_replay import RawPhone, status
    from .test_sip_edge import Tokens

    bearer = f"Bearer {Tokens(running_stack).agent('1001')}"
    node_b = (PEER_NODE_IP, int(second_kamailio.rsplit(":", 1)[1]))
    shared = redis_lib.Redis(host="127.0.0.1", port=running_stack.config.services.redis.port)
    key = agent_contact("default", "1001")
    for round_ in range(4):  # each from its own address: the flood counter is per source
        phone = RawPhone(running_stack, source_ip=f"127.0.0.{80 + round_}", extension="1001")
        node_a = phone.server
        try:
            for _ in range(8):  # every worker of node A has published the contact
                assert status(phone.register(60, bearer)) == 200
            phone.server = node_b
            assert status(phone.register(0, bearer)) == 200
            assert not shared.exists(key)
            time.sleep(0.2)  # DMQ's way to node A; well within the second
            phone.server = node_a
            for attempt in range(8):
                assert status(phone.register(60, bearer)) == 200
                assert shared.exists(key), f"round {round_}, {attempt}: not reachable"
            # No binding left behind for other tests.
            assert status(phone.register(0, bearer)) == 200
        finally:
            phone.close()


def test_a_ban_made_by_one_node_holds_on_the_other_and_unban_lifts_both(
    running_stack: RunningStack, second_kamailio: str
) -> None:
    from .test_sip_edge import _send_raw_options

    node_b = (PEER_NODE_IP, int(second_kamailio.rsplit(":", 1)[1]))
    scanner = "127.0.0.21"

    def answered(node: tuple[str, int] | None) -> bool:
        return _send_raw_options(running_stack, scanner, "Polycom", node=node) is not None

    assert answered(None) and answered(node_b)
    _send_raw_options(running_stack, scanner, "friendly-scanner", node=node_b)
    # Banned by node B; node A hears of it over DMQ and drops the scanner too.
    deadline = time.monotonic() + 5
    while answered(None) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answered(None) and not answered(node_b)
    status = omnicc_cli(running_stack.directory, "status")
    assert scanner in status.stdout and "scanner" in status.stdout
    # `omnicc unban` on node A's machine lifts it on A and, over DMQ, on B.
    unban = omnicc_cli(running_stack.directory, "unban", scanner)
    assert unban.returncode == 0, unban.stdout + unban.stderr
    deadline = time.monotonic() + 5
    while not answered(node_b) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answered(None) and answered(node_b)


@pytest.fixture
def second_node_with_two_asterisks(running_stack: RunningStack):
    """Node B: its own Kamailio and Asterisk, on the shared Redis and FastAGI server, with
    both Asterisk nodes (A's and B's) in its dispatcher set."""
    directory = make_stack_dir("omnicc-node-b2-")
    kamailio_port, asterisk_port = free_ports(2)
    a_asterisk = running_stack.config.services.asterisk.port
    text = running_stack.stack.config_path.read_text()
    text = text.replace("node: it-main", "node: it-node-b2")
    # Not a DMQ peer of A's: this node only tests the dispatcher.
    text = re.sub(r"kamailio_nodes:\n(  - .*\n)+", "", text)
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
    # Nodes of one deployment share the secrets (the digest secret above all: ephemeral
    # credentials and digest nonces must check on every node).
    shutil.copytree(running_stack.stack.var / "secrets", stack.var / "secrets")
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
