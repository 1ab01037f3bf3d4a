"""kemi/omnicc_kemi.py driven through a fake KSR module: every route, and what it must not do.

The script runs with the example config: tenant `default` (domain default.omnicc.test,
agents 1001 and 1002), the local Asterisk at 127.0.0.1:5080 and the trunk demo-carrier
at 127.0.0.3. Its Redis is tests/unit/fake_redis.py (redis.Redis.from_url is patched), its
secrets are made under a temporary OMNICC_VAR with ensure_local_secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives import serialization

from omnicc.auth_secrets import (
    ensure_local_secrets,
    read_digest_secret,
    read_signing_key,
    resolve_secret_files,
)
from omnicc.config import OmniccConfig, load_config
from omnicc.ephemeral import password_for, tenant_secret
from omnicc.keys import agent_contact, agent_disabled, revoked_jti
from omnicc.sip_security import (
    ALLOWED_METHODS,
    AUTHFAIL_TABLE,
    BANS_TABLE,
    UNWRITTEN_TABLE,
    WITHDRAWN_TABLE,
    BanList,
    htable_definitions,
)
from omnicc.tokens import generate_signing_key, mint_agent_token
from tests.unit.fake_htable import FakeHtables
from tests.unit.fake_redis import FakeRedis
from tests.unit.ksr_stub import Credentials, FakeKSR, SipRequest, bind, kemi_script_loaded

REG_SAVE_NO_REPLY = 0x02  # kemi/omnicc_kemi.py: save() without its reply
QOP_AUTH = 1  # auth_challenge() flag: the challenge offers qop=auth (replay protection)

REPO_ROOT = Path(__file__).resolve().parents[2]
KEMI_SCRIPT = REPO_ROOT / "kemi" / "omnicc_kemi.py"
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "omnicc.yaml"
REDIS_URL = "redis://127.0.0.1:16379/0"

TENANT, DOMAIN = "default", "default.omnicc.test"
ASTERISK_IP, ASTERISK_PORT = "127.0.0.1", 5080
TRUNK_IP = "127.0.0.3"
STRANGER_IP = "198.51.100.20"
AGENT, AGENT_PASSWORD = "1001", "demo-pass-1001"
OTHER_AGENT = "1002"
FAILURE_ROUTE = "ksr_failure_next_asterisk"
WWW_BEARER = f'WWW-Authenticate: Bearer realm="{DOMAIN}"\r\n'
PROXY_BEARER = f'Proxy-Authenticate: Bearer realm="{DOMAIN}"\r\n'


# ---------------------------------------------------------------------------- requests


def good_credentials(user: str = AGENT) -> Credentials:
    return Credentials(username=user, password=AGENT_PASSWORD, realm=DOMAIN)


def register(user: str = AGENT, domain: str = DOMAIN, credentials: Credentials | None = None,
             **changes: Any) -> SipRequest:
    request = SipRequest(
        method="REGISTER", source_ip=STRANGER_IP, source_port=40000, ruri_user=None,
        from_user=user, from_domain=domain, to_user=user, to_domain=domain,
        credentials=credentials,
    )
    return replace(request, **changes)


def invite_from_trunk(did: str = "5550100", **changes: Any) -> SipRequest:
    request = SipRequest(
        method="INVITE", source_ip=TRUNK_IP, source_port=5060, ruri_user=did,
        from_user="5551234", from_domain="carrier.example", to_user=did, to_domain=DOMAIN,
    )
    return replace(request, **changes)


def invite_from_asterisk(agent: str = AGENT, **changes: Any) -> SipRequest:
    request = SipRequest(
        method="INVITE", source_ip=ASTERISK_IP, source_port=ASTERISK_PORT, ruri_user=agent,
        from_user="5551234", from_domain=DOMAIN, to_user=agent, to_domain=DOMAIN,
    )
    return replace(request, **changes)


def invite_from_agent(**changes: Any) -> SipRequest:
    request = SipRequest(
        method="INVITE", source_ip=STRANGER_IP, source_port=40000, ruri_user="5559999",
        from_user=AGENT, from_domain=DOMAIN, to_user="5559999", to_domain=DOMAIN,
    )
    return replace(request, **changes)


def in_dialog(method: str, **changes: Any) -> SipRequest:
    request = SipRequest(
        method=method, source_ip=TRUNK_IP, ruri_user=AGENT, from_user="5551234",
        from_domain="carrier.example", to_user="5550100", to_domain=DOMAIN, to_tag="as-1234",
        headers=[("Route", f"<sip:{ASTERISK_IP};lr>")],
    )
    return replace(request, **changes)


def in_dialog_from_agent(method: str, **changes: Any) -> SipRequest:
    return in_dialog(method, source_ip=STRANGER_IP, source_port=40000, from_user=AGENT,
                     from_domain=DOMAIN, **changes)


def keepalive(**changes: Any) -> SipRequest:
    return replace(SipRequest(method="OPTIONS", source_ip=STRANGER_IP, ruri_user=None), **changes)


def with_bearer(request: SipRequest, token: str) -> SipRequest:
    """The request with `Authorization: Bearer` (REGISTER) or `Proxy-Authorization: Bearer`."""
    name = "Authorization" if request.method == "REGISTER" else "Proxy-Authorization"
    return replace(request, headers=[*request.headers, (name, f"Bearer {token}")])


# ---------------------------------------------------------------------------- secrets, tokens


@dataclass(frozen=True)
class Secrets:
    """What the local stack's secrets hold: the signing key and the digest secret."""

    config: OmniccConfig
    signing_key: bytes
    digest_secret: bytes

    def token(self, subject: str = AGENT, *, now: float | None = None, ttl: int = 3600,
              audience: str = DOMAIN, issuer: str | None = None,
              private_pem: bytes | None = None, jti: str | None = None) -> str:
        jwt = self.config.auth.jwt
        return mint_agent_token(
            private_pem or self.signing_key, kid=jwt.signing_kid, algorithm=jwt.algorithm,
            issuer=issuer or jwt.issuer, audience=audience, subject=subject,
            ttl_seconds=ttl, now=time.time() if now is None else now, jti=jti,
        )

    def claims(self, subject: str = AGENT) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.config.auth.jwt.issuer, "aud": DOMAIN, "sub": subject,
                "iat": now, "nbf": now, "exp": now + 3600, "jti": "forged", "role": "agent"}

    def ephemeral(self, extension: str = AGENT, *, expires_in: int = 3600) -> Credentials:
        """Digest credentials as `omnicc token digest` makes them (username EXPIRY:EXT)."""
        username = f"{int(time.time()) + expires_in}:{extension}"
        return Credentials(username, self.ephemeral_password(username), DOMAIN)

    def ephemeral_password(self, username: str) -> str:
        return password_for(tenant_secret(self.digest_secret, TENANT), username)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value).encode("utf-8"))


def alg_none_token(secrets: Secrets) -> str:
    header = {"alg": "none", "kid": secrets.config.auth.jwt.signing_kid, "typ": "JWT"}
    return f"{segment(header)}.{segment(secrets.claims())}."


def hs256_with_the_public_key(secrets: Secrets) -> str:
    # Algorithm confusion: HMAC keyed with the public key, which anyone can have.
    public_pem = serialization.load_pem_private_key(secrets.signing_key, None).public_key() \
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": secrets.config.auth.jwt.signing_kid, "typ": "JWT"}
    signing_input = f"{segment(header)}.{segment(secrets.claims())}"
    mac = hmac.new(public_pem, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


# ---------------------------------------------------------------------------- the worker


@pytest.fixture(scope="module")
def kemi() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    with kemi_script_loaded(KEMI_SCRIPT) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local stack's var/ with its secrets (made once: an EdDSA key is cheap, but
    every worker of a test module shares them, as Kamailio's workers do)."""
    var = tmp_path_factory.mktemp("var")
    ensure_local_secrets(load_config(EXAMPLE_CONFIG), EXAMPLE_CONFIG, var)
    return var


@pytest.fixture(scope="module")
def secrets(var_dir: Path) -> Secrets:
    config = load_config(EXAMPLE_CONFIG)
    files = resolve_secret_files(config, EXAMPLE_CONFIG, var_dir)
    return Secrets(config, read_signing_key(files), read_digest_secret(files))


@dataclass
class Worker:
    """One Kamailio worker process: the script's object after child_init."""

    handler: Any
    ksr: types.ModuleType
    redis: FakeRedis
    htables: FakeHtables  # the node's, shared by its workers; on the FakeRedis clock
    redis_opened: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seen: list[FakeKSR] = field(default_factory=list)
    mqueues: dict[str, deque[tuple[str, str]]] = field(default_factory=dict)  # the node's
    script: Any = None  # the KEMI script's module

    def fake(self, request: SipRequest, **options: Any) -> FakeKSR:
        fake = FakeKSR(request, htables=self.htables, mqueues=self.mqueues, **options)
        bind(self.ksr, fake)
        self.seen.append(fake)
        return fake

    def route(self, request: SipRequest, **options: Any) -> FakeKSR:
        """Run the request route; it must always return 1 (the worker carries on)."""
        fake = self.fake(request, **options)
        assert self.handler.ksr_request_route(None) == 1
        return fake

    def failure_route(self, request: SipRequest, **options: Any) -> FakeKSR:
        fake = self.fake(request, **options)
        assert getattr(self.handler, FAILURE_ROUTE)(None) == 1
        return fake

    @property
    def bans(self) -> BanList:
        """The record of bans in Redis (what `omnicc status` lists)."""
        return BanList(self.redis)

    def banned_on_node(self, ip: str = STRANGER_IP) -> bool:
        return self.htables.get(BANS_TABLE, ip) is not None

    def ban_on_node(self, ip: str, reason: str = "scanner") -> None:
        """A ban in the node's table, as one made by another node arrives over DMQ."""
        seconds = self.handler.config.security.ban_seconds
        self.htables.set_expiring(BANS_TABLE, ip, reason, seconds)

    def auth_failures(self, ip: str = STRANGER_IP) -> int:
        return self.htables.get(AUTHFAIL_TABLE, ip) or 0


class FakeAdmission:
    """TrackedAdmission's interface over FakeRedis: the script, and withdraw()."""

    def __init__(self, server: FakeRedis, lua: str) -> None:
        self._server = server
        self._script = server.register_script(lua)

    def __call__(self, keys: Any, args: Any) -> int:
        return self._script(keys=keys, args=args)

    def withdraw(self, contact: str) -> None:
        self._server.delete(contact)


def start_worker(kemi: tuple[types.ModuleType, types.ModuleType],
                 monkeypatch: pytest.MonkeyPatch, var_dir: Path,
                 config_path: Path = EXAMPLE_CONFIG) -> Worker:
    script, ksr = kemi
    server = FakeRedis()
    opened: list[tuple[str, dict[str, Any]]] = []

    def from_url(url: str, **options: Any) -> FakeRedis:
        opened.append((url, options))
        return server

    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(from_url))

    def lean_admission(url: str, lua: str, **options: Any) -> Any:
        # The lean client of the hot path, on the same fake server.
        opened.append((url, {"lean": True, **options}))
        return FakeAdmission(server, lua)

    monkeypatch.setattr(script, "TrackedAdmission", lean_admission)
    monkeypatch.setenv("OMNICC_CONFIG", str(config_path))
    monkeypatch.setenv("OMNICC_VAR", str(var_dir))
    monkeypatch.setenv("OMNICC_REDIS_URL", REDIS_URL)
    config = load_config(config_path)
    htables = FakeHtables(htable_definitions(config.security, clustered=False),
                          clock=lambda: server.now)
    worker = Worker(handler=script.mod_init(), ksr=ksr, redis=server, htables=htables,
                    redis_opened=opened, script=script)
    startup = worker.fake(SipRequest())
    assert worker.handler.child_init(1) == 0, startup.calls
    return worker


def check_stub_coverage(worker: Worker) -> None:
    for fake in worker.seen:
        assert fake.unmodelled == [], "the script called KSR functions the stub does not model"


@pytest.fixture
def worker(
    kemi: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch,
    var_dir: Path,
) -> Iterator[Worker]:
    worker = start_worker(kemi, monkeypatch, var_dir)
    yield worker
    check_stub_coverage(worker)


@pytest.fixture
def worker_with(
    kemi: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch,
    var_dir: Path, tmp_path: Path,
) -> Iterator[Callable[[str], Worker]]:
    """A worker whose config is the example plus some YAML (e.g. an auth section)."""
    started: list[Worker] = []

    def start(extra_yaml: str) -> Worker:
        config_path = tmp_path / "omnicc.yaml"
        config_path.write_text(EXAMPLE_CONFIG.read_text() + "\n" + extra_yaml)
        started.append(start_worker(kemi, monkeypatch, var_dir, config_path))
        return started[-1]

    yield start
    for worker in started:
        check_stub_coverage(worker)


def assert_nothing_sent(fake: FakeKSR) -> None:
    assert fake.replies == []
    assert not fake.relayed
    assert fake.challenges == []
    assert "sl.sl_reply_error" not in fake.names()


def assert_challenged(fake: FakeKSR, *, proxy: bool = False) -> None:
    """Refused with both challenges (RFC 8898: Bearer beside Digest), nothing forwarded."""
    assert fake.reply_headers == [PROXY_BEARER if proxy else WWW_BEARER]
    assert fake.challenges == [(DOMAIN, QOP_AUTH)]
    assert fake.index_of("hdr.append_to_reply") < fake.index_of("auth.auth_challenge")
    assert fake.replies == []  # auth_challenge() sends the 401/407 itself
    assert not fake.relayed
    assert "registrar.save" not in fake.names()
    assert "dispatcher.ds_select_dst" not in fake.names()


# ---------------------------------------------------------------------------- start-up


def test_child_init_loads_the_config_named_by_omnicc_config(worker: Worker) -> None:
    assert worker.handler.config.node == "demo-1"
    assert worker.handler.policy is not None
    assert worker.handler.auth is not None
    assert worker.handler.guard is not None


def test_child_init_opens_the_redis_named_by_omnicc_redis_url_with_short_timeouts(
    worker: Worker,
) -> None:
    [(url, options)] = [(u, o) for u, o in worker.redis_opened if not o.get("lean")]
    [(lean_url, lean_options)] = [(u, o) for u, o in worker.redis_opened if o.get("lean")]
    assert url == lean_url == REDIS_URL
    # A Redis that hangs must not hold a SIP worker for long.
    assert 0 < options["socket_timeout"] <= 1
    assert 0 < options["socket_connect_timeout"] <= 1
    assert lean_options["lean"] and 0 < lean_options["timeout"] <= 1


def test_child_init_with_a_bad_config_fails_the_worker_and_logs_why(
    kemi: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OMNICC_CONFIG", str(tmp_path / "missing.yaml"))
    script, ksr = kemi
    handler = script.mod_init()
    fake = FakeKSR(SipRequest())
    bind(ksr, fake)
    assert handler.child_init(1) == -1
    (logged,) = fake.calls_to("err")
    assert "missing.yaml" in logged[0] and "no such config file" in logged[0]


def test_child_init_without_the_secrets_fails_the_worker_and_names_the_file(
    kemi: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(lambda url, **_: FakeRedis()))
    monkeypatch.setenv("OMNICC_CONFIG", str(EXAMPLE_CONFIG))
    monkeypatch.setenv("OMNICC_VAR", str(tmp_path / "empty-var"))
    script, ksr = kemi
    handler = script.mod_init()
    fake = FakeKSR(SipRequest())
    bind(ksr, fake)
    assert handler.child_init(1) == -1
    (logged,) = fake.calls_to("err")
    assert str((tmp_path / "empty-var").resolve() / "secrets" / "jwks.json") in logged[0]
    assert logged[0].count("\n") == 1  # one log line


def test_a_worker_without_config_still_answers_every_request(
    kemi: tuple[types.ModuleType, types.ModuleType],
) -> None:
    script, ksr = kemi
    handler = script.mod_init()  # child_init never ran, or failed
    fake = FakeKSR(invite_from_trunk())
    bind(ksr, fake)
    assert handler.ksr_request_route(None) == 1
    assert fake.replies == [(500, "Server Internal Error")]


# ---------------------------------------------------------------------------- sanity first


def test_options_keepalive_to_the_proxy_is_answered_200(worker: Worker) -> None:
    fake = worker.route(keepalive())
    assert fake.replies == [(200, "Keepalive")]
    assert not fake.relayed
    assert "auth.pv_auth_check" not in fake.names()


def test_options_for_a_user_is_not_a_keepalive(worker: Worker) -> None:
    fake = worker.route(replace(invite_from_agent(), method="OPTIONS", ruri_user="1002"))
    assert (200, "Keepalive") not in fake.replies
    assert_challenged(fake, proxy=True)


def test_options_for_another_host_is_not_a_keepalive(worker: Worker) -> None:
    fake = worker.route(keepalive(ruri_is_myself=False, from_domain=DOMAIN))
    assert (200, "Keepalive") not in fake.replies


def test_too_many_hops_is_483(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(), results={"maxfwd.process_maxfwd": -1})
    assert fake.replies == [(483, "Too Many Hops")]
    assert not fake.relayed


def test_malformed_request_is_left_to_sanity_and_logged(worker: Worker) -> None:
    # sanity_check() sends its own 400 reply; the script only logs and stops.
    fake = worker.route(invite_from_trunk(), results={"sanity.sanity_check": -1})
    assert_nothing_sent(fake)
    (logged,) = fake.calls_to("err")
    assert TRUNK_IP in logged[0]
    assert "dispatcher.ds_select_dst" not in fake.names()


@pytest.mark.parametrize("method", ["PUBLISH", "MESSAGE", "SUBSCRIBE", "FOO"])
@pytest.mark.parametrize("make_request", [invite_from_agent, invite_from_trunk],
                         ids=["stranger", "trunk"])
def test_a_method_omnicc_does_not_need_is_405_with_an_allow_header(
    worker: Worker, method: str, make_request: Callable[..., SipRequest]
) -> None:
    fake = worker.route(make_request(method=method))
    assert fake.replies == [(405, "Method Not Allowed")]
    (allow,) = fake.reply_headers
    assert allow.endswith("\r\n")
    name, _, value = allow.rstrip("\r\n").partition(":")
    assert name == "Allow"
    assert {m.strip() for m in value.split(",")} == set(ALLOWED_METHODS)
    assert fake.index_of("hdr.append_to_reply") < fake.index_of("sl.sl_send_reply")
    assert fake.challenges == [] and not fake.relayed


def test_the_methods_omnicc_needs_are_allowed() -> None:
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"} <= ALLOWED_METHODS
    assert not {"PUBLISH", "MESSAGE", "SUBSCRIBE"} & ALLOWED_METHODS


# ---------------------------------------------------------------------------- REGISTER: digest


def test_register_without_credentials_is_challenged_with_the_tenant_realm(
    worker: Worker,
) -> None:
    fake = worker.route(register())
    assert_challenged(fake)
    assert worker.auth_failures() == 0  # asking for a challenge is no failure


@pytest.mark.parametrize("credentials", [
    Credentials(AGENT, "wrong-password", DOMAIN),
    Credentials(AGENT, AGENT_PASSWORD, "other.realm"),
    Credentials("1002", AGENT_PASSWORD, DOMAIN),  # someone else's digest user
], ids=["wrong-password", "wrong-realm", "other-user"])
def test_register_with_failed_credentials_is_challenged_again_and_counted(
    worker: Worker, credentials: Credentials
) -> None:
    fake = worker.route(register(credentials=credentials))
    assert_challenged(fake)
    assert ("Authorization",) not in fake.calls_to("hdr.remove")
    assert worker.auth_failures() == 1


def test_register_with_good_credentials_is_saved(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()))
    # checks=0: the digest user is matched to the AOR by omnicc (digest_password).
    assert fake.calls_to("auth.pv_auth_check") == [(DOMAIN, AGENT_PASSWORD, 0, 0)]
    assert fake.calls_to("registrar.save") == [("location", REG_SAVE_NO_REPLY)]
    # The credentials stay in the request: a REGISTER is never forwarded, and the
    # registrar keeps the contact, not the request's headers.
    assert fake.replies == []  # save() sends the 200 itself
    assert fake.challenges == []
    assert worker.auth_failures() == 0


def test_register_that_cannot_be_saved_gets_the_registrar_error(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()),
                        results={"registrar.save": -1})
    assert fake.calls_to("sl.sl_reply_error") == [()]


def test_static_passwords_can_be_turned_off(worker_with: Callable[[str], Worker]) -> None:
    worker = worker_with("auth:\n  digest:\n    allow_static_passwords: false\n")
    fake = worker.route(register(credentials=good_credentials()))
    ((_, password, _, _),) = fake.calls_to("auth.pv_auth_check")
    assert password != AGENT_PASSWORD
    assert_challenged(fake)


def without_password(calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """The call log with the password given to pv_auth_check blanked out."""
    return [(name, (args[0], "<password>", *args[2:]) if name == "auth.pv_auth_check" else args)
            for name, args in calls]


@pytest.mark.parametrize("attempt", [None, Credentials("1009", "", DOMAIN),
                                     Credentials("1009", "guess", DOMAIN)],
                         ids=["no-credentials", "empty-password", "guessed-password"])
def test_unknown_user_is_challenged_exactly_like_a_known_one(
    worker: Worker, attempt: Credentials | None
) -> None:
    # Anti-enumeration: nothing in the replies may tell which extensions exist.
    # A first failure opens this address's counting windows, so both requests below
    # find them open (a window's start is per address, not per user).
    worker.route(register(user=OTHER_AGENT,
                          credentials=Credentials(OTHER_AGENT, "warm-up", DOMAIN)))
    known_attempt = attempt and replace(attempt, username=AGENT)
    known = worker.route(register(user=AGENT, credentials=known_attempt))
    unknown = worker.route(register(user="1009", credentials=attempt))
    assert without_password(unknown.calls) == without_password(known.calls)
    assert_challenged(unknown)
    assert unknown.replies == []  # in particular, no 404
    if attempt is not None:
        (check,) = unknown.calls_to("auth.pv_auth_check")
        assert check[1] not in ("", "guess", AGENT_PASSWORD)


def test_register_to_an_unknown_domain_is_403(worker: Worker) -> None:
    fake = worker.route(register(domain="evil.example", credentials=good_credentials()))
    assert fake.replies == [(403, "Forbidden")]
    assert fake.challenges == []
    assert "auth.pv_auth_check" not in fake.names()
    assert "registrar.save" not in fake.names()


@pytest.mark.parametrize(("source_ip", "source_port"), [(TRUNK_IP, 5060),
                                                        (ASTERISK_IP, ASTERISK_PORT)],
                         ids=["trunk", "asterisk"])
def test_register_from_a_trusted_peer_is_403(
    worker: Worker, source_ip: str, source_port: int
) -> None:
    # Trusted peers are admitted by address: an agent's registration from one of their
    # addresses would let anyone behind it take over the AOR without credentials.
    fake = worker.route(register(source_ip=source_ip, source_port=source_port,
                                 credentials=good_credentials()))
    assert fake.replies == [(403, "Trusted Peers Do Not Register")]
    assert "registrar.save" not in fake.names()
    assert "auth.pv_auth_check" not in fake.names()


# ---------------------------------------------------------------------------- ephemeral digest


def test_ephemeral_digest_credentials_are_checked_against_their_hmac(
    worker: Worker, secrets: Secrets
) -> None:
    credentials = secrets.ephemeral(AGENT)
    fake = worker.route(register(credentials=credentials))
    # $aU (the whole EXPIRY:EXT username), not $au, names the credential.
    assert ("$aU",) in fake.calls_to("pv.get")
    assert fake.calls_to("auth.pv_auth_check") == [(DOMAIN, credentials.password, 0, 0)]
    assert fake.calls_to("registrar.save") == [("location", REG_SAVE_NO_REPLY)]
    assert fake.challenges == []


def test_an_agent_calls_with_ephemeral_digest_credentials(
    worker: Worker, secrets: Secrets
) -> None:
    fake = worker.route(invite_from_agent(credentials=secrets.ephemeral(AGENT)))
    assert fake.relayed
    assert ("X-Omnicc-Agent", AGENT) in fake.outgoing_headers
    assert not any(name.lower() == "proxy-authorization" for name, _ in fake.outgoing_headers)


@pytest.mark.parametrize(("aor", "credential_for", "expires_in"), [
    (AGENT, AGENT, -10),            # expired
    (AGENT, OTHER_AGENT, 3600),     # 1002's credentials for AOR 1001
    ("1009", "1009", 3600),         # a well-made credential of no agent
], ids=["expired", "other-extension", "unknown-extension"])
def test_ephemeral_credentials_that_prove_nothing_are_checked_against_a_decoy(
    worker: Worker, secrets: Secrets, aor: str, credential_for: str, expires_in: int
) -> None:
    credentials = secrets.ephemeral(credential_for, expires_in=expires_in)
    fake = worker.route(register(user=aor, credentials=credentials))
    ((realm, password, flags, checks),) = fake.calls_to("auth.pv_auth_check")
    assert (realm, flags, checks) == (DOMAIN, 0, 0)
    assert password != credentials.password  # the phone's own (right) HMAC is useless
    assert_challenged(fake)
    assert worker.auth_failures() == 1


def test_ephemeral_credentials_of_a_disabled_agent_are_refused(
    worker: Worker, secrets: Secrets
) -> None:
    worker.redis.set(agent_disabled(TENANT, AGENT), "1")
    fake = worker.route(register(credentials=secrets.ephemeral(AGENT)))
    assert_challenged(fake)
    (logged,) = fake.calls_to("info")
    assert logged[0].endswith(": disabled agent or revoked token\n")
    assert worker.auth_failures() == 1


def test_a_reused_nonce_count_is_refused_but_not_counted(worker: Worker) -> None:
    # Kamailio (auth nonce_count) says -6 for a nc it has seen: a replay, or a phone's
    # UDP retransmission, which must not bring the phone closer to a ban.
    fake = worker.route(register(credentials=good_credentials()),
                        results={"auth.pv_auth_check": -6})
    assert_challenged(fake)
    assert worker.auth_failures() == 0
    (logged,) = fake.calls_to("info")
    assert "nonce count reused" in logged[0]


def test_a_digest_answer_without_qop_is_refused_and_counted(worker: Worker) -> None:
    # Without qop there is no nonce count: the answer could be replayed while its nonce
    # lives. Refused before Kamailio's digest check, like a wrong password.
    fake = worker.route(register(credentials=good_credentials(), digest_qop=False))
    assert_challenged(fake)
    assert "auth.pv_auth_check" not in fake.names()
    assert worker.auth_failures() == 1
    (logged,) = fake.calls_to("info")
    assert "no qop=auth" in logged[0]


def test_phones_without_qop_are_let_in_when_the_config_says_so(
    worker_with: Callable[[str], Worker]
) -> None:
    worker = worker_with("auth: {digest: {require_qop: false}}")
    fake = worker.route(register(credentials=good_credentials(), digest_qop=False))
    assert fake.calls_to("auth.pv_auth_check") == [(DOMAIN, AGENT_PASSWORD, 0, 0)]
    assert worker.auth_failures() == 0


def test_a_stale_nonce_is_challenged_again_with_stale_true_and_not_counted(
    worker: Worker
) -> None:
    # -4: the digest is right but the nonce is too old, or another node's that this one has
    # no count for; stale=true lets the phone answer again without asking its user.
    fake = worker.route(register(credentials=good_credentials()),
                        results={"auth.pv_auth_check": -4})
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, QOP_AUTH | 16)]
    assert worker.auth_failures() == 0


def test_ephemeral_credentials_with_a_wrong_password_are_refused(
    worker: Worker, secrets: Secrets
) -> None:
    credentials = replace(secrets.ephemeral(AGENT), password="guessed")
    fake = worker.route(register(credentials=credentials))
    assert_challenged(fake)
    assert worker.auth_failures() == 1


# ---------------------------------------------------------------------------- bearer tokens


def test_register_with_a_valid_bearer_token_is_saved(worker: Worker, secrets: Secrets) -> None:
    fake = worker.route(with_bearer(register(), secrets.token(AGENT)))
    assert fake.calls_to("registrar.save") == [("location", REG_SAVE_NO_REPLY)]
    assert "auth.pv_auth_check" not in fake.names()  # no digest arithmetic for a bearer
    assert fake.challenges == [] and fake.replies == []
    assert worker.auth_failures() == 0


def test_a_bearer_token_is_accepted_case_insensitively(worker: Worker, secrets: Secrets) -> None:
    request = register(headers=[("Authorization", f"bearer {secrets.token(AGENT)}")])
    fake = worker.route(request)
    assert fake.calls_to("registrar.save") == [("location", REG_SAVE_NO_REPLY)]


@pytest.mark.parametrize("header", ["Proxy-Authorization", "Authorization"])
def test_an_agents_call_with_a_valid_bearer_token_goes_to_asterisk(
    worker: Worker, secrets: Secrets, header: str
) -> None:
    request = invite_from_agent(headers=[(header, f"Bearer {secrets.token(AGENT)}")])
    fake = worker.route(request)
    assert fake.relayed and fake.replies == [] and fake.challenges == []
    assert fake.calls_to("dispatcher.ds_select_dst") == [(1, 4)]
    internal = [h for h in fake.outgoing_headers if h[0].lower().startswith("x-omnicc-")]
    assert internal == [("X-Omnicc-Tenant", TENANT), ("X-Omnicc-Agent", AGENT)]
    # The token never reaches Asterisk.
    assert not any(name.lower() in ("authorization", "proxy-authorization")
                   for name, _ in fake.outgoing_headers)
    assert max(fake.index_of("hdr.remove", "Authorization"),
               fake.index_of("hdr.remove", "Proxy-Authorization")) < fake.index_of("tm.t_relay")


@dataclass(frozen=True)
class BadBearer:
    """A bearer credential that must be refused, with what the test must arrange first."""

    header_value: Callable[[Secrets], str]
    reason: str  # what the log says (never the reply)
    aor: str = AGENT
    prepare: Callable[[FakeRedis], None] = lambda redis_server: None


def bearer(make_token: Callable[[Secrets], str]) -> Callable[[Secrets], str]:
    return lambda secrets: f"Bearer {make_token(secrets)}"


BAD_BEARERS: dict[str, BadBearer] = {
    "expired": BadBearer(bearer(lambda s: s.token(now=time.time() - 7200, ttl=3600)),
                         "bearer: expired"),
    "not-yet-valid": BadBearer(bearer(lambda s: s.token(now=time.time() + 3600)),
                               "bearer: not_yet_valid"),
    "wrong-aud": BadBearer(bearer(lambda s: s.token(audience="other.omnicc.test")),
                           "bearer: bad_audience"),
    "wrong-iss": BadBearer(bearer(lambda s: s.token(issuer="someone-else")),
                           "bearer: bad_issuer"),
    "bad-signature": BadBearer(bearer(
        lambda s: s.token(private_pem=generate_signing_key(s.config.auth.jwt.algorithm))),
        "bearer: bad_signature"),
    "alg-none": BadBearer(bearer(alg_none_token), "bearer: alg_not_allowed"),
    "hs256-with-public-key": BadBearer(bearer(hs256_with_the_public_key),
                                       "bearer: alg_not_allowed"),
    "token-of-another-agent": BadBearer(bearer(lambda s: s.token(OTHER_AGENT)),
                                        "bearer: token subject is not the AOR"),
    "token-of-an-unknown-agent": BadBearer(bearer(lambda s: s.token("1009")),
                                           "bearer: no such agent", aor="1009"),
    "revoked-jti": BadBearer(
        bearer(lambda s: s.token(jti="stolen-token")), "disabled agent or revoked token",
        prepare=lambda r: r.set(revoked_jti(TENANT, "stolen-token"), "1", ex=3600)),
    "disabled-agent": BadBearer(bearer(lambda s: s.token()), "disabled agent or revoked token",
                                prepare=lambda r: r.set(agent_disabled(TENANT, AGENT), "1")),
    "garbage-after-bearer": BadBearer(lambda s: "Bearer not-a-jwt!!", "bearer: malformed"),
    "two-words-after-bearer": BadBearer(lambda s: "Bearer abc def", "malformed"),
    "bearer-alone": BadBearer(lambda s: "Bearer", "malformed"),
    "basic": BadBearer(lambda s: "Basic MTAwMTpkZW1vLXBhc3MtMTAwMQ==", "malformed"),
    # Over the 8 KB a credential may have, within the message size limit (a 64 KB one
    # is stopped by that limit first: see the test below).
    "oversized-token": BadBearer(lambda s: "Bearer " + "A" * 9000, "malformed"),
}


@pytest.mark.parametrize("bad", list(BAD_BEARERS.values()), ids=list(BAD_BEARERS))
@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_a_bad_bearer_credential_is_challenged_counted_and_never_forwarded(
    worker: Worker, secrets: Secrets, bad: BadBearer, method: str
) -> None:
    bad.prepare(worker.redis)
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    base = register(user=bad.aor) if method == "REGISTER" else invite_from_agent(from_user=bad.aor)
    fake = worker.route(replace(base, headers=[(header, bad.header_value(secrets))]))
    assert_challenged(fake, proxy=method != "REGISTER")
    assert worker.auth_failures() == 1
    (logged,) = fake.calls_to("info")
    assert logged[0] == f"omnicc: authentication failed from {STRANGER_IP}: {bad.reason}\n"


def test_a_64_kb_authorization_header_is_refused_before_anything_reads_it(
    worker: Worker,
) -> None:
    fake = worker.route(register(headers=[("Authorization", "Bearer " + "A" * 65536)]))
    assert fake.replies == [(513, "Message Too Large")]
    assert not fake.relayed and fake.challenges == []
    assert "pv.get" not in [n for n, a in fake.calls if a == ("$hdr(Authorization)",)]


def test_bad_bearer_from_an_unknown_user_looks_like_one_from_a_known_user(
    worker: Worker, secrets: Secrets
) -> None:
    forged = secrets.token(private_pem=generate_signing_key("EdDSA"))
    known = worker.route(with_bearer(register(user=AGENT), forged))
    unknown = worker.route(with_bearer(register(user="1009"), forged))
    for fake in (known, unknown):
        assert_challenged(fake)
    assert (unknown.replies, unknown.reply_headers, unknown.challenges) == \
        (known.replies, known.reply_headers, known.challenges)


def test_revoking_a_token_takes_effect_on_the_next_request(
    worker: Worker, secrets: Secrets
) -> None:
    token = secrets.token(jti="revoke-me")
    assert worker.route(with_bearer(register(), token)).calls_to("registrar.save")
    # The worker has the verified token cached now; revocation must still win.
    worker.redis.set(revoked_jti(TENANT, "revoke-me"), "1", ex=3600)
    assert_challenged(worker.route(with_bearer(register(), token)))


def test_disabling_an_agent_takes_effect_on_the_next_request(
    worker: Worker, secrets: Secrets
) -> None:
    token = secrets.token()
    assert worker.route(with_bearer(invite_from_agent(), token)).relayed
    worker.redis.set(agent_disabled(TENANT, AGENT), "1")
    assert_challenged(worker.route(with_bearer(invite_from_agent(), token)), proxy=True)
    worker.redis.delete(agent_disabled(TENANT, AGENT))
    assert worker.route(with_bearer(invite_from_agent(), token)).relayed


# ---------------------------------------------------------------------------- bans


def test_repeated_auth_failures_ban_the_source(worker: Worker, secrets: Secrets) -> None:
    allowed = worker.handler.config.security.auth_failures
    wrong = register(credentials=Credentials(AGENT, "guess", DOMAIN))
    for _ in range(allowed):
        assert_challenged(worker.route(wrong))
    assert not worker.bans.is_banned(STRANGER_IP)
    # One failure more than allowed bans the source (the request itself is challenged).
    assert_challenged(worker.route(wrong))
    (ban,) = worker.bans.list()
    assert (ban.ip, ban.reason) == (STRANGER_IP, "auth-failures")
    assert ban.expires_in == worker.handler.config.security.ban_seconds
    # From now on, even good credentials get no answer at all.
    fake = worker.route(with_bearer(register(), secrets.token()))
    assert_nothing_sent(fake)
    assert "registrar.save" not in fake.names()
    # Another address is not affected.
    assert worker.route(register(source_ip="198.51.100.21",
                                 credentials=good_credentials())).calls_to("registrar.save")


def test_a_ban_ends_after_ban_seconds(worker: Worker) -> None:
    worker.ban_on_node(STRANGER_IP)
    assert_nothing_sent(worker.route(keepalive()))
    worker.redis.advance(worker.handler.config.security.ban_seconds)
    assert worker.route(keepalive()).replies == [(200, "Keepalive")]


def test_a_flood_from_one_address_bans_it(worker: Worker) -> None:
    limit = worker.handler.config.security.flood_requests
    for _ in range(limit):
        assert worker.route(keepalive()).replies == [(200, "Keepalive")]
    fake = worker.route(keepalive())
    assert_nothing_sent(fake)
    assert [(b.ip, b.reason) for b in worker.bans.list()] == [(STRANGER_IP, "flood")]
    assert_nothing_sent(worker.route(register(credentials=good_credentials())))


def test_requests_spread_over_flood_windows_are_no_flood(worker: Worker) -> None:
    security = worker.handler.config.security
    for _ in range(3):
        for _ in range(security.flood_requests):
            assert worker.route(keepalive()).replies == [(200, "Keepalive")]
        worker.redis.advance(security.flood_window_seconds)
    assert worker.bans.list() == []


@pytest.mark.parametrize("make_request", [invite_from_trunk, invite_from_asterisk],
                         ids=["trunk", "asterisk"])
def test_trusted_peers_are_never_counted_or_banned(
    worker: Worker, make_request: Callable[..., SipRequest]
) -> None:
    # OMniLeads once banned its own Asterisk with an anti-flood rule.
    security = worker.handler.config.security
    for _ in range(security.flood_requests * 2 + 1):
        assert worker.route(make_request()).relayed
    assert worker.route(make_request(user_agent="friendly-scanner")).relayed
    assert worker.route(make_request(message_length=security.max_message_bytes + 1)).relayed
    assert "evalsha" not in worker.redis.commands
    assert worker.redis.keys() == []


def test_a_ban_on_a_trusted_peers_address_does_not_stop_it(worker: Worker) -> None:
    worker.ban_on_node(TRUNK_IP)
    assert worker.route(invite_from_trunk()).relayed


@pytest.mark.parametrize("user_agent", ["friendly-scanner", "sipvicious", "SIPVicious/0.3.4",
                                        "sipcli/v1.8", "Friendly-Scanner 1.0"])
def test_a_scanner_is_dropped_and_banned(worker: Worker, user_agent: str) -> None:
    fake = worker.route(register(user_agent=user_agent, credentials=good_credentials()))
    assert_nothing_sent(fake)
    assert "registrar.save" not in fake.names()
    assert [(b.ip, b.reason) for b in worker.bans.list()] == [(STRANGER_IP, "scanner")]
    (logged,) = fake.calls_to("info")
    assert STRANGER_IP in logged[0]
    # The next request from that address gets nothing either, whatever it says it is.
    assert_nothing_sent(worker.route(keepalive(user_agent="Linphone/5.2.0")))


def test_a_scanner_that_changed_its_user_agent_is_caught_by_its_from_name(
    worker: Worker,
) -> None:
    # svmap with another User-Agent still sends From: "sipvicious" <sip:100@1.1.1.1>.
    fake = worker.route(keepalive(user_agent="Linphone/5.2.0", from_display="sipvicious"))
    assert_nothing_sent(fake)
    assert [(b.ip, b.reason) for b in worker.bans.list()] == [(STRANGER_IP, "scanner")]


@pytest.mark.parametrize("user_agent", [None, "", "Linphone/5.2.0 (belle-sip/5.2.0)",
                                        "Zoiper rv2.10.20.3", "Yealink SIP-T46S 66.86.0.15",
                                        "MicroSIP/3.21.3", "SIP.js/0.21.2"])
def test_ordinary_phones_are_not_scanners(worker: Worker, user_agent: str | None) -> None:
    assert worker.route(keepalive(user_agent=user_agent)).replies == [(200, "Keepalive")]
    assert worker.bans.list() == []


def test_a_message_over_the_size_limit_is_513(worker: Worker) -> None:
    limit = worker.handler.config.security.max_message_bytes
    fake = worker.route(register(credentials=good_credentials(), message_length=limit + 1))
    assert fake.replies == [(513, "Message Too Large")]
    assert "registrar.save" not in fake.names() and fake.challenges == []
    at_limit = worker.route(register(credentials=good_credentials(), message_length=limit))
    assert at_limit.calls_to("registrar.save")


def test_screening_strangers_costs_no_redis_round_trip(worker: Worker) -> None:
    for _ in range(5):
        assert worker.route(keepalive()).replies == [(200, "Keepalive")]
    assert worker.route(register()).challenges == [(DOMAIN, QOP_AUTH)]
    assert worker.redis.commands == []


def test_a_ban_redis_cannot_record_still_holds_on_the_node(worker: Worker) -> None:
    worker.redis.fail()
    fake = worker.route(keepalive(user_agent="friendly-scanner"))
    assert_nothing_sent(fake)
    (logged,) = fake.calls_to("err")
    assert "not recorded in Redis" in logged[0] and "Redis went away" in logged[0]
    assert worker.banned_on_node()
    assert_nothing_sent(worker.route(keepalive()))


def test_a_scanner_is_dropped_even_when_redis_is_down(worker: Worker) -> None:
    worker.redis.fail()
    assert_nothing_sent(worker.route(keepalive(user_agent="friendly-scanner")))


def test_redis_failing_in_the_revocation_check_refuses_the_token(
    worker: Worker, secrets: Secrets
) -> None:
    # A revoked token must never be honoured because Redis could not say it is revoked.
    worker.redis.fail("evalsha")
    fake = worker.route(with_bearer(register(), secrets.token()))
    assert_challenged(fake)
    (logged,) = fake.calls_to("info")
    assert "revocation state unavailable" in logged[0]


def test_with_redis_gone_every_request_still_gets_an_answer(
    worker: Worker, secrets: Secrets
) -> None:
    worker.redis.fail()
    assert_challenged(worker.route(with_bearer(register(), secrets.token())))
    assert_challenged(worker.route(register(credentials=good_credentials())))
    assert worker.route(keepalive()).replies == [(200, "Keepalive")]
    assert worker.route(invite_from_trunk()).relayed  # trusted peers need no Redis here


# ---------------------------------------------------------------------------- NAT


def test_register_behind_nat_saves_the_address_it_came_from(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials(), behind_nat=True))
    assert fake.index_of("nathelper.fix_nated_register") < fake.index_of("registrar.save")


def test_register_not_behind_nat_is_saved_as_written(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()))
    assert "nathelper.fix_nated_register" not in fake.names()
    assert fake.calls_to("registrar.save")


def test_a_call_from_an_agent_behind_nat_gets_its_contact_fixed(worker: Worker) -> None:
    fake = worker.route(invite_from_agent(credentials=good_credentials(), behind_nat=True))
    assert fake.index_of("nathelper.fix_nated_contact") < fake.index_of("tm.t_relay")


def test_a_reply_from_an_agent_behind_nat_gets_its_contact_fixed(worker: Worker) -> None:
    routed = worker.route(invite_from_asterisk())
    assert routed.calls_to("tm.t_on_reply") == [("ksr_reply_from_agent",)]
    # The agent's 200 OK, from behind NAT, runs that reply route.
    fake = worker.fake(invite_from_asterisk(source_ip=STRANGER_IP, source_port=40000,
                                            behind_nat=True))
    assert worker.handler.ksr_reply_from_agent(None) == 1
    assert "nathelper.fix_nated_contact" in fake.names()


# ---------------------------------------------------------------------------- Asterisk -> agent


def test_invite_from_asterisk_is_delivered_to_the_agents_contact(worker: Worker) -> None:
    fake = worker.route(invite_from_asterisk())
    routing = [n for n in fake.names()
               if n.split(".")[0] in ("rr", "registrar", "tm", "dialog")]
    assert routing == ["tm.t_check_trans", "dialog.dlg_manage", "rr.record_route",
                       "tm.t_on_reply", "registrar.lookup", "tm.t_relay"]
    assert fake.calls_to("registrar.lookup") == [("location",)]
    assert fake.replies == []
    assert "auth.pv_auth_check" not in fake.names()
    assert "dispatcher.ds_select_dst" not in fake.names()
    # Nothing about Asterisk is counted: the one Redis read is whether the agent is disabled.
    assert worker.redis.commands == ["exists"]


@pytest.mark.parametrize(("lookup", "reply"), [
    (-1, (480, "Temporarily Unavailable")),  # agent not registered
    (-3, (480, "Temporarily Unavailable")),  # usrloc internal error
    (-2, (405, "Method Not Allowed")),       # contacts found, method not allowed
])
def test_invite_from_asterisk_to_an_unreachable_agent_is_refused(
    worker: Worker, lookup: int, reply: tuple[int, str]
) -> None:
    fake = worker.route(invite_from_asterisk(), results={"registrar.lookup": lookup})
    assert fake.replies == [reply]
    assert not fake.relayed


def test_relay_failure_gets_the_tm_error_reply(worker: Worker) -> None:
    fake = worker.route(invite_from_asterisk(), results={"tm.t_relay": -1})
    assert fake.calls_to("sl.sl_reply_error") == [()]


def test_asterisk_address_on_another_port_is_treated_as_a_stranger(worker: Worker) -> None:
    fake = worker.route(invite_from_asterisk(source_port=ASTERISK_PORT + 1))
    assert "registrar.lookup" not in fake.names()
    assert_challenged(fake, proxy=True)


def test_asterisks_own_internal_headers_are_kept(worker: Worker) -> None:
    headers = [("X-Omnicc-Tenant", "default")]
    fake = worker.route(invite_from_asterisk(headers=headers))
    assert ("X-Omnicc-Tenant",) not in fake.calls_to("hdr.remove")
    assert ("X-Omnicc-Tenant", "default") in fake.outgoing_headers


# ---------------------------------------------------------------------------- trunk -> Asterisk


def test_invite_from_a_trunk_goes_to_an_asterisk_node_tagged_with_tenant_and_trunk(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_trunk())
    significant = [(name, args) for name, args in fake.calls
                   if name.split(".")[0] in ("dispatcher", "rr", "tm", "dialog")
                   or name == "hdr.append"]
    assert significant == [
        ("tm.t_check_trans", ()),
        ("dispatcher.ds_select_dst", (1, 4)),  # set 1, round robin
        ("hdr.append", ("X-Omnicc-Tenant: default\r\n",)),
        ("hdr.append", ("X-Omnicc-Trunk: demo-carrier\r\n",)),
        ("dialog.dlg_manage", ()),
        ("rr.record_route", ()),
        ("tm.t_set_fr", (120000, 3000)),
        ("tm.t_on_failure", (FAILURE_ROUTE,)),
        ("tm.t_relay", ()),
    ]
    assert fake.replies == []
    assert "auth.pv_auth_check" not in fake.names()  # trunks are admitted by address


@pytest.mark.parametrize("did", ["5550100)U(evil^s^1", "5550100,1", "abc", "", "1" * 33])
def test_a_trunk_call_to_something_not_a_number_is_484_and_goes_nowhere(
    worker: Worker, did: str
) -> None:
    fake = worker.route(invite_from_trunk(did=did))
    assert fake.replies == [(484, "Address Incomplete")]
    assert not fake.relayed
    assert "dispatcher.ds_select_dst" not in fake.names()


def test_the_failure_route_named_for_a_trunk_call_exists(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk())
    ((route_name,),) = fake.calls_to("tm.t_on_failure")
    assert callable(getattr(worker.handler, route_name))


def test_trunk_call_with_no_asterisk_node_available_is_503(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(), results={"dispatcher.ds_select_dst": -1})
    assert fake.replies == [(503, "No Asterisk Node Available")]
    assert not fake.relayed
    assert fake.appended_headers == []


@pytest.mark.parametrize("method", ["INFO", "NOTIFY", "REFER"])
def test_an_allowed_non_invite_outside_a_dialog_from_a_trunk_is_405(
    worker: Worker, method: str
) -> None:
    fake = worker.route(invite_from_trunk(method=method))
    assert fake.replies == [(405, "Method Not Allowed")]
    assert "dispatcher.ds_select_dst" not in fake.names()


def test_every_405_carries_an_allow_header(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(method="INFO"))
    assert fake.replies == [(405, "Method Not Allowed")]
    assert any(h.startswith("Allow:") for h in fake.reply_headers)


def test_trunk_from_any_source_port_is_admitted(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(source_port=39999))
    assert fake.relayed
    assert "X-Omnicc-Trunk: demo-carrier\r\n" in fake.appended_headers


SPOOFED = [("X-Omnicc-Tenant", "victim"), ("x-omnicc-trunk", "victim-carrier"),
           ("X-OMNICC-AGENT", "1002")]


def test_spoofed_internal_headers_from_a_trunk_are_removed_before_anything_else(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_trunk(headers=list(SPOOFED)))
    removals = [fake.index_of("hdr.remove", name)
                for name in ("X-Omnicc-Tenant", "X-Omnicc-Trunk", "X-Omnicc-Agent")]
    first_decision = min(fake.index_of("dispatcher.ds_select_dst"), fake.index_of("hdr.append"))
    assert max(removals) < first_decision
    # Only omnicc's own values reach Asterisk.
    internal = [h for h in fake.outgoing_headers if h[0].lower().startswith("x-omnicc-")]
    assert internal == [("X-Omnicc-Tenant", "default"), ("X-Omnicc-Trunk", "demo-carrier")]


def test_spoofed_internal_headers_from_an_agent_are_removed_before_authentication(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_agent(headers=list(SPOOFED),
                                          credentials=good_credentials()))
    for name in ("X-Omnicc-Tenant", "X-Omnicc-Trunk", "X-Omnicc-Agent"):
        assert fake.index_of("hdr.remove", name) < fake.index_of("auth.pv_auth_check")
    internal = [h for h in fake.outgoing_headers if h[0].lower().startswith("x-omnicc-")]
    assert internal == [("X-Omnicc-Tenant", "default"), ("X-Omnicc-Agent", AGENT)]


def test_a_register_with_spoofed_or_route_headers_is_answered_here_never_relayed(
        worker: Worker) -> None:
    # Nothing of a REGISTER goes anywhere: the internal and Route headers need no removal.
    preloaded = [("Route", "<sip:10.66.66.66;lr>"), *SPOOFED]
    fake = worker.route(register(credentials=good_credentials(), headers=preloaded))
    assert "registrar.save" in fake.names()
    assert "registrar.reg_send_reply" in fake.names()
    assert not fake.relayed
    assert "rr.loose_route" not in fake.names()


@pytest.mark.parametrize("make_request", [invite_from_trunk, invite_from_asterisk,
                                          invite_from_agent],
                         ids=["trunk", "asterisk", "stranger"])
def test_an_initial_requests_route_headers_are_removed(
    worker: Worker, make_request: Any
) -> None:
    preloaded = [("Route", "<sip:10.66.66.66;lr>"), ("Route", "<sip:evil.example;lr>")]
    fake = worker.route(make_request(headers=preloaded))
    remove_route = fake.index_of("hdr.remove", "Route")
    if fake.relayed:
        assert remove_route < fake.index_of("tm.t_relay")
    assert not any(name.lower() == "route" for name, _ in fake.outgoing_headers)
    assert "rr.loose_route" not in fake.names()


def test_a_retransmission_absorbed_by_tm_is_not_routed_again(worker: Worker) -> None:
    # t_check_trans() == 0: tm has resent the last reply; routing it again would select
    # another Asterisk node and append the internal headers a second time.
    fake = worker.route(invite_from_trunk(), results={"tm.t_check_trans": 0})
    assert_nothing_sent(fake)
    assert "dispatcher.ds_select_dst" not in fake.names()
    assert fake.appended_headers == []


# ---------------------------------------------------------------------------- agents' calls


def test_an_agents_call_is_authenticated_with_the_from_domain_realm(worker: Worker) -> None:
    fake = worker.route(invite_from_agent())
    assert_challenged(fake, proxy=True)


def test_an_authenticated_agents_call_goes_to_asterisk_tagged_with_the_agent(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_agent(credentials=good_credentials()))
    significant = [(name, args) for name, args in fake.calls
                   if name.split(".")[0] in ("dispatcher", "rr", "tm", "dialog")
                   or name == "hdr.append"]
    assert significant == [
        ("tm.t_check_trans", ()),
        ("dispatcher.ds_select_dst", (1, 4)),
        ("hdr.append", ("X-Omnicc-Tenant: default\r\n",)),
        ("hdr.append", (f"X-Omnicc-Agent: {AGENT}\r\n",)),
        ("dialog.dlg_manage", ()),  # so the agent's in-dialog requests are recognised
        ("rr.record_route", ()),
        ("tm.t_set_fr", (120000, 3000)),
        ("tm.t_on_failure", (FAILURE_ROUTE,)),
        ("tm.t_relay", ()),
    ]
    assert fake.calls_to("auth.pv_auth_check") == [(DOMAIN, AGENT_PASSWORD, 0, 0)]
    assert not any(name.lower() == "proxy-authorization" for name, _ in fake.outgoing_headers)
    assert fake.replies == []


def test_an_agents_call_with_no_asterisk_node_available_is_503(worker: Worker) -> None:
    fake = worker.route(invite_from_agent(credentials=good_credentials()),
                        results={"dispatcher.ds_select_dst": -1})
    assert fake.replies == [(503, "No Asterisk Node Available")]


def test_an_agent_cannot_call_as_another_agent(worker: Worker) -> None:
    # 1001's own good password, for a From of 1002.
    fake = worker.route(invite_from_agent(from_user=OTHER_AGENT, credentials=good_credentials()))
    assert_challenged(fake, proxy=True)


def test_a_call_from_an_unknown_domain_is_403(worker: Worker) -> None:
    fake = worker.route(invite_from_agent(from_domain="evil.example"))
    assert fake.replies == [(403, "Forbidden")]
    assert fake.challenges == []


def test_an_unauthenticated_invite_routed_to_an_outside_host_is_challenged(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_agent(ruri_is_myself=False,
                                          headers=[("Route", "<sip:evil.example;lr>")]))
    assert_challenged(fake, proxy=True)


# ---------------------------------------------------------------------------- in dialog


def test_in_dialog_request_with_our_route_is_relayed(worker: Worker) -> None:
    fake = worker.route(in_dialog("BYE"), results={"rr.loose_route": 1})
    assert fake.relayed
    assert fake.replies == []
    # The Route header is what routes it: an in-dialog request keeps it.
    assert ("Route",) not in fake.calls_to("hdr.remove")
    assert "auth.pv_auth_check" not in fake.names()
    assert "dialog.is_known_dlg" not in fake.names()  # trusted peers need no dialog check


def test_in_dialog_request_without_our_route_is_404(worker: Worker) -> None:
    fake = worker.route(in_dialog("BYE"))  # loose_route() fails by default
    assert fake.replies == [(404, "Not here")]
    assert not fake.relayed


def test_in_dialog_ack_matching_a_transaction_is_relayed(worker: Worker) -> None:
    fake = worker.route(in_dialog("ACK"), results={"tm.t_check_trans": 1})
    assert fake.relayed
    assert fake.replies == []


def test_in_dialog_ack_matching_nothing_is_dropped_silently(worker: Worker) -> None:
    fake = worker.route(in_dialog("ACK"))
    assert_nothing_sent(fake)


@pytest.mark.parametrize("method", ["BYE", "INVITE", "REFER", "INFO"])
def test_an_in_dialog_request_from_a_stranger_for_no_dialog_of_ours_is_481(
    worker: Worker, method: str
) -> None:
    # A To tag and a Route to an Asterisk node, without credentials: the toll-fraud path.
    fake = worker.route(in_dialog_from_agent(method), results={"rr.loose_route": 1})
    assert fake.replies == [(481, "Call/Transaction Does Not Exist")]
    assert not fake.relayed
    assert "rr.loose_route" not in fake.names()
    assert "dispatcher.ds_select_dst" not in fake.names()


def test_an_ack_from_a_stranger_for_no_dialog_of_ours_is_dropped_silently(
    worker: Worker,
) -> None:
    fake = worker.route(in_dialog_from_agent("ACK"), results={"tm.t_check_trans": 1})
    assert_nothing_sent(fake)


@pytest.mark.parametrize("method", ["BYE", "ACK", "INVITE"])
def test_an_agents_in_dialog_request_of_a_known_dialog_is_relayed(
    worker: Worker, method: str
) -> None:
    fake = worker.route(in_dialog_from_agent(method, known_dialog=True),
                        results={"rr.loose_route": 1})
    assert fake.relayed and fake.replies == []
    assert fake.index_of("dialog.is_known_dlg") < fake.index_of("rr.loose_route")
    assert fake.challenges == []  # in-dialog requests are not challenged


def test_internal_headers_are_stripped_from_in_dialog_requests_of_strangers_and_trunks(
    worker: Worker,
) -> None:
    from_agent = worker.route(in_dialog_from_agent("BYE", known_dialog=True,
                                                   headers=list(SPOOFED)),
                              results={"rr.loose_route": 1})
    from_trunk = worker.route(in_dialog("BYE", headers=list(SPOOFED)),
                              results={"rr.loose_route": 1})
    for fake in (from_agent, from_trunk):
        assert fake.relayed
        assert not any(h[0].lower().startswith("x-omnicc-") for h in fake.outgoing_headers)


def test_internal_headers_of_asterisks_in_dialog_requests_are_kept(worker: Worker) -> None:
    fake = worker.route(in_dialog("BYE", source_ip=ASTERISK_IP, source_port=ASTERISK_PORT,
                                  headers=[("X-Omnicc-Tenant", "default")]),
                        results={"rr.loose_route": 1})
    assert fake.relayed
    assert ("X-Omnicc-Tenant", "default") in fake.outgoing_headers


# ---------------------------------------------------------------------------- CANCEL


def test_cancel_of_a_pending_invite_is_relayed(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(method="CANCEL"), results={"tm.t_check_trans": 1})
    assert fake.relayed
    assert fake.replies == []
    assert "dispatcher.ds_select_dst" not in fake.names()


def test_an_agents_cancel_of_its_pending_call_is_relayed_without_a_challenge(
    worker: Worker,
) -> None:
    # A CANCEL cannot be challenged (RFC 3261 section 22.1); it follows its INVITE.
    fake = worker.route(invite_from_agent(method="CANCEL"), results={"tm.t_check_trans": 1})
    assert fake.relayed
    assert fake.challenges == [] and fake.replies == []


def test_cancel_matching_nothing_is_dropped(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(method="CANCEL"))
    assert_nothing_sent(fake)


# ---------------------------------------------------------------------------- exceptions


def test_an_exception_in_a_ksr_call_is_answered_500_and_the_worker_keeps_serving(
    worker: Worker,
) -> None:
    failing = worker.route(invite_from_asterisk(),
                           raises={"registrar.lookup": RuntimeError("usrloc exploded")})
    assert failing.replies == [(500, "Server Internal Error")]
    assert not failing.relayed
    (logged,) = failing.calls_to("err")
    assert "usrloc exploded" in logged[0]
    assert "\n" not in logged[0].rstrip("\n")  # one log line, the traceback joined with " | "

    # The same worker routes the next request normally.
    after = worker.route(invite_from_asterisk())
    assert after.relayed and after.replies == []


def test_an_exception_in_auth_is_answered_500(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()),
                        raises={"auth.pv_auth_check": ValueError("bad nonce")})
    assert fake.replies == [(500, "Server Internal Error")]
    assert "registrar.save" not in fake.names()


def test_an_ack_that_raises_gets_no_reply(worker: Worker) -> None:
    # A reply to an ACK is not allowed: log only.
    fake = worker.route(in_dialog("ACK"), raises={"rr.loose_route": RuntimeError("boom")})
    assert fake.replies == []
    assert len(fake.calls_to("err")) == 1


# ---------------------------------------------------------------------------- failure route


def test_failure_route_tries_the_next_asterisk_node_after_a_5xx(worker: Worker) -> None:
    fake = worker.failure_route(invite_from_trunk(),
                                results={"tm.t_check_status": 1, "dispatcher.ds_next_dst": 1})
    assert fake.calls_to("tm.t_check_status") == [("5[0-9][0-9]",)]
    assert fake.calls_to("tm.t_on_failure") == [(FAILURE_ROUTE,)]
    assert fake.relayed


@pytest.mark.parametrize("reason", ["Q.850;cause=34", None])
def test_failure_route_tries_the_next_node_when_the_node_could_not_serve(
    worker: Worker, reason: str | None
) -> None:
    """34: omnicc's dialplan could not ask its FastAGI server; no Reason: the 5xx came
    before any dialplan (an overloaded node)."""
    fake = worker.failure_route(
        invite_from_trunk(reply_headers=[("Reason", reason)] if reason else []),
        results={"tm.t_check_status": 1, "dispatcher.ds_next_dst": 1})
    assert fake.relayed


def test_failure_route_relays_a_5xx_the_node_marked_final(worker: Worker) -> None:
    """42: every trunk of an agent's outbound call failed on that node; the next node would
    dial the same carriers again."""
    fake = worker.failure_route(
        invite_from_trunk(reply_headers=[("Reason", "Q.850;cause=42")]),
        results={"tm.t_check_status": 1, "dispatcher.ds_next_dst": 1})
    assert not fake.relayed
    assert "dispatcher.ds_next_dst" not in fake.names()


def test_failure_route_tries_the_next_node_after_a_silent_timeout(worker: Worker) -> None:
    fake = worker.failure_route(
        invite_from_trunk(),
        results={"tm.t_branch_timeout": 1, "tm.t_any_replied": -1, "dispatcher.ds_next_dst": 1},
    )
    assert fake.relayed


def test_failure_route_gives_up_when_no_node_is_left(worker: Worker) -> None:
    fake = worker.failure_route(invite_from_trunk(), results={"tm.t_check_status": 1})
    assert not fake.relayed


def test_failure_route_does_nothing_for_a_cancelled_call(worker: Worker) -> None:
    fake = worker.failure_route(
        invite_from_trunk(),
        results={"tm.t_is_canceled": 1, "tm.t_check_status": 1, "dispatcher.ds_next_dst": 1},
    )
    assert not fake.relayed
    assert "dispatcher.ds_next_dst" not in fake.names()


def test_failure_route_keeps_a_4xx_from_asterisk(worker: Worker) -> None:
    # A 404 for an unknown DID is Asterisk's answer, not a node failure.
    fake = worker.failure_route(invite_from_trunk(), results={"dispatcher.ds_next_dst": 1})
    assert not fake.relayed


def test_failure_route_survives_an_exception(worker: Worker) -> None:
    fake = worker.failure_route(invite_from_trunk(),
                                raises={"tm.t_is_canceled": RuntimeError("boom")})
    assert len(fake.calls_to("err")) == 1


def test_reply_and_onsend_routes_let_everything_through(worker: Worker) -> None:
    worker.fake(invite_from_asterisk())
    assert worker.handler.ksr_reply_route(None) == 1
    assert worker.handler.ksr_onsend_route(None) == 1


def test_a_registration_publishes_the_agents_reachability_for_its_lifetime(
    worker: Worker,
) -> None:
    from omnicc.keys import agent_contact

    key = agent_contact("default", "1001")
    worker.route(register(credentials=good_credentials(),
                          headers=[("Contact", "<sip:1001@198.51.100.7:5062>;expires=120")]))
    assert worker.redis.get(key) is not None
    assert 0 < worker.redis.ttl(key) <= 120
    assert worker.htables.get(WITHDRAWN_TABLE, key) is None
    worker.route(register(credentials=good_credentials(),
                          headers=[("Contact", "<sip:1001@198.51.100.7:5062>;expires=0")]))
    assert worker.redis.get(key) is None
    # The node's other workers must not take it as still published (TrackedAdmission).
    assert worker.htables.get(WITHDRAWN_TABLE, key) is not None


def test_an_unregistration_without_the_lean_client_also_leaves_a_tombstone(
    worker: Worker,
) -> None:
    from omnicc.keys import contact_withdrawn

    worker.handler.admission = None  # a Redis URL the lean client does not speak (rediss://)
    key = agent_contact(TENANT, AGENT)
    worker.route(register(credentials=good_credentials(),
                          headers=[("Contact", "<sip:1001@198.51.100.7:5062>")]))
    assert worker.redis.get(key) is not None
    before = time.time() * 1000
    worker.route(register(credentials=good_credentials(),
                          headers=[("Contact", "<sip:1001@198.51.100.7:5062>;expires=0")]))
    assert worker.redis.get(key) is None
    tombstone = worker.redis.get(contact_withdrawn(key))
    assert tombstone is not None and int(tombstone) >= before - 1
    assert 0 < worker.redis.ttl(contact_withdrawn(key)) <= 5


def test_the_admission_asks_the_node_htable_whether_a_contact_was_withdrawn(
    worker: Worker,
) -> None:
    [(_, options)] = [opened for opened in worker.redis_opened if opened[1].get("lean")]
    recently_withdrawn = options["recently_withdrawn"]
    key = agent_contact(TENANT, AGENT)
    worker.route(register(credentials=good_credentials(),
                          headers=[("Contact", "<sip:1001@198.51.100.7:5062>")]))
    assert not recently_withdrawn(key)
    worker.route(register(credentials=good_credentials(),
                          headers=[("Contact", "<sip:1001@198.51.100.7:5062>;expires=0")]))
    assert recently_withdrawn(key)


def lean_option(worker: Worker, name: str) -> Any:
    [(_, options)] = [opened for opened in worker.redis_opened if opened[1].get("lean")]
    return options[name]


def test_a_refresh_is_handed_to_the_flusher_through_the_node_queue(worker: Worker) -> None:
    from omnicc.lean_redis import decode_refresh

    defer = lean_option(worker, "defer")
    key = agent_contact(TENANT, AGENT)
    fake = worker.fake(SipRequest())
    assert defer(key, "node-1 sip:1001@198.51.100.7:5062", 600) is True
    [(queued_key, item)] = worker.mqueues[worker.script.REFRESH_QUEUE]
    wall_ms, monotonic_ms, ttl_ms, value = decode_refresh(item)
    assert queued_key == key and value == "node-1 sip:1001@198.51.100.7:5062"
    assert ttl_ms == 600_000
    assert abs(wall_ms - time.time() * 1000) < 5000
    assert abs(monotonic_ms - time.monotonic() * 1000) < 5000
    assert fake.names() == ["mqueue.mq_size", "mqueue.mq_add"]


def test_a_full_refresh_queue_leaves_the_refresh_to_the_worker(worker: Worker,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               ) -> None:
    module = worker.script
    monkeypatch.setattr(module, "REFRESH_QUEUE_MAX", 2)
    defer = lean_option(worker, "defer")
    worker.fake(SipRequest())
    assert defer("{t:default}:agent:1:contact", "n sip:1@h", 60) is True
    assert defer("{t:default}:agent:2:contact", "n sip:2@h", 60) is True
    assert defer("{t:default}:agent:3:contact", "n sip:3@h", 60) is False  # sent by the worker
    assert len(worker.mqueues[module.REFRESH_QUEUE]) == 2


def test_the_rendered_cfg_runs_the_scripts_flusher_on_the_scripts_queue(
    worker: Worker, tmp_path: Path,
) -> None:
    from omnicc.render import render_kamailio

    render_kamailio(worker.handler.config, tmp_path)
    cfg = (tmp_path / "kamailio.cfg").read_text(encoding="utf-8")
    queue = worker.script.REFRESH_QUEUE
    assert f'modparam("mqueue", "mqueue", "name={queue}")' in cfg
    [timer] = re.findall(r'modparam\("rtimer", "timer", "name=(\w+);interval=(\d+)u;mode=1;"\)',
                         cfg)
    assert int(timer[1]) <= 100_000  # a refresh waits at most a tenth of a second
    [route] = re.findall(rf'modparam\("rtimer", "exec", "timer={timer[0]};route=(\w+)"\)', cfg)
    assert callable(getattr(worker.handler, route))


class FakeWriter:
    """ReachabilityWriter's interface: records what it was given; refuses `refused` (as
    not written, for 60 s); raises `error` while it is set."""

    def __init__(self, refused: set[str] | None = None, error: Exception | None = None):
        self.written: list[list[tuple[str, str]]] = []
        self.refused = refused or set()
        self.error = error

    def write(self, refreshes: list[tuple[str, str]], monotonic: float,
              ) -> list[tuple[str, int]]:
        if self.error is not None:
            raise self.error
        self.written.append(list(refreshes))
        return [(key, 60) for key, _ in refreshes if key in self.refused]


def flush(worker: Worker, writer: FakeWriter) -> FakeKSR:
    worker.handler._writer = writer
    fake = worker.fake(SipRequest())
    assert worker.handler.ksr_flush_refreshes(None, "rtimer") == 1
    return fake


def queue_items(worker: Worker, *extensions: int) -> list[tuple[str, str]]:
    items = [(f"{{t:default}}:agent:{n}:contact", f"1 2 60000 n sip:{n}@h")
             for n in extensions]
    worker.mqueues.setdefault(worker.script.REFRESH_QUEUE, deque()).extend(items)
    return items


def unwritten_mark(worker: Worker, extension: int) -> Any:
    return worker.htables.get(UNWRITTEN_TABLE, f"{{t:default}}:agent:{extension}:contact")


def test_the_flusher_writes_every_queued_refresh_in_one_batch(worker: Worker) -> None:
    items = queue_items(worker, *range(5))
    writer = FakeWriter()
    fake = flush(worker, writer)
    assert writer.written == [items]
    assert not worker.mqueues[worker.script.REFRESH_QUEUE]
    assert not [name for name in fake.names() if name.startswith("htable.")]
    flush(worker, writer)  # an empty queue: nothing to write
    assert writer.written == [items]


def test_a_refresh_the_flusher_could_not_write_is_published_again_with_a_round_trip(
    worker: Worker,
) -> None:
    queue_items(worker, 1, 2)
    flush(worker, FakeWriter(refused={"{t:default}:agent:2:contact"}))
    # Marked on this node: no worker here takes it as published, the next REGISTER waits.
    assert unwritten_mark(worker, 2) is not None
    assert unwritten_mark(worker, 1) is None
    recently_withdrawn = lean_option(worker, "recently_withdrawn")
    assert recently_withdrawn("{t:default}:agent:2:contact")
    assert not recently_withdrawn("{t:default}:agent:1:contact")


def test_refreshes_redis_did_not_take_are_tried_again_and_the_outage_logged_once(
    worker: Worker,
) -> None:
    from omnicc.lean_redis import LeanRedisError

    first = queue_items(worker, 1, 2)
    writer = FakeWriter(error=LeanRedisError("Redis unavailable: refused"))
    failed = flush(worker, writer)
    second = queue_items(worker, 3)
    failed_again = flush(worker, writer)
    errors = [args for fake in (failed, failed_again) for name, args in fake.calls
              if name == "err"]
    assert len(errors) == 1 and "not written" in str(errors[0])
    assert unwritten_mark(worker, 1) is None  # not given up on
    writer.error = None
    recovered = flush(worker, writer)
    assert writer.written == [first + second]
    assert any("written again" in str(args) for name, args in recovered.calls if name == "info")


def test_a_flusher_that_fails_marks_what_it_took_and_carries_on(worker: Worker) -> None:
    queue_items(worker, 1)
    fake = flush(worker, FakeWriter(error=RuntimeError("a bug")))
    assert unwritten_mark(worker, 1) is not None
    assert any("exception in the refresh flusher" in str(args)
               for name, args in fake.calls if name == "err")


def test_a_register_without_credentials_is_challenged_reading_only_what_that_needs(
    worker: Worker,
) -> None:
    fake = worker.route(register(headers=[("Contact", "<sip:1001@198.51.100.7:5062>")]))
    assert "auth.auth_challenge" in fake.names()
    read = [args[0] for name, args in fake.calls if name == "pv.get"]
    assert read.count("$hdr(Authorization)") == 1
    assert "$ct" not in read and "$hdr(Expires)" not in read


def test_a_disabled_agent_gets_no_calls(worker: Worker) -> None:
    from omnicc.keys import agent_disabled

    worker.redis.set(agent_disabled("default", "1001"), "1")
    fake = worker.route(invite_from_asterisk())
    assert fake.replies == [(480, "Temporarily Unavailable")]
    assert not fake.relayed


def test_a_registration_is_published_to_the_acd_before_it_is_answered(worker: Worker) -> None:
    # Whoever gets the 200 OK must already see the agent reachable (or gone).
    fake = worker.route(register(credentials=good_credentials(),
                                 headers=[("Contact", "<sip:1001@198.51.100.7:5062>")]))
    names = fake.names()
    assert names.index("registrar.save") < names.index("registrar.reg_send_reply")
    # The reachability key, written with the admission, before the save and the reply.
    assert worker.redis.commands == ["evalsha"]
    assert worker.redis.get(agent_contact(TENANT, AGENT)) is not None


def test_a_register_without_contact_only_asks_and_publishes_nothing(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()))
    assert fake.calls_to("registrar.save") == [("location", REG_SAVE_NO_REPLY)]
    assert worker.redis.get(agent_contact(TENANT, AGENT)) is None


def test_a_registration_that_cannot_be_saved_is_not_left_published(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials(),
                                 headers=[("Contact", "<sip:1001@198.51.100.7:5062>")]),
                        results={"registrar.save": -1})
    assert "sl.sl_reply_error" in fake.names()
    assert worker.redis.get(agent_contact(TENANT, AGENT)) is None
    assert worker.htables.get(WITHDRAWN_TABLE, agent_contact(TENANT, AGENT)) is not None


def test_kdmq_from_a_peer_kamailio_node_goes_to_dmq(worker_with: Callable[[str], Worker]) -> None:
    worker = worker_with("kamailio_nodes:\n  - {host: 192.0.2.11, port: 5060}\n")
    fake = worker.route(keepalive(method="KDMQ", source_ip="192.0.2.11", source_port=5060))
    assert fake.names().count("dmq.handle_message") == 1
    assert fake.replies == [] and not fake.relayed
    # Not from a peer (another port, or a stranger): no such method here.
    for ip, port in (("192.0.2.11", 5070), (STRANGER_IP, 5060)):
        fake = worker.route(keepalive(method="KDMQ", source_ip=ip, source_port=port))
        assert "dmq.handle_message" not in fake.names()
        assert fake.replies == [(405, "Method Not Allowed")]


PEER = "kamailio_nodes:\n  - {host: 192.0.2.11, port: 5060}\n"


def from_peer(request: SipRequest) -> SipRequest:
    return replace(request, source_ip="192.0.2.11", source_port=5060)


def test_a_call_routed_here_by_a_peers_lookup_goes_on_to_the_agent(
    worker_with: Callable[[str], Worker],
) -> None:
    # Node A found the agent registered through this node (its Path): the path module's
    # loose_route sets the next hop to the address the agent registered from.
    worker = worker_with(PEER)
    fake = worker.route(from_peer(invite_from_asterisk()), results={"rr.loose_route": -3})
    assert fake.relayed
    names = fake.names()
    assert names.index("dialog.dlg_manage") < names.index("tm.t_relay")
    assert names.index("rr.record_route") < names.index("tm.t_relay")
    assert fake.calls_to("tm.t_on_reply") == [("ksr_reply_from_agent",)]
    # A peer node is neither screened nor asked for credentials.
    assert not any(n.startswith(("htable.", "auth.")) for n in names)
    assert worker.redis.commands == []


def test_a_peers_request_that_is_not_a_path_routed_call_is_refused(
    worker_with: Callable[[str], Worker],
) -> None:
    worker = worker_with(PEER)
    fake = worker.route(from_peer(invite_from_asterisk()))  # no Route to this node
    assert fake.replies == [(403, "Not A Path-Routed Call")] and not fake.relayed
    fake = worker.route(from_peer(invite_from_asterisk()), results={"rr.loose_route": -2})
    assert fake.replies == [(403, "Not A Path-Routed Call")] and not fake.relayed
    fake = worker.route(from_peer(register()), results={"rr.loose_route": 1})
    assert fake.replies == [(403, "Not A Path-Routed Call")]
    assert "registrar.save" not in fake.names()


def test_a_peers_in_dialog_request_follows_its_route(
    worker_with: Callable[[str], Worker],
) -> None:
    # The agent's BYE, passed on by the node it registered through.
    worker = worker_with(PEER)
    fake = worker.route(from_peer(invite_from_asterisk(method="BYE", to_tag="t1")),
                        results={"rr.loose_route": 1})
    assert fake.relayed and "dialog.is_known_dlg" not in fake.names()


def test_in_a_cluster_a_registration_carries_this_nodes_path(
    worker: Worker, worker_with: Callable[[str], Worker],
) -> None:
    contact = [("Contact", "<sip:1001@198.51.100.7:5062>")]
    alone = worker.route(register(credentials=good_credentials(), headers=contact))
    assert "hdr.insert" not in alone.names()
    clustered = worker_with(PEER)
    fake = clustered.route(register(credentials=good_credentials(), headers=contact))
    assert fake.inserted_headers == ["Path: <sip:127.0.0.1:5060;lr>\r\n"]
    # Behind NAT: with the address the REGISTER came from, which the NAT lets in.
    natted = clustered.route(register(credentials=good_credentials(), headers=contact,
                                      behind_nat=True))
    assert natted.inserted_headers == [
        f"Path: <sip:127.0.0.1:5060;lr;received=sip:{STRANGER_IP}:40000>\r\n"]
    assert (fake.index_of("hdr.insert") < fake.index_of("textopsx.msg_apply_changes")
            < fake.index_of("registrar.save"))


