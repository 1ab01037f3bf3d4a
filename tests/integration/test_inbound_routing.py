"""Inbound routing end to end, through real Kamailio, Asterisk, the FastAGI server, Redis
and SIPp: routes by exact DID and by pattern, busy, time conditions on the real clock (a
time group open every day, another only on a day long past), the admin's own dialplan
context, the caller blacklist (imported with the real `omnicc blacklist` CLI), and an IVR
driven by RFC 4733 DTMF from SIPp (SIPp's own captures, /usr/share/sip-tester): each
option, an invalid entry, no entry. Its own stack: the config below.

What the caller sees tells the destinations apart: 486 busy, 403 hangup, 502 for the
custom context (Hangup(27)); once an IVR has answered, the call's end (call_ended, from
the hang-up handler: the destination and Q.850 cause Asterisk hung up with) and the
routing events say where it went.

And a company PBX beside omnicc, as docs/pbx-integration.md connects it: a second Asterisk
configured as that page says, on 127.0.0.6 (its users: SIPp on 127.0.0.7). A PBX user
reaches a queue, an agent reaches a PBX extension.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.config import load_config, parse_config
from omnicc.events import read_events
from omnicc.sipp import SippRun
from omnicc.stack import AsteriskService, Stack

from .conftest import (
    DOMAIN,
    SERVICES_TEMPLATE,
    TRUNK_IP,
    RunningStack,
    free_ports,
    make_stack_dir,
    omnicc_cli,
    write_config,
)
from .test_first_call import final_status, now_id

pytestmark = pytest.mark.integration

ROUTING_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
      - {{name: pbx, address: 127.0.0.6, dial_host: 127.0.0.6, dial_port: {pbx_port}}}
    outbound_routes:
      - {{name: pbx-extensions, patterns: ["_2XXX"], trunks: [pbx]}}
    queues:
      # Nobody logs in: a call overflows to the failover at once.
      - {{name: pbx-callers, members: [{{agent: "1001"}}], failover: busy}}
    dialplan_contexts: [it-custom]
    inbound_routes:
      - {{did: "7000", destination: "queue:pbx-callers"}}
      - {{pattern: "_55502XX", destination: "busy"}}
      - {{did: "5550201", destination: "hangup"}}
      - {{did: "5550300", destination: "time_condition:always-open"}}
      - {{did: "5550301", destination: "time_condition:never-open"}}
      - {{did: "5550400", destination: "ivr:main"}}
      - {{did: "5550500", destination: "context:it-custom,7"}}
    time_groups:
      - name: every-day
        timezone: America/New_York
        rules: [{{weekdays: mon-sun}}]
      - name: long-ago
        timezone: Europe/Madrid
        rules: [{{dates: ["2001-01-01"]}}]
    time_conditions:
      - {{name: always-open, time_group: every-day, matched: busy, unmatched: hangup}}
      - {{name: never-open, time_group: long-ago, matched: busy, unmatched: hangup}}
    ivrs:
      - name: main
        prompt: beep
        options:
          "1": busy
          "2": "context:it-custom,7"
          "3": "time_condition:never-open"
        timeout_seconds: 2
        retries: 1
        default: hangup
"""

# The admin's own context (extensions_custom.conf beside extensions.conf): Q.850 27
# "destination out of order", which Asterisk answers with 502.
CUSTOM_DIALPLAN = """\
[it-custom]
exten => 7,1,Hangup(27)
"""

SIPP_CAPTURES = Path("/usr/share/sip-tester")
PBX_IP = "127.0.0.6"
PBX_USER_IP = "127.0.0.7"
[PBX_PORT] = free_ports(1, PBX_IP)


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    directory = make_stack_dir("omnicc-it-routing-")
    config_path = write_config(directory, "routing", ROUTING_CONFIG, pbx_port=PBX_PORT)
    custom = directory / "var" / "etc" / "asterisk" / "extensions_custom.conf"
    custom.parent.mkdir(parents=True)
    custom.write_text(CUSTOM_DIALPLAN)
    running = Stack(load_config(config_path), config_path, directory / "var")
    try:
        running.up(progress=lambda line: print(line, flush=True))
        yield RunningStack(directory, running)
    finally:
        running.down(progress=lambda _line: None)
        if os.environ.get("OMNICC_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(directory, ignore_errors=True)


def events_after(stack: RunningStack, since: str, until_event: str = "call_ended",
                 timeout: float = 10.0) -> list[dict[str, str]]:
    """The tenant's events after `since`, once `until_event` is among them."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(stack.redis(), "default", since=since)
        if any(e["event"] == until_event for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def call(stack: RunningStack, workdir: Path, did: str, caller: str = "5491155550000",
         name: str | None = None) -> SippRun:
    run = sipp.carrier_calls(workdir, proxy=stack.proxy, did=did, local_ip=TRUNK_IP,
                             talk_ms=500, caller=caller, name=name)
    assert run.run(timeout=60) != 0  # refused: caller.xml expected a 200
    return run


def only(events: list[dict[str, str]], kind: str) -> dict[str, str]:
    found = [e for e in events if e["event"] == kind]
    assert len(found) == 1, events
    return found[0]


# ---------------------------------------------------------------------------- routes


def test_an_exact_did_beats_a_pattern_and_busy_is_486(stack: RunningStack,
                                                      sipp_dir: Path) -> None:
    since = now_id()
    assert final_status(call(stack, sipp_dir, "5550250")) == 486
    assert final_status(call(stack, sipp_dir, "5550201", name="exact")) == 403
    routed = [e for e in events_after(stack, since) if e["event"] == "call_routed"]
    assert [(e["did"], e["route"], e["destination"]) for e in routed] == [
        ("5550250", "_55502XX", "busy"), ("5550201", "5550201", "hangup")]


def test_a_did_that_is_not_a_number_is_refused_at_the_door(stack: RunningStack,
                                                          sipp_dir: Path) -> None:
    # The pattern _55502XX would take 5550250...; the ')' would close a Dial option in the
    # dialplan. Kamailio answers 484 and Asterisk never hears of the call.
    since = now_id()
    refused = call(stack, sipp_dir, "5550250)U(omnicc-evil^s^1", name="bad-did")
    assert final_status(refused) == 484
    assert read_events(stack.redis(), "default", since=since) == []


def test_time_conditions_follow_the_clock(stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    assert final_status(call(stack, sipp_dir, "5550300")) == 486      # open: busy
    middle = now_id()
    assert final_status(call(stack, sipp_dir, "5550301")) == 403      # closed: hangup
    opened = only([e for e in read_events(stack.redis(), "default", since=since)
                   if e["id"] < middle or e["event"] != "time_condition"], "time_condition")
    assert (opened["condition"], opened["matched"], opened["next"]) == (
        "always-open", "1", "busy")
    assert opened["local_time"].endswith(("-05:00", "-04:00"))  # New York's clock
    closed = only(events_after(stack, middle), "time_condition")
    assert (closed["condition"], closed["matched"], closed["next"]) == (
        "never-open", "0", "hangup")
    assert only(events_after(stack, middle), "call_routed")["destination"] == "hangup"


def test_a_custom_context_destination_enters_the_admins_context(
        stack: RunningStack, sipp_dir: Path) -> None:
    since = now_id()
    assert final_status(call(stack, sipp_dir, "5550500")) == 502
    events = events_after(stack, since)
    routed = only(events, "call_routed")
    assert (routed["destination"], routed["context"], routed["context_exten"]) == (
        "context", "it-custom", "7")
    assert only(events, "call_ended")["cause"] == "27"


# ---------------------------------------------------------------------------- blacklist


def test_a_blacklisted_caller_is_refused_with_403(stack: RunningStack, sipp_dir: Path) -> None:
    bad = sipp_dir / "bad.csv"
    bad.write_text("number,reason\n+1 555 010 0177,spam\n555-CALL,typo\n")
    result = omnicc_cli(stack.directory, "blacklist", "import", str(bad))
    assert result.returncode == 2, result
    assert "line 3: '555-CALL' is not a phone number" in result.stderr
    checked = omnicc_cli(stack.directory, "blacklist", "check", "+15550100177")
    assert checked.returncode == 1 and "not blacklisted" in checked.stdout  # nothing imported

    good = sipp_dir / "good.csv"
    good.write_text("number,reason\n+1 (555) 010-0199,robocalls\n")
    result = omnicc_cli(stack.directory, "blacklist", "import", "--replace", str(good))
    assert result.returncode == 0, result.stderr
    assert "1 on the blacklist now" in result.stdout
    checked = omnicc_cli(stack.directory, "blacklist", "check", "+1 555 010 0199")
    assert checked.returncode == 0 and "(robocalls)" in checked.stdout

    since = now_id()
    # 5550300 is busy (486) for anyone else; the listed caller gets the blacklist's
    # destination, by default hangup: 403.
    assert final_status(call(stack, sipp_dir, "5550300", caller="+15550100199")) == 403
    assert final_status(call(stack, sipp_dir, "5550300", name="other")) == 486
    events = events_after(stack, since)
    hit = only(events, "call_blacklisted")
    assert (hit["caller"], hit["reason"], hit["destination"]) == (
        "+15550100199", "robocalls", "hangup")
    routes = [(e["caller"], e["route"], e["destination"]) for e in events
              if e["event"] == "call_routed"]
    assert routes == [("+15550100199", "blacklist", "hangup"),
                      ("5491155550000", "5550300", "busy")]


# ---------------------------------------------------------------------------- IVR


def ivr_call(stack: RunningStack, workdir: Path, key: str | None) -> list[dict[str, str]]:
    """A call to the IVR that keys `key` one second after the answer (None: nothing),
    then waits for omnicc to hang up; the call's events."""
    since = now_id()
    if key is None:
        run = sipp.carrier_calls(workdir, proxy=stack.proxy, did="5550400",
                                 local_ip=TRUNK_IP, scenario="caller_waits_for_bye.xml",
                                 name="ivr-nothing")
    else:
        shutil.copy(SIPP_CAPTURES / f"dtmf_2833_{key}.pcap", workdir / "dtmf.pcap")
        run = sipp.carrier_calls(workdir, proxy=stack.proxy, did="5550400",
                                 local_ip=TRUNK_IP, scenario="caller_keys_dtmf.xml",
                                 talk_ms=1000, name=f"ivr-{key}")
    assert run.run(timeout=60) == 0, run.trace()
    return events_after(stack, since)


def entries(events: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(e["entry"], e["attempt"], e["outcome"], e["retry"]) for e in events
            if e["event"] == "ivr_entry"]


def test_each_ivr_option_is_reached_by_rfc4733_dtmf(stack: RunningStack,
                                                     sipp_dir: Path) -> None:
    busy = ivr_call(stack, sipp_dir, "1")
    assert entries(busy) == [("1", "1", "option", "0")]
    assert only(busy, "ivr_entry")["next"] == "busy"
    assert [e["route"] for e in busy if e["event"] == "call_routed"] == ["5550400", "ivr:main"]
    ended = only(busy, "call_ended")
    assert (ended["destination"], ended["cause"]) == ("busy", "17")

    custom = ivr_call(stack, sipp_dir, "2")
    assert entries(custom) == [("2", "1", "option", "0")]
    assert only(custom, "call_ended")["cause"] == "27"

    closed = ivr_call(stack, sipp_dir, "3")
    assert entries(closed) == [("3", "1", "option", "0")]
    condition = only(closed, "time_condition")
    assert (condition["condition"], condition["matched"]) == ("never-open", "0")
    ended = only(closed, "call_ended")
    assert (ended["destination"], ended["cause"]) == ("hangup", "21")


def test_an_invalid_entry_is_told_and_asked_again_then_the_default(
        stack: RunningStack, sipp_dir: Path) -> None:
    events = ivr_call(stack, sipp_dir, "7")
    # 7 is no option: pm-invalid-option, the menu again; nothing keyed the second time:
    # retries (1) used up, the default (hangup).
    assert entries(events) == [("7", "1", "invalid", "1"), ("", "2", "timeout", "0")]
    assert [e["next"] for e in events if e["event"] == "ivr_entry"] == ["", "hangup"]
    ended = only(events, "call_ended")
    assert (ended["destination"], ended["cause"]) == ("hangup", "21")


def test_no_entry_times_out_twice_then_the_default(stack: RunningStack,
                                                   sipp_dir: Path) -> None:
    events = ivr_call(stack, sipp_dir, None)
    assert entries(events) == [("", "1", "timeout", "1"), ("", "2", "timeout", "0")]
    assert only(events, "call_ended")["destination"] == "hangup"


# ---------------------------------------------------------------------------- a PBX beside


# docs/pbx-integration.md's PBX side, with this stack's addresses.
PBX_PJSIP = """\
[transport-udp]
type = transport
protocol = udp
bind = {pbx_ip}:{pbx_port}

[omnicc]
type = endpoint
context = from-omnicc
disallow = all
allow = ulaw,alaw
aors = omnicc
direct_media = no
dtmf_mode = rfc4733

[omnicc]
type = aor
contact = sip:127.0.0.1:{kamailio_port}

[omnicc]
type = identify
endpoint = omnicc
match = 127.0.0.1

; the PBX's users (SIPp)
[users]
type = endpoint
context = from-internal
disallow = all
allow = ulaw
direct_media = no

[users]
type = identify
endpoint = users
match = {user_ip}
"""

PBX_EXTENSIONS = """\
[general]
static = yes

[from-internal]
exten => _7XXX,1,Dial(PJSIP/${{EXTEN}}@omnicc)
 same => n,Hangup(${{HANGUPCAUSE}})

; instead of Dial(PJSIP/${{EXTEN}},30) to a phone: the extension answers, then hangs up
[from-omnicc]
exten => _2XXX,1,Answer()
 same => n,Wait(1)
 same => n,Hangup()
"""


class PbxAsterisk(AsteriskService):
    """The company PBX: an Asterisk started as the stack starts its own (same root, same
    modules), with the PBX-side pjsip.conf and extensions.conf of docs/pbx-integration.md."""

    def __init__(self, stack: Stack, kamailio_port: int):
        super().__init__(stack)
        self.kamailio_port = kamailio_port

    def prepare(self) -> None:
        super().prepare()
        etc = self.stack.etc_dir / "asterisk"
        (etc / "omnicc.conf").unlink()
        (etc / "pjsip.conf").write_text(PBX_PJSIP.format(
            pbx_ip=PBX_IP, pbx_port=PBX_PORT, kamailio_port=self.kamailio_port,
            user_ip=PBX_USER_IP))
        (etc / "extensions.conf").write_text(PBX_EXTENSIONS.format())
        (etc / "rtp.conf").write_text("[general]\nrtpstart = 30000\nrtpend = 30999\n"
                                      "icesupport = no\n")


@pytest.fixture(scope="module")
def pbx(stack: RunningStack) -> Iterator[None]:
    # Only services.listen and the Asterisk port of this config matter: where the PBX binds.
    config = parse_config(f"""\
node: pbx
services: {{listen: {PBX_IP}, asterisk: {{port: {PBX_PORT}}}}}
tenants: [{{name: pbx, domain: pbx.test}}]
""")
    var = stack.directory / "pbx"
    service = PbxAsterisk(Stack(config, stack.directory / "omnicc.yaml", var),
                          stack.config.services.kamailio.port)
    service.start(progress=lambda line: print(line, flush=True))
    try:
        yield
    finally:
        service.stop(lambda _line: None, timeout=10.0)


def test_a_pbx_user_reaches_omnicc_and_an_agent_a_pbx_extension(
        stack: RunningStack, pbx: None, sipp_dir: Path) -> None:
    since = now_id()
    # A PBX user dials 7000: the PBX sends it to Kamailio; omnicc routes it (trunk pbx)
    # to the queue, which nobody serves: answered, then sent on to its failover (busy).
    user = sipp.carrier_calls(sipp_dir, proxy=f"{PBX_IP}:{PBX_PORT}", did="7000",
                              local_ip=PBX_USER_IP, scenario="caller_waits_for_bye.xml",
                              name="pbx-user")
    assert user.run(timeout=60) == 0, user.trace()
    events = events_after(stack, since)
    routed = only(events, "call_routed")
    assert (routed["trunk"], routed["route"], routed["destination"], routed["queue"]) == (
        "pbx", "7000", "queue", "pbx-callers")
    assert only(events, "call_ended")["cause"] == "17"

    # Agent 1001 dials PBX extension 2001: the outbound route sends it to the PBX, which
    # takes it as from its omnicc endpoint (identify by the Asterisk node's address),
    # answers and hangs up. (agent_feature_code.xml: dial, 200, wait for the BYE.)
    since = now_id()
    agent = SippRun("agent-dials-pbx", [
        sipp.sipp_binary(), stack.proxy, "-sf", str(sipp.SCENARIOS / "agent_feature_code.xml"),
        "-m", "1", "-i", "127.0.0.1", "-p", "0", "-s", "2001", "-au", "1001",
        "-ap", "it-pass-1001", "-key", "from", "1001", "-key", "domain", DOMAIN,
        "-key", "claim", "1001", "-timeout", "30s", *sipp._common("agent-dials-pbx", sipp_dir),
    ], sipp_dir)
    assert agent.run(timeout=45) == 0, agent.trace()
    assert "SIP/2.0 200 OK" in agent.first_lines()
    events = events_after(stack, since)
    dialled = only(events, "outbound_trunk_dialled")
    assert (dialled["trunk"], dialled["number"]) == ("pbx", "2001")
    assert only(events, "call_ended")["dialstatus"] == "ANSWER"
