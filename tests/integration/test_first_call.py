"""The first call end to end, through real Kamailio, Asterisk, the FastAGI server and SIPp.

carrier (SIPp, 127.0.0.3) -> Kamailio -> Asterisk -> AGI inbound_route -> Asterisk Dial
-> Kamailio (registrar lookup) -> agent phone (SIPp) answers -> carrier hangs up (BYE)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.events import read_events
from omnicc.keys import agent_contact
from omnicc.sipp import SippRun

from .conftest import DOMAIN, STRANGER_IP, TRUNK_IP, RunningStack

pytestmark = pytest.mark.integration

PASSWORDS = {"1001": "it-pass-1001", "1002": "it-pass-1002"}


@contextlib.contextmanager
def agent_online(stack: RunningStack, workdir: Path, extension: str,
                 calls: int = 1, proxy: str | None = None,
                 scenario: str = "agent_answer.xml") -> Iterator[SippRun]:
    """An agent phone listening (taking calls as `scenario` says), registered through
    Kamailio (the stack's, or `proxy`); unregistered afterwards."""
    from omnicc.demo import free_udp_port

    proxy = proxy or stack.proxy
    port = free_udp_port("127.0.0.1")
    phone = sipp.agent_phone(workdir, local_ip="127.0.0.1", port=port, calls=calls,
                             scenario=scenario).start()
    time.sleep(0.3)
    try:
        reg = sipp.agent_register(
            workdir, proxy=proxy, extension=extension, password=PASSWORDS[extension],
            domain=DOMAIN, local_ip="127.0.0.1", contact_port=port,
        )
        assert reg.run(timeout=30) == 0, reg.trace()
        yield phone
    finally:
        phone.stop()
        sipp.agent_register(
            workdir, proxy=proxy, extension=extension, password=PASSWORDS[extension],
            domain=DOMAIN, local_ip="127.0.0.1", contact_port=port, expires=0,
            name=f"unregister-{extension}",
        ).run(timeout=30)


def events_since(stack: RunningStack, since: str, want: int, timeout: float = 5.0) -> list[dict]:
    """The tenant's events after `since`, waiting briefly for trailing ones."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(stack.redis(), "default", since=since)
        if len(events) >= want or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def now_id() -> str:
    return f"{int(time.time() * 1000)}-0"


def final_status(run: SippRun) -> int:
    """The final (>= 200) status code the caller received for its INVITE."""
    codes = [int(line.split()[1]) for line in run.first_lines() if line.startswith("SIP/2.0 ")]
    finals = [c for c in codes if c >= 200]
    assert finals, f"no final response in {run.first_lines()}"
    return finals[0]


def test_agent_registers_with_digest_and_answers_a_call_to_the_demo_did(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    with agent_online(running_stack, sipp_dir, "1001") as phone:
        # The ACD's view of the registration, with the binding's lifetime.
        contact = agent_contact("default", "1001")
        assert running_stack.redis().get(contact).startswith("it-main sip:1001@127.0.0.1:")
        assert 0 < running_stack.redis().ttl(contact) <= 300
        caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=1000)
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()

    # SIPp's view: the caller got 200 and its BYE was answered; the agent phone received
    # the INVITE for its AOR via Kamailio (Record-Route), answered it, and got the BYE.
    assert caller.successful_calls == 1
    lines = phone.first_lines()
    assert lines[0].startswith("INVITE sip:1001@127.0.0.1:"), lines
    assert "SIP/2.0 200 OK" in lines and any(line.startswith("BYE ") for line in lines)
    kamailio = f"127.0.0.1:{running_stack.config.services.kamailio.port}"
    assert f"Record-Route: <sip:{kamailio};lr" in phone.trace()

    # Unregistered (Expires: 0): the ACD no longer sees the agent reachable.
    assert running_stack.redis().get(agent_contact("default", "1001")) is None

    # The FastAGI server's record: the routing decision and the answered call.
    events = events_since(running_stack, since, want=2)
    routed = [e for e in events if e["event"] == "call_routed"]
    ended = [e for e in events if e["event"] == "call_ended"]
    assert len(routed) == 1 and len(ended) == 1, events
    assert routed[0]["did"] == "5550100"
    assert routed[0]["agent"] == "1001"
    assert routed[0]["trunk"] == "test-carrier"
    assert routed[0]["node"] == "it-main"
    assert routed[0]["caller"] == "5491155550000"
    assert ended[0]["uniqueid"] == routed[0]["uniqueid"]
    assert ended[0]["dialstatus"] == "ANSWER"


def test_wrong_digest_password_is_refused(running_stack: RunningStack, sipp_dir: Path) -> None:
    reg = sipp.agent_register(
        sipp_dir, proxy=running_stack.proxy, extension="1001", password="not-the-password",
        domain=DOMAIN, local_ip="127.0.0.1", contact_port=9,
    )
    assert reg.run(timeout=30) != 0
    codes = [line for line in reg.first_lines() if line.startswith("SIP/2.0")]
    assert codes and all(line.startswith("SIP/2.0 401") for line in codes), codes


def test_unknown_extension_gets_the_same_challenge_as_a_known_one(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    """No extension enumeration: a missing extension is challenged like an existing one."""
    replies = {}
    for ext in ("1001", "1999"):
        reg = sipp.agent_register(
            sipp_dir, proxy=running_stack.proxy, extension=ext, password="wrong-password",
            domain=DOMAIN, local_ip="127.0.0.1", contact_port=9, name=f"enum-{ext}",
        )
        reg.run(timeout=30)
        replies[ext] = [line for line in reg.first_lines() if line.startswith("SIP/2.0")]
    assert replies["1001"] == replies["1999"]


def test_call_to_an_agent_who_is_not_registered_fails_cleanly(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550101",
                                local_ip=TRUNK_IP, talk_ms=500)
    assert caller.run(timeout=60) != 0
    assert final_status(caller) >= 400
    events = events_since(running_stack, since, want=2)
    ended = [e for e in events if e["event"] == "call_ended"]
    assert ended and ended[0]["agent"] == "1002"
    assert ended[0]["dialstatus"] in {"CHANUNAVAIL", "CONGESTION", "NOANSWER"}


def test_unknown_did_is_rejected_as_unallocated(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5559999",
                                local_ip=TRUNK_IP, talk_ms=500)
    assert caller.run(timeout=60) != 0
    # Q.850 1 "unallocated number": 404 Not Found.
    assert final_status(caller) == 404
    events = events_since(running_stack, since, want=1)
    assert [e["event"] for e in events][:1] == ["call_unrouted"]
    assert "5559999" in events[0]["reason"]


def test_hangup_destination_rejects_the_call(running_stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550199",
                                local_ip=TRUNK_IP, talk_ms=500)
    assert caller.run(timeout=60) != 0
    assert final_status(caller) in {403, 603}
    routed = [e for e in events_since(running_stack, since, want=1)
              if e["event"] == "call_routed"]
    assert routed and routed[0]["destination"] == "hangup"


def test_call_from_an_untrusted_address_never_reaches_asterisk(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550100",
                                local_ip=STRANGER_IP, talk_ms=500)
    assert caller.run(timeout=60) != 0
    assert final_status(caller) in {401, 403, 407}
    time.sleep(0.5)
    assert read_events(running_stack.redis(), "default", since=since) == []


def test_fastagi_server_down_sends_the_call_to_failover(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    """Asterisk cannot reach the FastAGI server: the call is refused at once with a 5xx
    (Asterisk answers 503; Kamailio, with no other Asterisk node to try, relays it as 500
    as RFC 3261 16.7 asks), never left ringing. The server comes back with `up`."""
    agi = next(s for s in running_stack.stack.services if s.name == "agi")
    agi.stop(progress=lambda _line: None)
    try:
        caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=500)
        assert caller.run(timeout=60) != 0
        assert final_status(caller) in {500, 503}
    finally:
        running_stack.stack.up(progress=lambda _line: None)
    assert agi.status().healthy


def test_events_reach_postgresql_and_an_outage_loses_none(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    """The history writer copies the event stream into call_event; with PostgreSQL down,
    events wait in Redis and arrive once it is back, none lost and none twice."""
    import psycopg

    stack = running_stack.stack
    postgres = next(s for s in stack.services if s.name == "postgres")

    def rows_for(uniqueids: set[str]) -> list[tuple[str, str]]:
        with psycopg.connect(stack.postgres_dsn()) as conn:
            return conn.execute(
                "SELECT uniqueid, event FROM call_event WHERE uniqueid = ANY(%s)",
                (list(uniqueids),),
            ).fetchall()

    def wait_rows(uniqueids: set[str], want: int) -> list[tuple[str, str]]:
        deadline = time.monotonic() + 20
        while True:
            rows = rows_for(uniqueids)
            if len(rows) >= want or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)

    since = now_id()
    caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550199",
                                local_ip=TRUNK_IP, talk_ms=200, name="before-outage")
    caller.run(timeout=60)
    first = {e["uniqueid"] for e in events_since(running_stack, since, want=2)}
    assert sorted(event for _, event in wait_rows(first, 2)) == ["call_ended", "call_routed"]

    postgres.stop(progress=lambda _line: None)
    try:
        since = now_id()
        for i in range(3):
            sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550199",
                               local_ip=TRUNK_IP, talk_ms=200, name=f"outage-{i}").run(timeout=60)
        during = {e["uniqueid"] for e in events_since(running_stack, since, want=6)}
        assert len(during) == 3
    finally:
        stack.up(progress=lambda _line: None)
    rows = wait_rows(during, 6)
    assert len(rows) == 6 and len(set(rows)) == 6, rows


def test_caller_who_hangs_up_while_the_agent_rings_cancels_the_agents_phone(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    """CANCEL crosses Kamailio, Asterisk and Kamailio again: the agent's phone stops
    ringing (200 for CANCEL, 487 for the INVITE) and the caller gets its 487."""
    from omnicc.demo import free_udp_port

    since = now_id()
    port = free_udp_port("127.0.0.1")
    phone = SippRun("ringing-phone", [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "agent_ring_cancelled.xml"),
        "-i", "127.0.0.1", "-p", str(port), "-m", "1", *sipp._common("ringing-phone", sipp_dir),
    ], sipp_dir).start()
    time.sleep(0.3)
    try:
        reg = sipp.agent_register(sipp_dir, proxy=running_stack.proxy, extension="1001",
                                  password=PASSWORDS["1001"], domain=DOMAIN,
                                  local_ip="127.0.0.1", contact_port=port)
        assert reg.run(timeout=30) == 0
        caller = SippRun("cancelling-caller", [
            sipp.sipp_binary(), running_stack.proxy, "-sf",
            str(sipp.SCENARIOS / "caller_cancels.xml"), "-i", TRUNK_IP, "-s", "5550100",
            "-m", "1", "-timeout", "30s", *sipp._common("cancelling-caller", sipp_dir),
        ], sipp_dir)
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
    finally:
        phone.stop()
        sipp.agent_register(sipp_dir, proxy=running_stack.proxy, extension="1001",
                            password=PASSWORDS["1001"], domain=DOMAIN, local_ip="127.0.0.1",
                            contact_port=port, expires=0, name="unregister-ringing").run(30)
    ended = [e for e in events_since(running_stack, since, want=2) if e["event"] == "call_ended"]
    assert ended and ended[0]["dialstatus"] == "CANCEL"


def test_an_agent_phone_answering_503_is_final_for_kamailio(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    """A refusal by the agent's phone is the call's outcome, not a node that could not
    serve: its Reason must not carry Q.850 34, by which Kamailio would set the whole call
    up again on another Asterisk node (omnicc/node_failover.py), ringing the agent twice."""
    from omnicc.node_failover import NODE_FAILURE_CAUSE, q850_cause

    with agent_online(running_stack, sipp_dir, "1001",
                      scenario="carrier_unavailable.xml") as phone:
        caller = sipp.carrier_calls(sipp_dir, proxy=running_stack.proxy, did="5550100",
                                    local_ip=TRUNK_IP, talk_ms=500, name="agent-503")
        caller.run(timeout=60)
        # Kamailio passes the phone's 503 to Asterisk as 500 (RFC 3261 16.7); Asterisk
        # ends the call with that.
        assert final_status(caller) == 500
        (refusal,) = [m for m in caller.traced_messages()
                      if not m.sent and m.method == "INVITE" and m.status == 500]
        assert q850_cause(refusal.header("reason")) not in (None, NODE_FAILURE_CAUSE), refusal
        invites = [m for m in phone.traced_messages()
                   if not m.sent and m.is_request and m.method == "INVITE"]
        assert len(invites) == 1
