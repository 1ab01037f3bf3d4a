"""Registration trunks and per-trunk codecs end to end: real Kamailio, Asterisk, FastAGI,
Redis and SIPp playing the carrier.

At start Asterisk registers to the carrier's registrar (SIPp UAS, 127.0.0.110): 401, then
the digest checked by SIPp's <verifyauth> against the trunk's password, 200 OK. The
carrier then sends calls to the contact Asterisk registered, straight to Asterisk: with
the registration's line token the call reaches the inbound routes (the DID from the To
header, as carriers send it); without it, or with a To that is no DID, it is refused and
reaches no route. An agent's call out on the trunk answers the carrier's 407 with the same
credentials, and the INVITE offers only the trunk's codec (`codecs: [alaw]`: PCMA).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.sipp import SippRun

from .conftest import (
    SERVICES_TEMPLATE,
    RunningStack,
    free_ports,
    make_stack_dir,
    omnicc_cli,
    stack_up,
)
from .test_first_call import now_id
from .test_outbound_calls import agent_dials, events_until, final_status, named

pytestmark = pytest.mark.integration

CARRIER_IP = "127.0.0.110"      # the registrar, the carrier's calls, its outbound side
RURI_CARRIER_IP = "127.0.0.111"  # a second carrier, which puts the DID in the Request-URI
USER = "4420712345"
PASSWORD = "it-Carrier-pw!9"
BUSY_DID = "5550111"            # inbound route: busy (486)
DIALLED = "95550199"            # outbound route "carrier": strip 1 -> 5550199

REGISTRATION_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
    trunks:
      - name: carrier-reg
        address: 127.0.0.110
        dial_host: 127.0.0.110
        dial_port: {carrier}
        codecs: [alaw]
        credentials: {{username: "4420712345", password: "it-Carrier-pw!9"}}
        registration: {{expiration: 600, retry_interval: 5}}
      - name: carrier-ruri
        address: 127.0.0.111
        dial_host: 127.0.0.111
        dial_port: {carrier_ruri}
        credentials: {{username: "4420712345", password: "it-Carrier-pw!9"}}
        registration: {{expiration: 600, retry_interval: 5, did_from: request_uri}}
    outbound_routes:
      - {{name: carrier, patterns: [_9X.], strip: 1, trunks: [carrier-reg]}}
    inbound_routes:
      - {{did: "5550111", destination: busy}}
"""


@dataclass
class RegisteredStack:
    running: RunningStack
    registrar: SippRun
    carrier_port: int
    ruri_registrar: SippRun

    @property
    def asterisk(self) -> str:
        return f"127.0.0.1:{self.running.config.services.asterisk.port}"

    def registered_contact(self, registrar: SippRun | None = None) -> str:
        """The contact URI of the authenticated REGISTER the registrar accepted."""
        registers = [m for m in (registrar or self.registrar).traced_messages()
                     if m.is_request and m.method == "REGISTER" and not m.sent]
        contact = registers[-1].header("contact")
        match = re.fullmatch(r"<([^>]*)>.*", contact)
        assert match, contact
        return match.group(1)


def registrar(name: str, ip: str, port: int, workdir: Path) -> SippRun:
    return SippRun(name, [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "carrier_registrar.xml"),
        "-i", ip, "-p", str(port), "-m", "1",
        "-key", "user", USER, "-key", "password", PASSWORD,
        *sipp._common(name, workdir),
    ], workdir)


@pytest.fixture(scope="module")
def registered() -> Iterator[RegisteredStack]:
    (carrier_port,) = free_ports(1, CARRIER_IP)
    (ruri_port,) = free_ports(1, RURI_CARRIER_IP)
    workdir = make_stack_dir("omnicc-it-registrar-")
    # Listening before Asterisk starts: Asterisk registers as soon as it has loaded.
    registrars = [registrar("registrar", CARRIER_IP, carrier_port, workdir).start(),
                  registrar("registrar-ruri", RURI_CARRIER_IP, ruri_port, workdir).start()]
    try:
        with stack_up("omnicc-it-registration-", "registration", REGISTRATION_CONFIG,
                      carrier=carrier_port, carrier_ruri=ruri_port) as running:
            for run in registrars:
                assert run.wait(timeout=60) == 0, run.trace()
            yield RegisteredStack(running, registrars[0], carrier_port, registrars[1])
    finally:
        for run in registrars:
            run.stop()
        if os.environ.get("OMNICC_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


def carrier_calls(stack: RegisteredStack, workdir: Path, ruri: str, did: str,
                  name: str = "carrier", ip: str = CARRIER_IP) -> SippRun:
    run = SippRun(name, [
        sipp.sipp_binary(), stack.asterisk, "-sf",
        str(sipp.SCENARIOS / "carrier_calls_contact.xml"), "-i", ip, "-p", "0",
        "-m", "1", "-key", "ruri", ruri, "-key", "did", did, "-timeout", "20s",
        *sipp._common(name, workdir),
    ], workdir)
    assert run.run(timeout=30) == 0, run.trace()
    return run


def invite_final(run: SippRun) -> int:
    finals = [m.status for m in run.traced_messages()
              if not m.is_request and m.method == "INVITE" and m.status >= 200]
    assert finals, run.first_lines()
    return finals[0]


def digest_is_right(header: str, method: str, password: str) -> bool:
    """Whether an Authorization/Proxy-Authorization digest (RFC 2617, MD5, no qop) is the
    one `password` gives; SIPp's verifyauth only reads Authorization headers."""
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header.removeprefix("Digest ")))

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{fields['username']}:{fields['realm']}:{password}")
    ha2 = md5(f"{method}:{fields['uri']}")
    return fields["username"] == USER and fields["response"] == md5(
        f"{ha1}:{fields['nonce']}:{ha2}")


def test_asterisk_registers_and_answers_the_registrars_challenge(
    registered: RegisteredStack,
) -> None:
    lines = registered.registrar.first_lines()
    assert [line.split()[1] for line in lines if line.startswith("SIP/2.0")] == ["401", "200"]
    registers = [m for m in registered.registrar.traced_messages()
                 if m.is_request and m.method == "REGISTER"]
    assert len(registers) == 2
    assert registers[0].first_line.startswith(f"REGISTER sip:{CARRIER_IP}:")
    assert f"sip:{USER}@{CARRIER_IP}" in registers[1].header("to")
    assert f'username="{USER}"' in registers[1].header("authorization")
    # The contact: the account's user, this Asterisk, and the line token.
    contact = registered.registered_contact()
    assert contact.startswith(f"sip:{USER}@127.0.0.1:"), contact
    assert re.search(r";line=[a-z0-9]+", contact), contact


def test_omnicc_status_shows_the_registration_state(registered: RegisteredStack) -> None:
    done = omnicc_cli(registered.running.directory, "status")
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    (line,) = [line for line in done.stdout.splitlines()
               if line.startswith("trunk.default.carrier-reg")]
    assert line.split()[1:] == [f"sip:{CARRIER_IP}:{registered.carrier_port}", "Registered"]


def test_a_call_to_the_registered_contact_reaches_the_inbound_route(
    registered: RegisteredStack, sipp_dir: Path
) -> None:
    since = now_id()
    run = carrier_calls(registered, sipp_dir, registered.registered_contact(), BUSY_DID)
    assert invite_final(run) == 486  # the route's busy destination
    events = events_until(registered.running, since, "call_ended")
    (routed,) = named(events, "call_routed")
    assert (routed["did"], routed["trunk"], routed["destination"]) == (
        BUSY_DID, "carrier-reg", "busy")


def test_a_carrier_with_the_did_in_the_request_uri(
    registered: RegisteredStack, sipp_dir: Path
) -> None:
    since = now_id()
    contact = registered.registered_contact(registered.ruri_registrar)
    # This carrier sends sip:DID@CONTACT-HOST;line=TOKEN, and its own number in To.
    ruri = re.sub(r"^sip:[^@]+@", f"sip:{BUSY_DID}@", contact)
    assert ";line=" in ruri and ruri != contact
    run = carrier_calls(registered, sipp_dir, ruri, "5559999", ip=RURI_CARRIER_IP)
    assert invite_final(run) == 486
    events = events_until(registered.running, since, "call_ended")
    (routed,) = named(events, "call_routed")
    assert (routed["did"], routed["trunk"]) == (BUSY_DID, "carrier-ruri")


def test_one_trunks_token_does_not_open_the_others_did_source(
    registered: RegisteredStack, sipp_dir: Path
) -> None:
    """carrier-reg's token reads the DID from To, whatever the Request-URI's user is."""
    since = now_id()
    contact = registered.registered_contact()
    ruri = re.sub(r"^sip:[^@]+@", f"sip:{BUSY_DID}@", contact)
    run = carrier_calls(registered, sipp_dir, ruri, "5559999")
    assert invite_final(run) == 404  # To's 5559999 has no route
    events = events_until(registered.running, since, "call_ended")
    (unrouted,) = named(events, "call_unrouted")
    assert (unrouted["did"], unrouted["trunk"]) == ("5559999", "carrier-reg")


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_call_without_the_line_token_reaches_no_route(
    registered: RegisteredStack, sipp_dir: Path, token: str
) -> None:
    since = now_id()
    contact = registered.registered_contact()
    ruri = re.sub(r";line=[a-z0-9]+", "" if token == "none" else ";line=zzzzzzzz", contact)
    assert ruri != contact
    run = carrier_calls(registered, sipp_dir, ruri, BUSY_DID)
    # No endpoint is identified: Asterisk challenges (401) a request it cannot place.
    assert invite_final(run) == 401
    time.sleep(0.5)  # time enough for a routed call's events to appear
    events = events_until(registered.running, since, "call_routed", timeout=1.0)
    assert named(events, "call_routed") == []
    assert named(events, "registered_call_refused") == []


@pytest.mark.parametrize("to_user", ["5550111,1", "abc", "+", "1" * 21])
def test_a_to_header_without_a_did_is_refused(
    registered: RegisteredStack, sipp_dir: Path, to_user: str
) -> None:
    since = now_id()
    run = carrier_calls(registered, sipp_dir, registered.registered_contact(), to_user)
    assert invite_final(run) == 404
    events = events_until(registered.running, since, "registered_call_refused")
    (refused,) = named(events, "registered_call_refused")
    assert refused["trunk"] == "carrier-reg"
    assert "no DID" in refused["reason"]
    assert named(events, "call_routed") == []


def test_an_outbound_call_answers_the_carriers_407_and_offers_only_alaw(
    registered: RegisteredStack, sipp_dir: Path
) -> None:
    carrier = SippRun("carrier-auth", [
        sipp.sipp_binary(), "-sf", str(sipp.SCENARIOS / "carrier_challenges_invite.xml"),
        "-i", CARRIER_IP, "-p", str(registered.carrier_port), "-m", "1",
        *sipp._common("carrier-auth", sipp_dir),
    ], sipp_dir).start()
    try:
        time.sleep(0.3)
        agent = agent_dials(registered.running, sipp_dir, DIALLED)
        assert agent.run(timeout=60) == 0, agent.trace()
        assert carrier.wait(timeout=15) == 0, carrier.trace()
    finally:
        carrier.stop()

    # The carrier's 486 reaches the agent: Asterisk answered the 407 and got the answer.
    assert final_status(agent) == 486
    sent = [line.split()[1] for line in carrier.first_lines() if line.startswith("SIP/2.0")]
    assert sent == ["407", "486"], carrier.first_lines()
    invites = [m for m in carrier.traced_messages() if m.is_request and m.method == "INVITE"]
    assert len(invites) == 2
    assert invites[1].first_line.startswith("INVITE sip:5550199@"), invites[1].first_line
    assert digest_is_right(invites[1].header("proxy-authorization"), "INVITE", PASSWORD)
    # The SDP offer: PCMA (8) and telephone-event only.
    trace = carrier.trace()
    media = re.findall(r"^\s*m=audio \d+ RTP/AVP ([0-9 ]+)$", trace, re.M)
    assert media, trace
    for line in media:
        payloads = line.split()
        assert payloads[0] == "8", line
        assert "0" not in payloads and "3" not in payloads, line
    assert "PCMU" not in trace
