"""The SIP edge against real Kamailio (and Asterisk) with SIPp: bearer tokens, ephemeral
digest credentials, forged in-dialog requests, bans. Issue 3's "must show", path by path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from pathlib import Path

import pytest

from omnicc import sipp
from omnicc.auth_secrets import read_digest_secret, read_signing_key, resolve_secret_files
from omnicc.ephemeral import password_for, tenant_secret
from omnicc.keys import agent_contact, revoked_jti
from omnicc.sip_security import ban_key
from omnicc.sipp import SippRun
from omnicc.tokens import generate_signing_key, mint_agent_token

from .conftest import DOMAIN, TRUNK_IP, RunningStack, omnicc_cli
from .test_first_call import agent_online, events_since, now_id

pytestmark = pytest.mark.integration

SCENARIOS = sipp.SCENARIOS


class Tokens:
    """Mints tokens with the running stack's own signing key (or with deliberate faults)."""

    def __init__(self, stack: RunningStack):
        config = stack.config
        files = resolve_secret_files(config, stack.stack.config_path, stack.stack.var)
        self.key = read_signing_key(files)
        self.digest_secret = read_digest_secret(files)
        self.kid = config.auth.jwt.signing_kid
        self.issuer = config.auth.jwt.issuer

    def agent(self, subject: str, *, key: bytes | None = None, audience: str = DOMAIN,
              issuer: str | None = None, now: float | None = None, ttl: int = 600,
              jti: str | None = None) -> str:
        return mint_agent_token(
            key or self.key, kid=self.kid, algorithm="EdDSA", issuer=issuer or self.issuer,
            audience=audience, subject=subject, ttl_seconds=ttl,
            now=time.time() if now is None else now, jti=jti,
        )

    def forged(self, header: dict, payload: dict, signature: bytes) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
        return head + "." + b64(signature)

    def claims(self, subject: str) -> dict:
        now = int(time.time())
        return {"iss": self.issuer, "aud": DOMAIN, "sub": subject, "exp": now + 600,
                "nbf": now - 5, "iat": now - 5, "jti": f"forged-{now}", "role": "agent"}

    def ephemeral(self, extension: str, expiry: int) -> tuple[str, str]:
        username = f"{expiry}:{extension}"
        return username, password_for(tenant_secret(self.digest_secret, "default"), username)


@pytest.fixture(scope="module")
def tokens(running_stack: RunningStack) -> Tokens:
    return Tokens(running_stack)


# Refusals count as authentication failures of their source, and enough of them ban it:
# each test that expects refusals sends from an address of its own (all loopback).
REVOCATION_IP = "127.0.0.61"
WRONG_AGENT_IP = "127.0.0.62"
EPHEMERAL_IP = "127.0.0.63"


def refusal_ip(case: str) -> str:
    return f"127.0.0.{40 + sorted(REFUSALS).index(case)}"


def register_bearer(stack: RunningStack, workdir: Path, extension: str, token: str,
                    name: str, transport: str = "u1", local_ip: str = "127.0.0.1") -> SippRun:
    run = SippRun(name, [
        sipp.sipp_binary(), stack.proxy, "-sf", str(SCENARIOS / "agent_register_bearer.xml"),
        "-m", "1", "-i", local_ip, "-s", extension, "-t", transport,
        "-key", "domain", DOMAIN, "-key", "contact_port", "9", "-key", "expires", "60",
        "-key", "token", token, "-timeout", "10s", *sipp._common(name, workdir),
    ], workdir)
    run.run(timeout=30)
    return run


def statuses(run: SippRun) -> list[int]:
    return [int(line.split()[1]) for line in run.first_lines() if line.startswith("SIP/2.0 ")]


def test_register_with_a_valid_bearer_token_succeeds(running_stack: RunningStack,
                                                     tokens: Tokens, sipp_dir: Path) -> None:
    run = register_bearer(running_stack, sipp_dir, "1001", tokens.agent("1001"), "bearer-ok")
    assert run.returncode == 0, run.trace()
    assert statuses(run) == [200]


REFUSALS = {
    "expired": lambda t: t.agent("1001", now=time.time() - 7200, ttl=600),
    "not_yet_valid": lambda t: t.agent("1001", now=time.time() + 3600),
    "wrong_aud": lambda t: t.agent("1001", audience="other.omnicc.test"),
    "wrong_iss": lambda t: t.agent("1001", issuer="somebody-else"),
    "bad_signature": lambda t: t.agent("1001", key=generate_signing_key("EdDSA")),
    "alg_none": lambda t: t.forged({"alg": "none", "typ": "JWT", "kid": t.kid},
                                   t.claims("1001"), b""),
    "hs256_with_public_key": lambda t: _hs256_confusion(t),
    "token_of_another_agent": lambda t: t.agent("1002"),
    "garbage_after_bearer": lambda t: "not-a-jwt-at-all",
}


def _hs256_confusion(t: Tokens) -> str:
    """HS256 signed with the public key as the HMAC secret: the algorithm-confusion attack."""
    from cryptography.hazmat.primitives import serialization

    public_pem = serialization.load_pem_private_key(t.key, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": t.kid}
    unsigned = t.forged(header, t.claims("1001"), b"").rsplit(".", 1)[0]
    signature = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_register_with_a_bad_bearer_token_is_refused(running_stack: RunningStack,
                                                     tokens: Tokens, sipp_dir: Path,
                                                     case: str) -> None:
    run = register_bearer(running_stack, sipp_dir, "1001", REFUSALS[case](tokens), case,
                          local_ip=refusal_ip(case))
    assert run.returncode != 0
    assert statuses(run) and all(code in (401, 403) for code in statuses(run)), statuses(run)


# Kamailio's UDP workers (omnicc.render's default children=4) take requests as they come:
# this many registrations in a row meet most of them. Fewer refusals: each counts towards
# the auth-failure ban of the address (security.auth_failures).
WORKER_ROUNDS = 8
REFUSED_ROUNDS = 4


def test_revoked_token_and_disabled_agent_are_refused_on_the_next_request(
    running_stack: RunningStack, tokens: Tokens, sipp_dir: Path
) -> None:
    """`omnicc token revoke` and `omnicc agent disable` act on the very next request,
    although every worker remembers, from the registrations before, that the agent and
    its token were fine (Redis invalidates what they remember)."""
    directory = running_stack.directory

    def register(token: str, name: str) -> SippRun:
        return register_bearer(running_stack, sipp_dir, "1001", token, name,
                               local_ip=REVOCATION_IP)

    token = tokens.agent("1001", jti="revoke-me")
    for attempt in range(WORKER_ROUNDS):  # enough to meet every worker
        assert register(token, f"before-{attempt}").returncode == 0
    assert omnicc_cli(directory, "token", "revoke", "revoke-me", "--for", "10m").returncode == 0
    try:
        for attempt in range(REFUSED_ROUNDS):
            assert set(statuses(register(token, f"revoked-{attempt}"))) == {401}
    finally:
        running_stack.redis().delete(revoked_jti("default", "revoke-me"))
    fresh = tokens.agent("1001")
    for attempt in range(WORKER_ROUNDS):
        assert register(fresh, f"fresh-{attempt}").returncode == 0
    assert omnicc_cli(directory, "agent", "disable", "1001").returncode == 0
    try:
        for attempt in range(REFUSED_ROUNDS):
            assert set(statuses(register(fresh, f"disabled-{attempt}"))) == {401}
    finally:
        assert omnicc_cli(directory, "agent", "enable", "1001").returncode == 0
    assert register(fresh, "enabled").returncode == 0


def test_an_agent_registered_again_right_after_unregistering_is_reachable(
    running_stack: RunningStack, tokens: Tokens
) -> None:
    """A worker that published the agent's contact a moment ago publishes nothing for a
    refresh that changes nothing; after an unregistration through any worker, none may
    take the contact as still published: the next registration, whichever worker takes
    it, publishes it before its 200 OK."""
    store = running_stack.redis()
    key = agent_contact("default", "1001")
    token = tokens.agent("1001")
    from .test_digest_replay import RawPhone, status

    bearer = f"Bearer {token}"
    for round_ in range(6):  # each from its own address: the flood counter is per source
        phone = RawPhone(running_stack, source_ip=f"127.0.0.{70 + round_}", extension="1001")
        try:
            for _ in range(WORKER_ROUNDS):  # every worker has published the contact
                assert status(phone.register(60, bearer)) == 200
            assert status(phone.register(0, bearer)) == 200
            assert not store.exists(key)
            for attempt in range(WORKER_ROUNDS):
                assert status(phone.register(60, bearer)) == 200
                assert store.exists(key), f"round {round_}, {attempt}: not reachable"
                assert 50 <= store.ttl(key) <= 60
            # No binding left behind for other tests.
            assert status(phone.register(0, bearer)) == 200
        finally:
            phone.close()


def test_a_refresh_is_written_back_by_the_nodes_flusher(running_stack: RunningStack,
                                                       tokens: Tokens) -> None:
    """A REGISTER that refreshes a contact its worker already published is queued, and
    Kamailio's flusher process (rtimer, KEMI ksr_flush_refreshes) writes it to Redis: the
    reachability's TTL follows the new expiry within moments; an unregistration right
    after refreshes still removes it. (Whether a refresh is still queued when the
    unregistration lands depends on the flusher's timing: the tombstone that keeps such a
    refresh from bringing the agent back is tested deterministically in
    test_lean_redis.py.)"""
    from omnicc import kamailio_rpc
    from omnicc.lean_redis import REFRESH_LUA
    from omnicc.sip_security import WITHDRAWN_SECONDS, WITHDRAWN_TABLE

    from .test_digest_replay import RawPhone, status

    store = running_stack.redis()
    key = agent_contact("default", "1001")
    # An earlier test's unregistration makes every worker publish 1001 with a round trip
    # for a few seconds (the node's `withdrawn` htable): wait until that has passed.
    fifo = kamailio_rpc.fifo_path(running_stack.stack.run_dir)
    deadline = time.monotonic() + WITHDRAWN_SECONDS + 2
    while time.monotonic() < deadline:
        try:
            kamailio_rpc.call(fifo, "htable.get", WITHDRAWN_TABLE, key)
        except kamailio_rpc.KamailioRpcError as error:
            assert kamailio_rpc.is_missing_key(error), error
            break
        time.sleep(0.2)
    bearer = f"Bearer {tokens.agent('1001')}"
    refresh_script = hashlib.sha1(REFRESH_LUA.encode()).hexdigest()
    phone = RawPhone(running_stack, source_ip="127.0.0.80", extension="1001")
    try:
        for _ in range(WORKER_ROUNDS):  # every worker has published the contact
            assert status(phone.register(60, bearer)) == 200
        store.script_flush()  # so the flusher's script shows when it runs
        # A longer expiry: not a refresh that moves nothing (those send nothing at all).
        for _ in range(WORKER_ROUNDS):
            assert status(phone.register(600, bearer)) == 200
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not store.script_exists(refresh_script)[0]:
            time.sleep(0.05)
        assert store.script_exists(refresh_script)[0], "the flusher wrote nothing"
        assert 590 <= store.ttl(key) <= 600
        # Refreshes queued a moment before an unregistration (each flush is 20 ms apart)
        # are not written after it.
        for _ in range(WORKER_ROUNDS):
            assert status(phone.register(900, bearer)) == 200
        assert status(phone.register(0, bearer)) == 200
        time.sleep(0.3)  # a refresh still queued would be written back by now
        assert not store.exists(key)
    finally:
        phone.close()


def test_a_64_kb_authorization_header_is_refused(running_stack: RunningStack,
                                                 sipp_dir: Path) -> None:
    run = register_bearer(running_stack, sipp_dir, "1001", "A" * 65536, "huge",
                          transport="t1")
    assert run.returncode != 0
    assert 200 not in statuses(run)


def test_invite_with_a_valid_bearer_token_reaches_another_agent(
    running_stack: RunningStack, tokens: Tokens, sipp_dir: Path
) -> None:
    since = now_id()
    with agent_online(running_stack, sipp_dir, "1002") as phone:
        call = SippRun("agent-call", [
            sipp.sipp_binary(), running_stack.proxy, "-sf",
            str(SCENARIOS / "agent_call_bearer.xml"), "-m", "1", "-i", "127.0.0.1",
            "-s", "1002", "-d", "500", "-key", "from", "1001", "-key", "domain", DOMAIN,
            "-key", "token", tokens.agent("1001"), "-timeout", "30s",
            *sipp._common("agent-call", sipp_dir),
        ], sipp_dir)
        assert call.run(timeout=60) == 0, call.trace()
        assert phone.wait(timeout=15) == 0
    routed = [e for e in events_since(running_stack, since, want=1)
              if e["event"] == "agent_call_routed"]
    assert routed and routed[0]["from_agent"] == "1001" and routed[0]["agent"] == "1002"


def test_invite_with_another_agents_token_never_reaches_asterisk(
    running_stack: RunningStack, tokens: Tokens, sipp_dir: Path
) -> None:
    since = now_id()
    call = SippRun("agent-call-bad", [
        sipp.sipp_binary(), running_stack.proxy, "-sf", str(SCENARIOS / "agent_call_bearer.xml"),
        "-m", "1", "-i", WRONG_AGENT_IP, "-s", "1002", "-key", "from", "1001",
        "-key", "domain", DOMAIN, "-key", "token", tokens.agent("1002"), "-timeout", "10s",
        *sipp._common("agent-call-bad", sipp_dir),
    ], sipp_dir)
    assert call.run(timeout=30) != 0
    assert statuses(call) and statuses(call)[-1] in (401, 407)
    time.sleep(0.5)
    assert events_since(running_stack, since, want=0, timeout=0) == []


def test_ephemeral_digest_credentials(running_stack: RunningStack, tokens: Tokens,
                                      sipp_dir: Path) -> None:
    def register(username: str, password: str, name: str) -> SippRun:
        run = sipp.agent_register(sipp_dir, proxy=running_stack.proxy, extension="1001",
                                  password=password, domain=DOMAIN, local_ip=EPHEMERAL_IP,
                                  contact_port=9, expires=60, name=name)
        run.argv[run.argv.index("-au") + 1] = username
        run.run(timeout=30)
        return run

    now = int(time.time())
    good = register(*tokens.ephemeral("1001", now + 600), name="ephemeral-ok")
    assert good.returncode == 0 and statuses(good)[-1] == 200
    expired = register(*tokens.ephemeral("1001", now - 10), name="ephemeral-expired")
    assert expired.returncode != 0 and 200 not in statuses(expired)
    user, _ = tokens.ephemeral("1001", now + 600)
    wrong = register(user, "not-the-password", name="ephemeral-wrong")
    assert wrong.returncode != 0 and 200 not in statuses(wrong)
    # The CLI mints credentials that work.
    cli = omnicc_cli(running_stack.directory, "token", "digest", "1001")
    assert cli.returncode == 0, cli.stderr
    minted = register(*cli.stdout.split(), name="ephemeral-cli")
    assert minted.returncode == 0


def probe(stack: RunningStack, workdir: Path, name: str, *, to_params: str = "",
          extra_header: str = "X-Probe: 1", local_ip: str = "127.0.0.5",
          target: str = "0044123456789", domain: str = DOMAIN) -> SippRun:
    run = SippRun(name, [
        sipp.sipp_binary(), stack.proxy, "-sf", str(SCENARIOS / "probe_invite.xml"),
        "-m", "1", "-i", local_ip, "-s", target, "-key", "domain", domain,
        "-key", "to_params", to_params, "-key", "extra_header", extra_header,
        "-timeout", "6s", *sipp._common(name, workdir),
    ], workdir)
    run.run(timeout=30)
    return run


def test_untrusted_requests_never_reach_asterisk_or_leave_the_machine(
    running_stack: RunningStack, sipp_dir: Path
) -> None:
    since = now_id()
    asterisk = f"127.0.0.1:{running_stack.config.services.asterisk.port}"
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outside.bind(("127.0.0.9", 0))
    outside.settimeout(0.5)
    outside_port = outside.getsockname()[1]
    try:
        # An INVITE to an outside number, without credentials: challenged.
        plain = probe(running_stack, sipp_dir, "outside-number")
        assert statuses(plain)[-1] in (401, 403, 407)
        # An INVITE that claims to be in a dialog, routed at an Asterisk node: refused.
        forged = probe(running_stack, sipp_dir, "forged-dialog", to_params=";tag=forged",
                       extra_header=f"Route: <sip:{asterisk};lr>")
        assert statuses(forged)[-1] == 481
        for run in (plain, forged):
            # Every reply came from Kamailio itself, none from Asterisk.
            servers = {line.strip() for line in run.trace().splitlines()
                       if line.startswith(("Server:", "User-Agent: omnicc-asterisk"))}
            assert servers == {"Server: omnicc"}, servers
        # An initial INVITE whose Route points to an outside host: not followed.
        routed = probe(running_stack, sipp_dir, "outside-route",
                       extra_header=f"Route: <sip:127.0.0.9:{outside_port};lr>")
        assert statuses(routed)[-1] in (401, 403, 407)
        with pytest.raises(TimeoutError):
            outside.recvfrom(65535)
    finally:
        outside.close()
    time.sleep(0.5)
    assert events_since(running_stack, since, want=0, timeout=0) == []


def test_scanner_is_banned_listed_and_unbanned(running_stack: RunningStack) -> None:
    scanner_ip = "127.0.0.11"
    # SIPp cannot set a User-Agent per run, so the scanner speaks raw SIP.
    _send_raw_options(running_stack, scanner_ip, user_agent="friendly-scanner")
    redis = running_stack.redis()
    deadline = time.monotonic() + 5
    while not redis.exists(ban_key(scanner_ip)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis.exists(ban_key(scanner_ip))
    # Banned: even a clean request gets no answer at all.
    assert _send_raw_options(running_stack, scanner_ip, user_agent="Polycom") is None
    status = omnicc_cli(running_stack.directory, "status")
    assert scanner_ip in status.stdout and "scanner" in status.stdout
    unban = omnicc_cli(running_stack.directory, "unban", scanner_ip)
    assert unban.returncode == 0, unban.stdout + unban.stderr
    assert _send_raw_options(running_stack, scanner_ip, user_agent="Polycom") is not None


def _send_raw_options(stack: RunningStack, source_ip: str, user_agent: str,
                      node: tuple[str, int] | None = None) -> str | None:
    """One OPTIONS from source_ip with the given User-Agent to the stack's Kamailio (or the
    one at `node`, (ip, port)); the reply's status line."""
    host, port = node or ("127.0.0.1", stack.config.services.kamailio.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        sock.settimeout(1.0)
        local = sock.getsockname()
        call_id = f"{time.time()}@probe"
        message = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{abs(hash(call_id))};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{local[0]}>;tag=1\r\nTo: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {user_agent}\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(message.encode(), (host, port))
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data.decode(errors="replace").splitlines()[0]


def test_flood_bans_a_stranger_but_never_a_trunk(running_stack: RunningStack) -> None:
    limit = running_stack.config.security.flood_requests
    redis = running_stack.redis()
    stranger, trunk = "127.0.0.12", TRUNK_IP
    try:
        for source in (stranger, trunk):
            for _ in range(limit + 20):
                _send_raw_options_no_wait(running_stack, source)
        time.sleep(0.5)
        assert redis.exists(ban_key(stranger))
        assert not redis.exists(ban_key(trunk))
        assert _send_raw_options(running_stack, trunk, user_agent="carrier") is not None
    finally:
        omnicc_cli(running_stack.directory, "unban", stranger)


def _send_raw_options_no_wait(stack: RunningStack, source_ip: str) -> None:
    port = stack.config.services.kamailio.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        local = sock.getsockname()
        call_id = f"{time.monotonic_ns()}@flood"
        sock.sendto((
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{time.monotonic_ns()}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:flood@{local[0]}>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", port))


def test_repeated_auth_failures_ban_the_source(running_stack: RunningStack,
                                               sipp_dir: Path) -> None:
    source = "127.0.0.13"
    failures = running_stack.config.security.auth_failures
    redis = running_stack.redis()
    try:
        for i in range(failures + 1):
            run = sipp.agent_register(sipp_dir, proxy=running_stack.proxy, extension="1001",
                                      password=f"guess-{i}", domain=DOMAIN, local_ip=source,
                                      contact_port=9, name=f"guess-{i}")
            run.argv[run.argv.index("-timeout") + 1] = "3s"
            run.run(timeout=30)
            if redis.exists(ban_key(source)):
                break
        assert redis.exists(ban_key(source))
        record = json.loads(redis.get(ban_key(source)))
        assert record["reason"] == "auth-failures"
    finally:
        omnicc_cli(running_stack.directory, "unban", source)
