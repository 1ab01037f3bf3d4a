"""Every trunk to every destination type: an inbound call on each of a tenant's trunks
reaches the right place, through real Kamailio, Asterisk, the FastAGI server, Redis and
SIPp playing two carriers, a PBX and a carrier Asterisk registers to.

    carrier-a (SIPp, 127.0.0.130)  \\
    carrier-b (SIPp, 127.0.0.131)   > Kamailio (trunk by source address) -> Asterisk
    pbx       (SIPp, 127.0.0.132)  /
    carrier-reg (SIPp, 127.0.0.133) -> Asterisk directly, at the contact it registered
                                       (line token; the trunk has no address at all)
      -> AGI inbound_route -> agent 1001 / queue sales (agent 1002) / IVR / time condition
         / PBX extension 2001 (SIPp UAS on the pbx trunk's dial_host) / external number
         (SIPp UAS on carrier-a's dial_host) / the admin's context / hangup / busy

For each (trunk, destination) the test checks what the caller saw (200 from the agent,
the queue, the IVR, the PBX or the carrier that answered; 480 and 502 from the admin's
context, which the time condition and the context destination enter; 403 hangup; 486
busy), where the call arrived (the phone, PBX or carrier that got the INVITE, from this
call's caller), and the call's `call_routed` event: the trunk it came in on, the DID, the
destination. Each call has its own caller number, so each check reads only its call.

Every pair works by design, so none is left out: a PBX user's call to pbx:2001 goes back
to the PBX (a reception DID dialled from inside), carrier-a's call to an external number
leaves on carrier-a again. The registration trunk's calls, which Kamailio never sees,
join the same inbound path in Asterisk after registered_call has read the DID from To.

One stack for the module; the agents' phones stay registered throughout (agent 1002
logged in to the ACD for the queue). The time condition shows its open branch only
(test_inbound_routing.py shows both on the real clock).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.config import load_config
from omnicc.events import read_events
from omnicc.sipp import SippRun
from omnicc.stack import Stack

from .conftest import SERVICES_TEMPLATE, RunningStack, free_ports, make_stack_dir, write_config
from .queue_agents import phones_online, wait_until
from .test_first_call import final_status
from .test_forwarded_calls import far_end, received_invite
from .test_trunk_registration import registrar

pytestmark = pytest.mark.integration

CARRIER_A_IP = "127.0.0.130"
CARRIER_B_IP = "127.0.0.131"
PBX_IP = "127.0.0.132"
REGISTRAR_IP = "127.0.0.133"

MATRIX_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: carrier-a, address: 127.0.0.130, dial_host: 127.0.0.130,
          dial_port: {carrier_a}}}
      - {{name: carrier-b, address: 127.0.0.131}}
      - {{name: pbx, kind: pbx, address: 127.0.0.132, dial_host: 127.0.0.132,
          dial_port: {pbx}}}
      # No address: Kamailio admits nothing for it; its calls come to the contact.
      - name: carrier-reg
        dial_host: 127.0.0.133
        dial_port: {registrar}
        credentials: {{username: "4420712345", password: "it-Carrier-pw!9"}}
        registration: {{expiration: 600, retry_interval: 5}}
    outbound_routes:
      - {{name: us, patterns: ["_+1NXXNXXXXXX"], trunks: [carrier-a]}}
    queues:
      - {{name: sales, members: [{{agent: "1002"}}], failover: hangup}}
    time_groups:
      - {{name: every-day, timezone: UTC, rules: [{{weekdays: mon-sun}}]}}
    time_conditions:
      - {{name: open, time_group: every-day, matched: "context:matrix-custom,8",
          unmatched: hangup}}
    ivrs:
      - {{name: main, prompt: beep, options: {{"1": busy}}, timeout_seconds: 1,
          retries: 0, default: hangup}}
    dialplan_contexts: [matrix-custom]
    inbound_routes:
      - {{did: "5551300", destination: "agent:1001"}}
      - {{did: "5551301", destination: "queue:sales"}}
      - {{did: "5551302", destination: "ivr:main"}}
      - {{did: "5551303", destination: "time_condition:open"}}
      - {{did: "5551304", destination: "pbx:2001"}}
      - {{did: "5551305", destination: "external:+15552220001"}}
      - {{did: "5551306", destination: "context:matrix-custom,7"}}
      - {{did: "5551307", destination: hangup}}
      - {{did: "5551308", destination: busy}}
"""

# The admin's own context: each extension ends the call with a cause of its own, so the
# caller's final response says which one it entered (27 -> 502, 19 -> 480).
CUSTOM_DIALPLAN = """\
[matrix-custom]
exten => 7,1,Hangup(27)
exten => 8,1,Hangup(19)
"""


@dataclass(frozen=True)
class Destination:
    did: str
    status: int                # the caller's final response
    routed: dict[str, str]     # fields of the call's call_routed event


DESTINATIONS = {
    "agent": Destination("5551300", 200, {"destination": "agent", "agent": "1001"}),
    "queue": Destination("5551301", 200, {"destination": "queue", "queue": "sales"}),
    "ivr": Destination("5551302", 200, {"destination": "ivr", "ivr": "main"}),
    "time_condition": Destination("5551303", 480, {
        "destination": "context", "context": "matrix-custom", "context_exten": "8"}),
    "pbx": Destination("5551304", 200, {"destination": "pbx", "forward": "pbx:2001@pbx"}),
    "external": Destination("5551305", 200, {
        "destination": "external", "forward": "external:+15552220001"}),
    "context": Destination("5551306", 502, {
        "destination": "context", "context": "matrix-custom", "context_exten": "7"}),
    "hangup": Destination("5551307", 403, {"destination": "hangup"}),
    "busy": Destination("5551308", 486, {"destination": "busy"}),
}

# Trunks that send through Kamailio, by source address; carrier-reg sends to Asterisk.
SOURCE_IPS = {"carrier-a": CARRIER_A_IP, "carrier-b": CARRIER_B_IP, "pbx": PBX_IP}
TRUNKS = [*SOURCE_IPS, "carrier-reg"]


@dataclass
class Matrix:
    running: RunningStack
    contact: str                 # the contact Asterisk registered at carrier-reg
    phones: dict[str, SippRun]   # agent extension -> its phone (agent_answer.xml)

    @property
    def asterisk(self) -> str:
        return f"127.0.0.1:{self.running.config.services.asterisk.port}"


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    [carrier_a] = free_ports(1, CARRIER_A_IP)
    [pbx] = free_ports(1, PBX_IP)
    [registrar_port] = free_ports(1, REGISTRAR_IP)
    directory = make_stack_dir("omnicc-it-matrix-")
    config_path = write_config(directory, "matrix", MATRIX_CONFIG, carrier_a=carrier_a,
                               pbx=pbx, registrar=registrar_port)
    custom = directory / "var" / "etc" / "asterisk" / "extensions_custom.conf"
    custom.parent.mkdir(parents=True)
    custom.write_text(CUSTOM_DIALPLAN)
    # Listening before Asterisk starts: Asterisk registers as soon as it has loaded.
    carrier_registrar = registrar("registrar", REGISTRAR_IP, registrar_port, directory).start()
    stack = Stack(load_config(config_path), config_path, directory / "var")
    try:
        stack.up(progress=lambda line: print(line, flush=True))
        running = RunningStack(directory, stack)
        assert carrier_registrar.wait(timeout=60) == 0, carrier_registrar.trace()
        with phones_online(running, directory, ["1001", "1002"],
                           scenario="agent_answer.xml") as phones:
            login = AcdSync(running.redis(), running.config.node).login("default", "1002")
            assert login.ok, login
            yield Matrix(running, registered_contact(carrier_registrar), phones)
    finally:
        carrier_registrar.stop()
        stack.down(progress=lambda _line: None)
        if os.environ.get("OMNICC_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(directory, ignore_errors=True)


def registered_contact(run: SippRun) -> str:
    """The contact URI of the last REGISTER the carrier's registrar accepted."""
    registers = [m for m in run.traced_messages()
                 if m.is_request and m.method == "REGISTER" and not m.sent]
    match = re.fullmatch(r"<([^>]*)>.*", registers[-1].header("contact"))
    assert match and ";line=" in match.group(1), registers[-1].headers
    return match.group(1)


def caller_number(trunk: str, kind: str) -> str:
    """A caller number of this (trunk, destination) pair alone."""
    return f"54911555{TRUNKS.index(trunk)}{list(DESTINATIONS).index(kind):02d}"


def place_call(matrix: Matrix, workdir: Path, trunk: str, kind: str) -> SippRun:
    """The trunk's carrier (or PBX) calls the destination's DID from this pair's number;
    the SIPp run once the call is over."""
    did, caller = DESTINATIONS[kind].did, caller_number(trunk, kind)
    name = f"{trunk}-{kind}"
    if trunk == "carrier-reg":
        run = SippRun(name, [
            sipp.sipp_binary(), matrix.asterisk, "-sf",
            str(sipp.SCENARIOS / "carrier_calls_contact_talks.xml"), "-i", REGISTRAR_IP,
            "-p", "0", "-m", "1", "-key", "ruri", matrix.contact, "-key", "did", did,
            "-key", "caller", caller, "-timeout", "30s", *sipp._common(name, workdir),
        ], workdir)
        assert run.run(timeout=45) == 0, run.trace()
        return run
    # Answered calls: the caller hangs up (agents, PBX and carrier wait for its BYE),
    # except at the IVR, which hangs up itself after its default. Refused calls end
    # caller.xml unsuccessfully (it expects a 200); the final response is read below.
    scenario = "caller_waits_for_bye.xml" if kind == "ivr" else "caller.xml"
    run = sipp.carrier_calls(workdir, proxy=matrix.running.proxy, did=did,
                             local_ip=SOURCE_IPS[trunk], caller=caller, name=name,
                             scenario=scenario, talk_ms=3000 if kind == "queue" else 300)
    code = run.run(timeout=60)
    assert (code == 0) == (DESTINATIONS[kind].status == 200), run.trace()
    return run


def call_events(matrix: Matrix, since: str, caller: str) -> list[dict[str, str]]:
    """The events of the call from `caller`, once it ended: by its Asterisk uniqueid, and
    the ACD's by its queued call id (`{uniqueid}-{queue}`)."""
    def events() -> list[dict[str, str]]:
        found = read_events(matrix.running.redis(), "default", since=since)
        ids = {e["uniqueid"] for e in found
               if e["event"] == "call_routed" and e.get("caller") == caller}
        return [e for e in found if e.get("uniqueid") in ids
                or e.get("call", "").rsplit("-", 1)[0] in ids]

    assert wait_until(lambda: any(e["event"] == "call_ended" for e in events()), 10), \
        read_events(matrix.running.redis(), "default", since=since)
    return events()


def answered_leg_from(phone: SippRun, caller: str) -> bool:
    """Whether the agent's phone answered a call from `caller` (once that leg ended)."""
    def legs():
        return [leg for leg in phone.traced_dialogs() if leg.caller == caller]

    assert wait_until(lambda: legs() and all(leg.ended_by for leg in legs()), 10), legs()
    return any(leg.answered for leg in legs())


@pytest.mark.parametrize("kind", list(DESTINATIONS))
@pytest.mark.parametrize("trunk", TRUNKS)
def test_an_inbound_call_on_each_trunk_reaches_each_destination_type(
        matrix: Matrix, sipp_dir: Path, trunk: str, kind: str) -> None:
    expected = DESTINATIONS[kind]
    caller = caller_number(trunk, kind)
    far_ends: list[SippRun] = []
    if kind == "pbx":
        far_ends.append(far_end(matrix.running, sipp_dir, "pbx"))
    elif kind == "external":
        far_ends.append(far_end(matrix.running, sipp_dir, "carrier-a"))
    since = f"{int(time.time() * 1000)}-0"
    try:
        run = place_call(matrix, sipp_dir, trunk, kind)
        for far in far_ends:
            assert far.wait(timeout=20) == 0, far.trace()
    finally:
        for far in far_ends:
            far.stop()

    # What the caller saw.
    assert final_status(run) == expected.status, run.first_lines()

    # Where omnicc says it went, and by which trunk it came.
    events = call_events(matrix, since, caller)
    routed = [e for e in events if e["event"] == "call_routed"][0]
    assert (routed["trunk"], routed["did"], routed["route"]) == (trunk, expected.did,
                                                                  expected.did)
    assert {key: routed.get(key) for key in expected.routed} == expected.routed, routed

    # Where it arrived.
    if kind == "agent":
        assert answered_leg_from(matrix.phones["1001"], caller)
    elif kind == "queue":
        assert answered_leg_from(matrix.phones["1002"], caller)
        answered = [e for e in events if e["event"] == "call_answered"]
        assert [e["agent"] for e in answered] == ["1002"], events
    elif kind in ("pbx", "external"):
        invite = received_invite(far_ends[0])
        number = "2001" if kind == "pbx" else "+15552220001"
        assert invite.first_line.startswith(f"INVITE sip:{number}@"), invite.first_line
        if kind == "pbx":  # a PBX trunk passes the outside caller's number through
            assert f"<sip:{caller}@" in invite.header("from"), invite.header("from")
        dialled = [e for e in events if e["event"] == "outbound_trunk_dialled"]
        assert [e["trunk"] for e in dialled] == ["pbx" if kind == "pbx" else "carrier-a"]
    elif kind == "ivr":
        entries = [(e["ivr"], e["outcome"], e["next"]) for e in events
                   if e["event"] == "ivr_entry"]
        assert entries == [("main", "timeout", "hangup")], events
    elif kind == "time_condition":
        (condition,) = [e for e in events if e["event"] == "time_condition"]
        assert (condition["condition"], condition["matched"], condition["next"]) == (
            "open", "1", "context:matrix-custom,8")
