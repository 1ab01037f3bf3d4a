"""An agent's outbound calls on two Asterisk nodes (each with its FastAGI server, one
Redis), through real Kamailio, with SIPp playing the agent's phone and two carriers:

- the do-not-call list, loaded with the real `omnicc dnc` CLI: a listed number is refused
  with 403 and no carrier receives anything; an unlisted one goes out; an emergency
  number on the list still goes out;
- no duplicate dialling: when every carrier answers 503, each is dialled exactly once
  (the node's 503 carries Q.850 cause 42, which Kamailio does not take to the other node);
- a node whose FastAGI server is dead answers 503 with cause 34, and Kamailio sends the
  call on to the other node, which dials it (the last test: it kills node B's server).

Kamailio relays a final reply only once every branch is over, so when the agent has its
final reply every node that was going to dial has dialled: the carriers' counts are final.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.events import read_events
from omnicc.sipp import SippRun

from .conftest import SERVICES_TEMPLATE, RunningStack, free_ports, omnicc_cli, stack_up
from .test_first_call import now_id
from .test_outbound_calls import agent_dials, final_status, invites, named
from .test_queue_two_nodes import NodeB

pytestmark = pytest.mark.integration

CARRIER_A_IP = "127.0.0.120"
CARRIER_B_IP = "127.0.0.121"
LISTED = "95550000"          # sent as +345550000, which the do-not-call list holds
UNLISTED = "95551234"        # sent as +345551234

CONFIG = SERVICES_TEMPLATE + """\
asterisk_nodes:
  - {{host: 127.0.0.1, port: {asterisk}}}
  - {{host: 127.0.0.1, port: {asterisk_b}}}
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: carrier-a, address: 127.0.0.120, dial_host: 127.0.0.120,
          dial_port: {carrier_a}}}
      - {{name: carrier-b, address: 127.0.0.121, dial_host: 127.0.0.121,
          dial_port: {carrier_b}}}
    emergency_numbers: ["112"]
    outbound_routes:
      - name: national
        patterns: [_9NXXXXXX]
        strip: 1
        prepend: "+34"
        trunks: [carrier-a, carrier-b]
      - {{name: emergency, patterns: ["112"], trunks: [carrier-a, carrier-b]}}
"""


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[RunningStack, NodeB]]:
    asterisk_b, carrier_a, carrier_b = free_ports(3)
    with stack_up("omnicc-it-outbound2-a-", "a", CONFIG, asterisk_b=asterisk_b,
                  carrier_a=carrier_a, carrier_b=carrier_b) as a:
        b = NodeB(a, asterisk_b)
        try:
            b.start()
            yield a, b
        finally:
            b.stop()


def carrier(stack: RunningStack, workdir: Path, name: str, scenario: str,
            calls: int = 10) -> SippRun:
    """A carrier (SIPp UAS) where trunk `name` dials, answering each call by `scenario`."""
    trunk = stack.config.tenants[0].trunk(name)
    assert trunk is not None
    ip = {"carrier-a": CARRIER_A_IP, "carrier-b": CARRIER_B_IP}[name]
    return SippRun(name, [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / scenario), "-i", ip,
        "-p", str(trunk.dial_port), "-m", str(calls), *sipp._common(name, workdir),
    ], workdir).start()


def call(stack: RunningStack, workdir: Path, dialled: str, name: str,
         scenarios: tuple[str, str] = ("carrier_answers.xml", "carrier_answers.xml"),
         ) -> tuple[SippRun, SippRun, SippRun]:
    """One call of agent 1001 to `dialled` with both carriers listening; returns the agent
    and the carriers, stopped, once the agent's call is over."""
    carriers = [carrier(stack, workdir, "carrier-a", scenarios[0]),
                carrier(stack, workdir, "carrier-b", scenarios[1])]
    try:
        time.sleep(0.3)  # the carriers' sockets are open
        agent = agent_dials(stack, workdir, dialled, talk_ms=500, name=name)
        assert agent.run(timeout=60) == 0, agent.trace()
    finally:
        for run in carriers:
            run.stop()
    return agent, carriers[0], carriers[1]


def events_of(stack: RunningStack, since: str) -> list[dict[str, str]]:
    return read_events(stack.redis(), "default", since=since)


# ---------------------------------------------------------------------------- do not call


def test_the_cli_loads_and_answers_for_the_do_not_call_list(
    two_nodes: tuple[RunningStack, NodeB], tmp_path: Path
) -> None:
    stack, _ = two_nodes
    bad = tmp_path / "bad.csv"
    bad.write_text("number,reason\n+34 555 00 00,asked\n555-CALL,oops\n")
    result = omnicc_cli(stack.directory, "dnc", "import", str(bad))
    assert result.returncode == 2
    assert "do-not-call list not imported, 1 bad row" in result.stderr
    assert "line 3: '555-CALL' is not a phone number" in result.stderr
    assert omnicc_cli(stack.directory, "dnc", "count").stdout.strip() == \
        "tenant default: 0 on the do-not-call list"

    good = tmp_path / "dnc.csv"
    good.write_text("number,reason\n+34 555 00 00,asked not to be called\n112,by mistake\n")
    result = omnicc_cli(stack.directory, "dnc", "import", "--replace", str(good))
    assert result.returncode == 0, result.stderr
    assert "2 on the do-not-call list now" in result.stdout
    checked = omnicc_cli(stack.directory, "dnc", "check", "+34 555 00 00")
    assert checked.returncode == 0
    assert checked.stdout.strip() == \
        "+345550000: on the do-not-call list in tenant default (asked not to be called)"
    assert omnicc_cli(stack.directory, "dnc", "check", "+345551234").returncode == 1
    # One number in and out again; the blacklist is another list.
    assert omnicc_cli(stack.directory, "dnc", "add", "5550199", "--reason", "x").returncode == 0
    assert omnicc_cli(stack.directory, "dnc", "remove", "555-0199").returncode == 0
    assert omnicc_cli(stack.directory, "dnc", "remove", "5550199").returncode == 1
    assert omnicc_cli(stack.directory, "blacklist", "check", "+345550000").returncode == 1
    assert "2 on the do-not-call list" in omnicc_cli(stack.directory, "dnc", "count").stdout


def test_a_listed_number_is_refused_with_403_and_no_carrier_receives_anything(
    two_nodes: tuple[RunningStack, NodeB], sipp_dir: Path
) -> None:
    stack, _ = two_nodes
    since = now_id()
    agent, carrier_a, carrier_b = call(stack, sipp_dir, LISTED, "listed")
    assert final_status(agent) == 403, agent.first_lines()
    assert invites(carrier_a) == [] and invites(carrier_b) == []
    events = events_of(stack, since)
    (refused,) = named(events, "outbound_refused")
    assert (refused["refusal"], refused["agent"]) == ("do_not_call", "1001")
    assert refused["reason"] == "'+345550000' is on the do-not-call list"
    assert named(events, "outbound_trunk_dialled") == []


def test_an_unlisted_number_goes_out(two_nodes: tuple[RunningStack, NodeB],
                                     sipp_dir: Path) -> None:
    stack, _ = two_nodes
    agent, carrier_a, carrier_b = call(stack, sipp_dir, UNLISTED, "unlisted")
    assert final_status(agent) == 200
    assert [i.split()[1] for i in invites(carrier_a)] == [
        f"sip:+345551234@{CARRIER_A_IP}:{stack.config.tenants[0].trunks[0].dial_port}"]
    assert invites(carrier_b) == []


def test_an_emergency_number_on_the_list_still_goes_out(
    two_nodes: tuple[RunningStack, NodeB], sipp_dir: Path
) -> None:
    stack, _ = two_nodes
    assert omnicc_cli(stack.directory, "dnc", "check", "112").returncode == 0  # listed
    since = now_id()
    agent, carrier_a, _ = call(stack, sipp_dir, "112", "emergency")
    assert final_status(agent) == 200
    (invite,) = invites(carrier_a)
    assert invite.startswith("INVITE sip:112@")
    (routed,) = named(events_of(stack, since), "outbound_routed")
    assert (routed["route"], routed["emergency"]) == ("emergency", "1")


# ---------------------------------------------------------------------------- no redial


def test_every_carrier_answering_503_is_dialled_exactly_once_across_two_nodes(
    two_nodes: tuple[RunningStack, NodeB], sipp_dir: Path
) -> None:
    """Two calls: Kamailio takes the nodes in turn, so each node ends one of them with
    every trunk failed. Neither call reaches the other node: each carrier gets one INVITE
    per call, never two."""
    stack, _ = two_nodes
    since = now_id()
    nodes = set()
    for attempt in range(2):
        agent, carrier_a, carrier_b = call(
            stack, sipp_dir, UNLISTED, f"all-fail-{attempt}",
            ("carrier_unavailable.xml", "carrier_unavailable.xml"))
        assert final_status(agent) in (500, 503), agent.first_lines()
        assert len(invites(carrier_a)) == 1, carrier_a.first_lines()
        assert len(invites(carrier_b)) == 1, carrier_b.first_lines()
        events = events_of(stack, since)
        failed = [e for e in named(events, "outbound_failed")
                  if e["reason"] == "all_trunks_failed"]
        assert len(failed) == attempt + 1
        nodes.add(failed[-1]["node"])
    assert nodes == {"it-a", "it-b"}  # both nodes ended one call, and kept it ended
    assert len(named(events_of(stack, since), "outbound_routed")) == 2


def test_a_node_whose_fastagi_server_is_dead_passes_the_call_to_the_other(
    two_nodes: tuple[RunningStack, NodeB], sipp_dir: Path
) -> None:
    """Node B's FastAGI server is killed (this test is last): B's dialplan cannot ask
    agent_call and answers 503 with cause 34; Kamailio sends the call to node A, which
    dials it. Of two calls in a row, Kamailio offers one to B first."""
    stack, b = two_nodes
    b.kill_agi()
    log = b.directory / "var" / "log" / "asterisk" / "messages.log"
    refused_before = agi_failures(log)
    since = now_id()
    for attempt in range(2):
        agent, carrier_a, carrier_b = call(stack, sipp_dir, UNLISTED, f"dead-agi-{attempt}")
        assert final_status(agent) == 200, agent.first_lines()
        assert len(invites(carrier_a)) == 1 and invites(carrier_b) == []
    routed = named(events_of(stack, since), "outbound_routed")
    assert [e["node"] for e in routed] == ["it-a", "it-a"]
    # Node B was offered a call and could not ask its FastAGI server about it.
    assert agi_failures(log) > refused_before


def agi_failures(log: Path) -> int:
    """Node B's Asterisk's log lines of an agent_call it could not ask."""
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "failed for url" in line and "/agent_call?" in line)
