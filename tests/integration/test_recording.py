"""Recording per inbound route (`record: always | never`), end to end through real
Kamailio, Asterisk, the FastAGI server and Redis, with SIPp as carrier and agent phone:
a recording route's call to an agent leaves a WAV file under Asterisk's monitor directory,
named by the call_recording event; a route that does not record leaves none.

Its own stack (one for the module): the config below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp

from .conftest import TRUNK_IP, RunningStack, stack_up
from .test_first_call import agent_online, now_id
from .test_queue_calls import wait_for_events
from .test_queue_features import monitor_dir, speaking_caller

pytestmark = pytest.mark.integration

RECORDING_CONFIG = """\
node: it-{name}
services:
  listen: 127.0.0.1
  kamailio: {{port: {kamailio}}}
  asterisk: {{port: {asterisk}}}
  agi:      {{port: {agi}}}
  redis:    {{port: {redis}}}
  postgres: {{port: {postgres}}}
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
"""


@pytest.fixture(scope="module")
def recording_stack() -> Iterator[RunningStack]:
    with stack_up("omnicc-it-recording-", "recording", RECORDING_CONFIG) as running:
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
