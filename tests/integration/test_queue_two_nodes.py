"""One queue served by two Asterisk nodes, each with its own FastAGI server, on one Redis;
`kill -9` of one FastAGI server in the middle of a run of calls.

Node A is a whole stack whose Kamailio spreads calls over both Asterisk nodes
(asterisk_nodes). Node B is another Asterisk and another FastAGI server (node it-b, its
own config: the same Redis and Kamailio, its own ports), started beside it. Its Asterisk
asks its own FastAGI server (OMNICC_AGI of its rendered extensions.conf).

When B's FastAGI server dies: B's waiting callers leave by the dialplan's failover (the
AGI fails: Asterisk hangs up) and the ACD fails their calls over when their call lease
runs out (nobody renews it); the agents B had reserved come back by their reservation
lease; new calls reaching B's Asterisk are refused (503) and Kamailio hands them to A,
which carries on. Calls already connected on B end in the ACD when their lease runs out
(B's FastAGI server no longer vouches for them): their agents go into wrap-up, then READY.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.config import load_config
from omnicc.keys import agent_hash
from omnicc.stack import Service, Stack

from .conftest import TRUNK_IP, RunningStack, free_ports, make_stack_dir, stack_up
from .queue_agents import agents_yaml, phones_online, queue_events, wait_until
from .test_first_call import now_id

pytestmark = pytest.mark.integration

ANSWERING = ["4001", "4002", "4003", "4004", "4005"]
RINGING = "4006"  # its phone rings and never answers: there is always a reservation
AGENTS = [*ANSWERING, RINGING]
RING_SECONDS = 4
RESERVATION_LEASE_SECONDS = RING_SECONDS + 5  # agi/handlers/queue_setup.py's margin
CALL_LEASE_SECONDS = 5
CALLS = 24

TWO_NODE_CONFIG = f"""\
node: it-{{name}}
services:
  listen: 127.0.0.1
  kamailio: {{{{port: {{kamailio}}}}}}
  asterisk: {{{{port: {{asterisk}}}}}}
  agi:      {{{{port: {{agi}}}}}}
  redis:    {{{{port: {{redis}}}}}}
  postgres: {{{{port: {{postgres}}}}}}
asterisk_nodes:
  - {{{{host: 127.0.0.1, port: {{asterisk}}}}}}
  - {{{{host: 127.0.0.1, port: {{asterisk_b}}}}}}
tenants:
  - name: default
    domain: {{domain}}
    agents:
{agents_yaml(AGENTS)}
    trunks:
      - {{{{name: test-carrier, address: {{trunk}}}}}}
    inbound_routes:
      - {{{{did: "5550401", destination: "queue:shared"}}}}
    queues:
      - name: shared
        members: [{", ".join(f'{{{{agent: "{e}"}}}}' for e in AGENTS)}]
        ring_timeout_seconds: {RING_SECONDS}
        call_lease_seconds: {CALL_LEASE_SECONDS}
        max_wait_seconds: 120
        failover: hangup
        overflow_when_no_agents: false
        wrapup_seconds: 1
"""


class NodeB:
    """Node B's Asterisk and FastAGI server, from node A's config with its own node name
    and ports (the Redis, PostgreSQL and Kamailio stay A's: B runs none of its own)."""

    def __init__(self, a: RunningStack, asterisk_port: int):
        self.directory = make_stack_dir("omnicc-it-node-b-")
        text = a.stack.config_path.read_text().replace("node: it-a", "node: it-b")
        text = re.sub(r"asterisk: \{port: \d+\}", f"asterisk: {{port: {asterisk_port}}}", text)
        text = re.sub(r"agi:      \{port: \d+\}", f"agi:      {{port: {free_ports(1)[0]}}}",
                      text)
        path = self.directory / "omnicc.yaml"
        path.write_text(text)
        self.stack = Stack(load_config(path), path, self.directory / "var")
        self.services: dict[str, Service] = {s.name: s for s in self.stack.services}

    def start(self) -> None:
        self.stack._dirs()
        for name in ("agi", "asterisk"):
            self.services[name].start(progress=print)

    def kill_agi(self) -> int:
        """kill -9 of B's FastAGI server (the process this test started)."""
        pid = self.services["agi"].pid()
        assert pid is not None, "node B's FastAGI server is not running"
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: self.services["agi"].pid() is None, 10)
        return pid

    def stop(self) -> None:
        for name in ("asterisk", "agi"):
            self.services[name].stop(progress=print)
        if os.environ.get("OMNICC_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[RunningStack, NodeB]]:
    asterisk_b = free_ports(1)[0]
    with stack_up("omnicc-it-node-a-", "a", TWO_NODE_CONFIG, asterisk_b=asterisk_b) as a:
        b = NodeB(a, asterisk_b)
        try:
            b.start()
            yield a, b
        finally:
            b.stop()


def snapshot(stack: RunningStack) -> dict[str, dict[str, str]]:
    """Each agent's state and call, with the node that holds the call."""
    r = stack.redis()
    out = {}
    for ext in AGENTS:
        agent = r.hgetall(agent_hash("default", ext))
        call = agent.get("call", "")
        node = r.hget(f"{{t:default}}:call:{call}", "node") if call else ""
        out[ext] = {"state": agent.get("state", ""), "call": call, "node": node or ""}
    return out


def test_kill_9_of_one_fastagi_server_in_the_middle_of_a_run(
    two_nodes: tuple[RunningStack, NodeB], sipp_dir: Path
) -> None:
    a, b = two_nodes
    acd = AcdSync(a.redis(), "it-two-nodes-test")
    since = now_id()
    with phones_online(a, sipp_dir, ANSWERING, scenario="agent_answer_talk.xml") as phones, \
            phones_online(a, sipp_dir, [RINGING], scenario="agent_ring_cancelled.xml") as _:
        for ext in AGENTS:
            assert acd.login("default", ext).ok, ext
        caller = sipp.carrier_calls(sipp_dir, proxy=a.proxy, did="5550401", local_ip=TRUNK_IP,
                                    calls=CALLS, rate=2, scenario="caller_waits_for_bye.xml",
                                    run_timeout_s=300, name="two-nodes").start()

        # In the middle of the run (a third of the calls in), once node B has answered
        # calls and holds a reservation: kill its FastAGI server at once.
        held: dict[str, dict[str, str]] = {}

        def b_holds_a_reservation() -> bool:
            events = queue_events(a, since)
            answered_nodes = {e.get("call_node") for e in events
                              if e["event"] == "call_answered"}
            enqueued = sum(1 for e in events if e["event"] == "call_enqueued")
            if enqueued < CALLS // 3 or "it-b" not in answered_nodes:
                return False
            held.update(snapshot(a))
            return any(s["state"] == "RESERVED" and s["node"] == "it-b" for s in held.values())

        assert wait_until(b_holds_a_reservation, 30, step=0.005), held
        b.kill_agi()
        killed_at = time.time()
        at_kill = snapshot(a)
        before_kill = queue_events(a, since)
        answered_before = {e["call"] for e in before_kill if e["event"] == "call_answered"}
        # Reservations of B's calls just before the kill that were not answered (an answer
        # needs B's FastAGI server: none can come after).
        reserved_by_b = {ext: s["call"] for ext, s in held.items()
                         if s["state"] == "RESERVED" and s["node"] == "it-b"
                         and s["call"] not in answered_before}

        assert caller.wait(timeout=300) == 0, caller.errors.read_text(errors="replace")
        # The leases of what B held run out; a tick settles them.

        def b_leases_settled() -> bool:
            acd.tick("default")
            released = {(e["agent"], e["call"]) for e in queue_events(a, since)
                        if e["event"] == "call_released"
                        and e.get("reason") == "reservation_expired"}
            return set(reserved_by_b.items()) <= released

        assert wait_until(b_leases_settled, RESERVATION_LEASE_SECONDS + 20, step=0.5), \
            (reserved_by_b, snapshot(a))
        time.sleep(CALL_LEASE_SECONDS)  # and the call lease of the last call B held
        acd.tick("default")
        at_end = snapshot(a)
        for phone in phones.values():
            phone.stop()
    events = queue_events(a, since)

    def node_of(event: dict[str, str]) -> str:
        return event.get("call_node", "")

    enqueued = {e["call"]: node_of(e) for e in events if e["event"] == "call_enqueued"}
    answered = {e["call"]: e for e in events if e["event"] == "call_answered"}
    failed_over = {e["call"]: e for e in events if e["event"] == "call_failed_over"}
    ended_reason = {e["call"]: e.get("reason", "") for e in events
                    if e["event"] == "call_ended" and e.get("call")}
    ended = set(ended_reason)

    # One queue served across both: both nodes' calls were answered before the kill.
    assert {node_of(e) for e in before_kill if e["event"] == "call_answered"} == {
        "it-a", "it-b"}

    # Every caller got through to omnicc and was ended by it: bridged to an agent, or
    # hung up by B's dialplan failover (its FastAGI server gone). None was refused:
    # Kamailio handed the calls B's Asterisk refused (503) to A.
    calls = caller.traced_dialogs()
    assert len(calls) == CALLS
    assert all(c.answered and c.ended_by == "BYE received" for c in calls), calls

    # The other server carries on: after the kill only A enqueues, and A's calls are
    # answered (never failed over, never abandoned).
    after_kill = [e for e in events if e["event"] == "call_enqueued"
                  and float(e["ts"]) > killed_at]
    assert after_kill and {node_of(e) for e in after_kill} == {"it-a"}
    a_calls = {call for call, node in enqueued.items() if node == "it-a"}
    assert a_calls <= set(answered) and a_calls <= ended, a_calls - set(answered)

    # B's callers went to failover: each call B held without an agent on it at the kill
    # was failed over when its call lease ran out (nobody renewed it).
    connected_b = {ext: s["call"] for ext, s in at_kill.items()
                   if s["state"] == "ONCALL" and s["node"] == "it-b"}
    b_unanswered = {call for call, node in enqueued.items()
                    if node == "it-b" and call not in answered}
    assert set(reserved_by_b.values()) <= b_unanswered
    for call in b_unanswered:
        assert call in failed_over, (call, [e for e in events if e.get("call") == call])
        assert failed_over[call]["reason"] == "call_lease_expired", failed_over[call]
    # B's answered calls ended normally, except those connected at the kill: nobody told
    # the ACD of their end (B's hang-up handlers failed), they ended by their lease.
    b_answered = {call for call, node in enqueued.items() if node == "it-b"} - b_unanswered
    assert b_answered <= ended
    assert {ended_reason[call] for call in connected_b.values()} <= {"lease_expired"}

    # B's reserved agents came back by lease; nobody is left RESERVED or ringing for a
    # dead server, nor ONCALL on a call B held.
    assert reserved_by_b, (held, at_kill)
    assert not [ext for ext, s in at_end.items() if s["state"] == "RESERVED"
                and s["node"] == "it-b"], at_end
    assert not [ext for ext, s in at_end.items() if s["state"] == "ONCALL"
                and s["node"] == "it-b"], at_end
    print("at the kill:", at_kill, "\nB's unanswered calls failed over:", len(b_unanswered),
          "\nconnected through B, ended by their lease:", connected_b)
