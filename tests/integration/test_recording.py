"""Recording and customer identification, end to end through real
Kamailio, Asterisk, the FastAGI server and Redis, with SIPp as carrier and agent phone:
a recording route's call to an agent leaves a WAV file under Asterisk's monitor directory,
named by the call_recording event; a route that does not record leaves none. In an
on_demand queue, the agent's phone keys *3 (RFC 4733, SIPp's captures) during the call and
the call's file appears; an agent who keys nothing leaves none. An inbound route's HTTP
customer lookup (a local HTTP server in the test) sends the call where the answer says, or,
when the service is too slow, to the lookup's fallback. A route with account_entry reads
the caller's account number (RFC 4733) into the customer id.

Its own stack (one for the module): the config below.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.demo import free_udp_port
from omnicc.sipp import SippRun

from .conftest import DOMAIN, SERVICES_TEMPLATE, TRUNK_IP, RunningStack, stack_up
from .test_first_call import PASSWORDS, agent_online, now_id
from .test_queue_calls import wait_for_events
from .test_queue_features import monitor_dir, speaking_caller

pytestmark = pytest.mark.integration

RECORDING_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
    inbound_routes:
      - {{did: "5550130", destination: "agent:1001", record: always}}
      - {{did: "5550131", destination: "agent:1001", record: never}}
      - {{did: "5550132", destination: "queue:desk"}}
      - {{did: "5550140", destination: "hangup", lookup: {{url: "http://127.0.0.1:LOOKUP_PORT/who",
          timeout_ms: 500, fallback: "busy"}}}}
      - {{did: "5550141", destination: "hangup", lookup: {{url: "http://127.0.0.1:LOOKUP_PORT/slow",
          timeout_ms: 300, fallback: "agent:1001"}}}}
      - {{did: "5550150", destination: "hangup",
          account_entry: {{prompt: beep, max_digits: 6, timeout_seconds: 2}}}}
    queues:
      - name: desk
        members: [{{agent: "1001"}}]
        overflow_when_no_agents: false
        max_wait_seconds: 60
        record: on_demand
"""


class CustomerService(BaseHTTPRequestHandler):
    """The operator's CRM: /who knows every caller (to agent 1001); /slow answers late."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        body = json.dumps({"customer_id": "c-42", "destination": "agent:1001"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # omnicc stopped waiting
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def customer_service() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CustomerService)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def recording_stack(customer_service: int) -> Iterator[RunningStack]:
    config = RECORDING_CONFIG.replace("LOOKUP_PORT", str(customer_service))
    with stack_up("omnicc-it-recording-", "recording", config) as running:
        yield running


def test_a_recording_route_leaves_the_file_its_event_names(
        recording_stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    with agent_online(recording_stack, sipp_dir, "1001") as phone:
        caller = speaking_caller(recording_stack, sipp_dir, "5550130", silent_ms=500)
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(recording_stack, since, {"call_recording", "call_ended"})
    (routed,) = [e for e in events if e["event"] == "call_routed"]
    (recording,) = [e for e in events if e["event"] == "call_recording"]
    assert recording["call"] == recording["uniqueid"] == routed["uniqueid"]
    assert (recording["route"], recording["did"], recording["agent"]) == (
        "5550130", "5550130", "1001")
    assert recording["recording"].startswith("default/route-5550130/")
    assert recording["recording"].endswith(f"/{routed['uniqueid']}.wav")
    assert recordings_of(recording_stack, routed["uniqueid"]) == [
        ("", "1001", "always", recording["recording"])]
    path = monitor_dir(recording_stack) / recording["recording"]
    deadline = time.monotonic() + 5  # MixMonitor closes the file as the channel goes
    while not (path.exists() and path.stat().st_size > 8000):
        assert time.monotonic() < deadline, f"no recording at {path}"
        time.sleep(0.1)
    assert path.read_bytes()[:4] == b"RIFF"


def test_a_route_that_does_not_record_leaves_no_file(
        recording_stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    with agent_online(recording_stack, sipp_dir, "1001") as phone:
        caller = sipp.carrier_calls(sipp_dir, proxy=recording_stack.proxy, did="5550131",
                                    local_ip=TRUNK_IP, talk_ms=2000, name="not-recorded")
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(recording_stack, since, {"call_routed", "call_ended"})
    (routed,) = [e for e in events if e["event"] == "call_routed"]
    assert routed["agent"] == "1001"
    assert "call_recording" not in [e["event"] for e in events]
    assert list(monitor_dir(recording_stack).rglob(f"*{routed['uniqueid']}*")) == []
    assert not (monitor_dir(recording_stack) / "default" / "route-5550131").exists()


SIPP_CAPTURES = Path("/usr/share/sip-tester")  # SIPp's RFC 4733 captures (sip-tester)


def rtp_advanced(capture: bytes, seq: int = 1000, timestamp: int = 80000) -> bytes:
    """SIPp's capture of key 3 with its RTP sequence numbers and timestamps moved past
    those of its capture of '*' (which are higher): played after '*' in the same call,
    Asterisk would otherwise drop its packets as old. The UDP checksum is cleared (0: none)."""
    out = bytearray(capture)
    offset = 24  # pcap global header; Ethernet frames (link type 1), IPv4, UDP, RTP
    while offset < len(out):
        length = struct.unpack_from("<I", out, offset + 8)[0]
        udp, rtp = offset + 16 + 14 + 20, offset + 16 + 42
        struct.pack_into(">H", out, udp + 6, 0)
        old_seq, old_ts = struct.unpack_from(">HI", out, rtp + 2)
        struct.pack_into(">HI", out, rtp + 2, (old_seq + seq) & 0xFFFF,
                         (old_ts + timestamp) & 0xFFFFFFFF)
        offset += 16 + length
    return bytes(out)


@contextlib.contextmanager
def desk_agent(stack: RunningStack, workdir: Path, *, keys_record: bool) -> Iterator[SippRun]:
    """Agent 1001's phone, registered and logged in to the ACD: it answers and, with
    `keys_record`, keys *3 one second into the call (agent_answer_keys_record.xml)."""
    port = free_udp_port("127.0.0.1")
    if keys_record:
        shutil.copy(SIPP_CAPTURES / "dtmf_2833_star.pcap", workdir / "star.pcap")
        (workdir / "three.pcap").write_bytes(
            rtp_advanced((SIPP_CAPTURES / "dtmf_2833_3.pcap").read_bytes()))
        name = f"keys-record-{port}"
        phone = SippRun(name, [
            sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "agent_answer_keys_record.xml"),
            "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-d", "1000",
            *sipp._common(name, workdir)], workdir).start()
    else:
        phone = sipp.agent_phone(workdir, local_ip="127.0.0.1", port=port, calls=1).start()
    acd = AcdSync(stack.redis(), "it-recording")
    register = {"proxy": stack.proxy, "extension": "1001", "password": PASSWORDS["1001"],
                "domain": DOMAIN, "local_ip": "127.0.0.1", "contact_port": port}
    time.sleep(0.3)
    try:
        reg = sipp.agent_register(workdir, **register)
        assert reg.run(timeout=30) == 0, reg.trace()
        assert acd.login("default", "1001").ok
        yield phone
    finally:
        acd.logout("default", "1001", force=True)
        phone.stop()
        sipp.agent_register(workdir, **register, expires=0,
                            name=f"unregister-{port}").run(timeout=30)


def queued_call(stack: RunningStack, workdir: Path, phone: SippRun,
                since: str) -> list[dict[str, str]]:
    """A caller to the on_demand queue: silent 3 s after the answer, then speaking 3 s."""
    caller = speaking_caller(stack, workdir, "5550132", silent_ms=3000)
    assert caller.run(timeout=60) == 0, caller.trace()
    assert phone.wait(timeout=15) == 0, phone.trace()
    return wait_for_events(stack, since, {"call_answered", "call_ended"})


def test_an_agent_keying_the_code_records_an_on_demand_queue_call(
        recording_stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    with desk_agent(recording_stack, sipp_dir, keys_record=True) as phone:
        events = queued_call(recording_stack, sipp_dir, phone, since)
    (answered,) = [e for e in events if e["event"] == "call_answered"]
    recordings = [e for e in events if e["event"] == "call_recording"]
    log = (recording_stack.stack.var / "log" / "asterisk" / "messages.log").read_text(
        errors="replace")
    assert len(recordings) == 1, ([e["event"] for e in events], log[-6000:])
    recording = recordings[0]
    assert (recording["call"], recording["queue"], recording["agent"], recording["mode"]) == (
        answered["call"], "desk", "1001", "on_demand")
    assert recording["recording"].startswith("default/desk/")
    assert recording["recording"].endswith(f"/{answered['call']}.wav")
    path = monitor_dir(recording_stack) / recording["recording"]
    deadline = time.monotonic() + 5
    while not (path.exists() and path.stat().st_size > 8000):
        assert time.monotonic() < deadline, f"no recording at {path}"
        time.sleep(0.1)
    assert path.read_bytes()[:4] == b"RIFF"
    # Indexed with its call in PostgreSQL (the history writer; sql/002_recordings.sql).
    assert recordings_of(recording_stack, answered["call"]) == [
        ("desk", "1001", "on_demand", recording["recording"])]


def recordings_of(stack: RunningStack, call: str) -> list[tuple[str, str, str, str]]:
    """The call_recording view's rows of `call`, once the history writer stored them."""
    import psycopg

    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(stack.stack.postgres_dsn()) as conn:
            rows = conn.execute(
                "SELECT queue, agent, mode, recording FROM call_recording"
                " WHERE tenant = 'default' AND call = %s", (call,)).fetchall()
        if rows or time.monotonic() > deadline:
            return [tuple(r) for r in rows]
        time.sleep(0.2)


def test_an_on_demand_queue_call_nobody_records_leaves_no_file(
        recording_stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    with desk_agent(recording_stack, sipp_dir, keys_record=False) as phone:
        events = queued_call(recording_stack, sipp_dir, phone, since)
    (answered,) = [e for e in events if e["event"] == "call_answered"]
    assert "call_recording" not in [e["event"] for e in events]
    assert list(monitor_dir(recording_stack).rglob(f"*{answered['call']}*")) == []


# ---------------------------------------------------------------------------- customer lookup


@pytest.mark.parametrize(("did", "event"), [("5550140", "customer_identified"),
                                            ("5550141", "customer_lookup_failed")])
def test_a_customer_lookup_routes_the_call_or_falls_back(
        recording_stack: RunningStack, sipp_dir: Path, did: str, event: str) -> None:
    """Both routes' own destination is hangup: the agent is reached only through the
    service's answer (5550140) or the lookup's fallback when it is too slow (5550141)."""
    since = now_id()
    with agent_online(recording_stack, sipp_dir, "1001") as phone:
        caller = sipp.carrier_calls(sipp_dir, proxy=recording_stack.proxy, did=did,
                                    local_ip=TRUNK_IP, talk_ms=1000, name=f"lookup-{did}")
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(recording_stack, since, {event, "call_routed"})
    (looked_up,) = [e for e in events if e["event"] == event]
    (routed,) = [e for e in events if e["event"] == "call_routed"]
    assert looked_up["uniqueid"] == routed["uniqueid"]
    assert (routed["destination"], routed["agent"]) == ("agent", "1001")
    if event == "customer_identified":
        assert (looked_up["customer_id"], looked_up["destination"]) == ("c-42", "agent:1001")
    else:
        assert looked_up["reason"] == "no answer within 300 ms"
        assert looked_up["destination"] == "agent:1001"


def test_a_caller_keying_an_account_number_is_identified(
        recording_stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    shutil.copy(SIPP_CAPTURES / "dtmf_2833_7.pcap", sipp_dir / "dtmf.pcap")
    caller = sipp.carrier_calls(sipp_dir, proxy=recording_stack.proxy, did="5550150",
                                local_ip=TRUNK_IP, scenario="caller_keys_dtmf.xml",
                                talk_ms=500, name="account-7")
    assert caller.run(timeout=60) == 0, caller.trace()
    events = wait_for_events(recording_stack, since, {"customer_identified", "call_routed"})
    (identified,) = [e for e in events if e["event"] == "customer_identified"]
    (routed,) = [e for e in events if e["event"] == "call_routed"]
    assert (identified["customer_id"], identified["method"], identified["route"]) == (
        "7", "dtmf", "5550150")
    assert identified["uniqueid"] == routed["uniqueid"]
