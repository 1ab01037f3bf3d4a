"""Agent feature codes, caller priority, announcements, music on hold and recording, end to
end through real Kamailio, Asterisk, the FastAGI server, Redis and SIPp.

agent phone (SIPp, digest) dials *11 -> Kamailio authenticates, sets X-Omnicc-Agent ->
Asterisk omnicc-from-agent -> AGI agent_feature -> the ACD moves THAT agent -> 200 OK, a
confirmation, BYE (or 403/404 when refused).

Its own stack (one for the module): the config below.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.keys import agent_hash
from omnicc.sipp import SippRun

from .conftest import DOMAIN, SERVICES_TEMPLATE, TRUNK_IP, RunningStack, stack_up
from .test_first_call import PASSWORDS, agent_online, now_id
from .test_queue_calls import wait_for_events

pytestmark = pytest.mark.integration

SIPP_AUDIO = Path("/usr/share/sip-tester/g711a.pcap")  # shipped with SIPp (sip-tester)

FEATURES_CONFIG = SERVICES_TEMPLATE + """\
tenants:
  - name: default
    domain: {domain}
    agents:
      - {{extension: "1001", name: Alice, password: "it-pass-1001"}}
      - {{extension: "1002", name: Bob,   password: "it-pass-1002"}}
    trunks:
      - {{name: test-carrier, address: {trunk}}}
    inbound_routes:
      - {{did: "5550110", destination: "queue:lines"}}
      - {{did: "5550111", destination: "queue:lines", priority: 5}}
      - {{did: "5550120", destination: "queue:recorded"}}
      - {{did: "5550121", destination: "queue:plain"}}
    queues:
      - name: lines             # nobody logged in: calls wait
        members: [{{agent: "1001"}}]
        overflow_when_no_agents: false
        max_wait_seconds: 60
      - name: recorded
        members: [{{agent: "1001"}}]
        overflow_when_no_agents: false
        max_wait_seconds: 60
        record: true
        moh_class: calm
        announce_position: true
        announce_expected_wait: true
        announce_frequency_seconds: 5
        call_lease_seconds: 15
      - name: plain
        members: [{{agent: "1001"}}]
        overflow_when_no_agents: false
"""


@pytest.fixture(scope="module")
def features_stack() -> Iterator[RunningStack]:
    with stack_up("omnicc-it-features-", "features", FEATURES_CONFIG) as running:
        yield running


def dial_code(stack: RunningStack, workdir: Path, extension: str, code: str, *,
              claim: str | None = None, name: str) -> SippRun:
    """Agent `extension` dials `code` from its phone, with digest credentials; `claim` is
    the X-Omnicc-Agent header the phone forges (its own extension by default)."""
    run = SippRun(name, [
        sipp.sipp_binary(), stack.proxy, "-sf", str(sipp.SCENARIOS / "agent_feature_code.xml"),
        "-m", "1", "-i", "127.0.0.1", "-p", "0", "-s", code, "-au", extension,
        "-ap", PASSWORDS[extension], "-key", "from", extension, "-key", "domain", DOMAIN,
        "-key", "claim", claim or extension, "-timeout", "30s",
        *sipp._common(name, workdir),
    ], workdir)
    assert run.run(timeout=45) == 0, run.trace()
    return run


def final_status(run: SippRun) -> int:
    """The final status of the authenticated INVITE (the one after the 407)."""
    lines = run.first_lines()
    last_invite = max(i for i, line in enumerate(lines) if line.startswith("INVITE "))
    finals = [int(line.split()[1]) for line in lines[last_invite:]
              if line.startswith("SIP/2.0 ") and int(line.split()[1]) >= 200]
    assert finals, lines
    return finals[0]


def state_of(stack: RunningStack, extension: str) -> tuple[str, str]:
    fields = stack.redis().hgetall(agent_hash("default", extension))
    return fields.get("state", "OFFLINE"), fields.get("reason", "")


def agent_got_bye(run: SippRun) -> bool:
    return any(line.startswith("BYE ") for line in run.first_lines())


@pytest.fixture
def offline(features_stack: RunningStack) -> Iterator[AcdSync]:
    acd = AcdSync(features_stack.redis(), "it-features")
    for extension in ("1001", "1002"):
        acd.logout("default", extension, force=True)
    yield acd
    for extension in ("1001", "1002"):
        acd.logout("default", extension, force=True)


# ---------------------------------------------------------------------------- feature codes


def test_feature_codes_log_in_pause_unpause_and_log_out_the_calling_agent(
        features_stack: RunningStack, sipp_dir: Path, offline: AcdSync) -> None:
    since = now_id()
    with agent_online(features_stack, sipp_dir, "1001"):
        steps = [("*11", ("READY", "")), ("*212", ("PAUSED", "lunch")),
                 ("*21", ("PAUSED", "break")), ("*22", ("READY", "")),
                 ("*12", ("OFFLINE", ""))]
        for index, (code, expected) in enumerate(steps):
            run = dial_code(features_stack, sipp_dir, "1001", code, name=f"code-{index}")
            # Done: answered (200 OK), the confirmation, Asterisk's BYE.
            assert final_status(run) == 200, run.first_lines()
            assert agent_got_bye(run), run.first_lines()
            assert state_of(features_stack, "1001")[:2] == expected, code
        # Not a code (nothing acts on 1001): 404, no answer.
        run = dial_code(features_stack, sipp_dir, "1001", "*19", name="code-unknown")
        assert final_status(run) == 404
        assert not agent_got_bye(run)
        assert "SIP/2.0 183 Session Progress" in run.first_lines()  # the error beep
        # Logged out already: the ACD refuses a second logout, 403.
        run = dial_code(features_stack, sipp_dir, "1001", "*12", name="code-refused")
        assert final_status(run) == 403
        assert "SIP/2.0 183 Session Progress" in run.first_lines()
    events = wait_for_events(features_stack, since, {"agent_login", "agent_paused",
                                                     "agent_unpaused", "agent_logout"})
    mine = [(e["event"], e.get("reason", "")) for e in events
            if e.get("agent") == "1001" and e["event"].startswith("agent_")]
    assert mine == [("agent_login", ""), ("agent_paused", "lunch"), ("agent_paused", "break"),
                    ("agent_unpaused", ""), ("agent_logout", "requested"),
                    ("agent_feature_refused", "unknown_code"),
                    ("agent_feature_refused", "not_logged_in")], mine


def test_an_agent_whose_phone_is_not_registered_cannot_log_in(
        features_stack: RunningStack, sipp_dir: Path, offline: AcdSync) -> None:
    # 1002 authenticates its INVITE but has no registered phone: only a registered agent
    # can be READY.
    run = dial_code(features_stack, sipp_dir, "1002", "*11", name="code-unregistered")
    assert final_status(run) == 403
    assert state_of(features_stack, "1002")[0] == "OFFLINE"


def test_an_agent_cannot_change_another_agents_state(
        features_stack: RunningStack, sipp_dir: Path, offline: AcdSync) -> None:
    with agent_online(features_stack, sipp_dir, "1001"), \
            agent_online(features_stack, sipp_dir, "1002"):
        assert offline.login("default", "1001").ok
        # 1002 forges X-Omnicc-Agent: 1001: Kamailio drops it, so the logout is 1002's
        # own, refused (1002 is not logged in).
        run = dial_code(features_stack, sipp_dir, "1002", "*12", claim="1001",
                        name="code-forged")
        assert final_status(run) == 403
        # The target's extension after the code is no code at all.
        run = dial_code(features_stack, sipp_dir, "1002", "*121001", name="code-suffix")
        assert final_status(run) == 404
        # 1002's own pause pauses 1002 (logged in first), never 1001.
        assert offline.login("default", "1002").ok
        run = dial_code(features_stack, sipp_dir, "1002", "*21", claim="1001",
                        name="code-own-pause")
        assert final_status(run) == 200
        assert state_of(features_stack, "1002") == ("PAUSED", "break")
        assert state_of(features_stack, "1001")[0] == "READY"


# ---------------------------------------------------------------------------- priority


def test_a_vip_call_waiting_behind_another_is_offered_first(
        features_stack: RunningStack, sipp_dir: Path, offline: AcdSync) -> None:
    since = now_id()
    with agent_online(features_stack, sipp_dir, "1001", calls=2) as phone:
        normal = sipp.carrier_calls(sipp_dir, proxy=features_stack.proxy, did="5550110",
                                    local_ip=TRUNK_IP, talk_ms=5000, name="prio-normal")
        vip = sipp.carrier_calls(sipp_dir, proxy=features_stack.proxy, did="5550111",
                                 local_ip=TRUNK_IP, talk_ms=5000, name="prio-vip",
                                 caller="5491100000005")
        normal.start()
        wait_for_events(features_stack, since, {"call_enqueued"})
        vip.start()
        deadline = time.monotonic() + 10
        while features_stack.redis().zcard("{t:default}:queue:lines:waiting") < 2:
            assert time.monotonic() < deadline, "both calls should wait"
            time.sleep(0.05)
        assert offline.login("default", "1001").ok
        events = wait_for_events(features_stack, since, {"call_reserved"})
        sipp.wait_all([normal, vip], timeout=60)
        phone.stop()
    enqueued = {e["call"]: e for e in events if e["event"] == "call_enqueued"}
    assert sorted(e["priority"] for e in enqueued.values()) == ["0", "5"]
    routed = [e for e in events if e["event"] == "call_routed"]
    assert {(e["did"], e["priority"]) for e in routed} == {("5550110", "0"), ("5550111", "5")}
    first = next(e for e in events if e["event"] == "call_reserved")
    assert enqueued[first["call"]]["priority"] == "5", events
    assert enqueued[first["call"]]["caller"] == "5491100000005"


# ---------------------------------------------------------------------------- waiting, recording


def speaking_caller(stack: RunningStack, workdir: Path, did: str, silent_ms: int) -> SippRun:
    """A carrier call that waits `silent_ms` after the answer, then speaks for 3 s and
    hangs up (sipp-scenarios/caller_speaks.xml): the recording needs media."""
    shutil.copyfile(SIPP_AUDIO, workdir / SIPP_AUDIO.name)
    name = f"speaks-{did}"
    return SippRun(name, [
        sipp.sipp_binary(), stack.proxy, "-sf", str(sipp.SCENARIOS / "caller_speaks.xml"),
        "-i", TRUNK_IP, "-s", did, "-m", "1", "-d", str(silent_ms),
        "-key", "caller", "5491155550000", "-timeout", "60s", *sipp._common(name, workdir),
    ], workdir)


def monitor_dir(stack: RunningStack) -> Path:
    return stack.stack.var / "data" / "asterisk" / "spool" / "monitor"


def test_a_waiting_caller_hears_announcements_keeps_its_place_and_is_recorded(
        features_stack: RunningStack, sipp_dir: Path, offline: AcdSync) -> None:
    since = now_id()
    with agent_online(features_stack, sipp_dir, "1001") as phone:
        caller = speaking_caller(features_stack, sipp_dir, "5550120", silent_ms=12000)
        caller.start()
        # The first announcement comes 5 s after the call joined; then the agent logs in.
        wait_for_events(features_stack, since, {"call_announced"}, timeout=12)
        assert offline.login("default", "1001").ok
        assert caller.wait(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(features_stack, since, {"call_recording", "call_ended"})
    names = [e["event"] for e in events]
    (enqueued,) = [e for e in events if e["event"] == "call_enqueued"]  # one place, kept
    call = enqueued["call"]
    announced = [e for e in events if e["event"] == "call_announced"]
    assert announced and announced[0]["call"] == call and announced[0]["position"] == "1"
    # Nobody was serving yet: no expected wait to tell.
    assert announced[0]["expected_wait_seconds"] == ""
    answered = [e for e in events if e["event"] == "call_answered"]
    assert len(answered) == 1, [(e["event"], e.get("reason", "")) for e in events]
    answered = answered[0]
    assert answered["call"] == call and int(answered["wait_ms"]) >= 5000, names
    (recording,) = [e for e in events if e["event"] == "call_recording"]
    assert recording["call"] == call and recording["agent"] == "1001"
    assert recording["recording"].startswith("default/recorded/")
    assert recording["recording"].endswith(f"/{call}.wav")
    path = monitor_dir(features_stack) / recording["recording"]
    deadline = time.monotonic() + 5  # MixMonitor closes the file as the channel goes
    while not (path.exists() and path.stat().st_size > 8000):
        assert time.monotonic() < deadline, f"no recording at {path}"
        time.sleep(0.1)
    assert path.read_bytes()[:4] == b"RIFF"
    # The prompts and the queue's music class exist: Asterisk complained of none.
    log = (features_stack.stack.var / "log" / "asterisk" / "messages.log").read_text(
        errors="replace")
    complaints = [line for line in log.splitlines() if "WARNING" in line and (
        "calm" in line or "queue-" in line or "digits/" in line or "Unable to open" in line)]
    assert complaints == []


def test_a_queue_without_recording_leaves_no_file(
        features_stack: RunningStack, sipp_dir: Path, offline: AcdSync) -> None:
    since = now_id()
    with agent_online(features_stack, sipp_dir, "1001") as phone:
        assert offline.login("default", "1001").ok
        caller = sipp.carrier_calls(sipp_dir, proxy=features_stack.proxy, did="5550121",
                                    local_ip=TRUNK_IP, talk_ms=2000, name="plain")
        assert caller.run(timeout=60) == 0, caller.trace()
        assert phone.wait(timeout=15) == 0, phone.trace()
        events = wait_for_events(features_stack, since, {"call_answered", "call_ended"})
    (enqueued,) = [e for e in events if e["event"] == "call_enqueued"]
    assert "call_answered" in [e["event"] for e in events]
    assert "call_recording" not in [e["event"] for e in events]
    assert list(monitor_dir(features_stack).rglob(f"*{enqueued['call']}*")) == []
