"""omnicc/agent_auth.py: what an agent's credentials prove, with revocation state in a fake
Redis. Bearer tokens: every refusal is an AuthFailure naming its reason. Digest: the
password handed to Kamailio's pv_auth_check is the real one only when the credentials
could prove the agent; otherwise a decoy nobody holds, so a refusal looks like a wrong
password whether the extension exists or not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from omnicc.agent_auth import AgentAuthenticator, AgentIdentity, AuthFailure
from omnicc.auth_secrets import ensure_local_secrets, read_digest_secret, read_signing_key
from omnicc.config import OmniccConfig, Tenant, parse_config
from omnicc.ephemeral import password_for, tenant_secret
from omnicc.keys import agent_contact, agent_disabled, revoked_jti
from omnicc.tokens import (
    Jwks,
    generate_signing_key,
    jwks_document,
    mint_agent_token,
    public_jwk,
)
from tests.unit.fake_redis import FakeRedis

NOW = 1_800_000_000.0
KID = "omnicc-1"
ISSUER = "omnicc"
SIGNING_KEY = generate_signing_key("EdDSA")
DIGEST_SECRET = b"a-shared-digest-secret-of-32-bytes"

# Two tenants with the same extension: nothing of one may open the other.
CONFIG_TEXT = """
node: test-1
tenants:
  - name: default
    domain: default.omnicc.test
    agents:
      - {extension: "1001", password: "pass-default-1001"}
      - {extension: "1002", password: "pass-default-1002"}
  - name: acme
    domain: acme.omnicc.test
    agents:
      - {extension: "1001", password: "pass-acme-1001"}
"""


def config_with(auth_yaml: str = "") -> OmniccConfig:
    return parse_config(CONFIG_TEXT + auth_yaml)


CONFIG = config_with()


def tenant(name: str = "default") -> Tenant:
    found = CONFIG.tenant(name)
    assert found is not None
    return found


def authenticator(redis: FakeRedis, config: OmniccConfig = CONFIG) -> AgentAuthenticator:
    jwks = Jwks.from_document(jwks_document([public_jwk(SIGNING_KEY, KID, "EdDSA")]))
    return AgentAuthenticator(config, jwks, DIGEST_SECRET, redis)


@pytest.fixture
def redis_server() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def auth(redis_server: FakeRedis) -> AgentAuthenticator:
    return authenticator(redis_server)


def token(subject: str = "1001", *, audience: str = "default.omnicc.test",
          issuer: str = ISSUER, now: float = NOW, ttl: int = 3600,
          private_pem: bytes = SIGNING_KEY, jti: str | None = "jti-1") -> str:
    return mint_agent_token(private_pem, kid=KID, algorithm="EdDSA", issuer=issuer,
                            audience=audience, subject=subject, ttl_seconds=ttl, now=now,
                            jti=jti)


def refusal(auth: AgentAuthenticator, bearer: str, aor: str = "1001",
            tenant_name: str = "default") -> str:
    with pytest.raises(AuthFailure) as caught:
        auth.check_bearer(bearer, tenant(tenant_name), aor, NOW)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def admitted(auth: AgentAuthenticator, bearer: str, aor: str = "1001",
             tenant_name: str = "default", now: float = NOW) -> AgentIdentity:
    """What the KEMI script does: verify in memory, then admit (one Redis round trip)."""
    identity = auth.check_bearer(bearer, tenant(tenant_name), aor, now)
    auth.admit(identity)
    return identity


def admission_refusal(auth: AgentAuthenticator, identity: AgentIdentity) -> str:
    with pytest.raises(AuthFailure) as caught:
        auth.admit(identity)
    return caught.value.reason


REVOKED = "disabled agent or revoked token"


def ephemeral_username(extension: str = "1001", expires_in: int = 3600) -> str:
    return f"{int(NOW) + expires_in}:{extension}"


def ephemeral_password(username: str, tenant_name: str = "default") -> str:
    return password_for(tenant_secret(DIGEST_SECRET, tenant_name), username)


# ---------------------------------------------------------------------------- bearer


def test_a_valid_token_proves_its_agent(auth: AgentAuthenticator) -> None:
    identity = auth.check_bearer(token(), tenant(), "1001", NOW)
    assert identity == AgentIdentity(tenant(), "1001", "jti-1")


@pytest.mark.parametrize(("bearer", "reason"), [
    (token(now=NOW - 7200), "bearer: expired"),
    (token(now=NOW + 3600), "bearer: not_yet_valid"),
    (token(audience="acme.omnicc.test"), "bearer: bad_audience"),
    (token(issuer="someone-else"), "bearer: bad_issuer"),
    (token(private_pem=generate_signing_key("EdDSA")), "bearer: bad_signature"),
    ("not-a-jwt", "bearer: malformed"),
    ("A" * 65536, "bearer: malformed"),
    (token("1002"), "bearer: token subject is not the AOR"),
], ids=["expired", "not-yet-valid", "wrong-aud", "wrong-iss", "bad-signature", "garbage",
        "64-kb", "token-of-another-agent"])
def test_each_bad_token_is_an_auth_failure_with_its_reason(
    auth: AgentAuthenticator, bearer: str, reason: str
) -> None:
    assert refusal(auth, bearer) == reason


def test_a_token_of_an_unknown_agent_is_refused_without_a_redis_round_trip(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    assert refusal(auth, token("1009"), aor="1009") == "bearer: no such agent"
    assert redis_server.commands == []


def test_a_token_for_one_tenant_does_not_open_another(auth: AgentAuthenticator) -> None:
    # Extension 1001 exists in both tenants; the audience is the tenant's domain.
    assert refusal(auth, token("1001"), tenant_name="acme") == "bearer: bad_audience"
    identity = auth.check_bearer(token(audience="acme.omnicc.test"), tenant("acme"), "1001",
                                 NOW)
    assert identity.tenant.name == "acme"


def test_a_revoked_jti_is_refused(auth: AgentAuthenticator, redis_server: FakeRedis) -> None:
    redis_server.set(revoked_jti("default", "jti-1"), "1", ex=3600)
    identity = auth.check_bearer(token(jti="jti-1"), tenant(), "1001", NOW)
    assert admission_refusal(auth, identity) == REVOKED
    assert admitted(auth, token(jti="jti-2")).extension == "1001"


def test_revocation_is_per_tenant(auth: AgentAuthenticator, redis_server: FakeRedis) -> None:
    redis_server.set(revoked_jti("acme", "jti-1"), "1", ex=3600)
    assert admitted(auth, token(jti="jti-1")).extension == "1001"


def test_a_disabled_agent_is_refused_whatever_its_credentials(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    redis_server.set(agent_disabled("default", "1001"), "1")
    for jti in ("jti-1", "jti-2", None):
        identity = auth.check_bearer(token(jti=jti), tenant(), "1001", NOW)
        assert admission_refusal(auth, identity) == REVOKED
    # Digest credentials come to the same admission, without a token id.
    assert admission_refusal(auth, auth.identity(tenant(), "1001")) == REVOKED
    # The same extension of another tenant is another agent.
    acme_token = token(audience="acme.omnicc.test")
    assert admitted(auth, acme_token, tenant_name="acme").extension == "1001"


def test_revocation_after_a_token_was_cached_is_honoured(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    bearer = token(jti="jti-1")
    admitted(auth, bearer)
    admitted(auth, bearer, now=NOW + 1)  # from the cache now
    redis_server.set(revoked_jti("default", "jti-1"), "1", ex=3600)
    assert admission_refusal(auth, auth.check_bearer(bearer, tenant(), "1001", NOW)) == REVOKED
    redis_server.delete(revoked_jti("default", "jti-1"))
    redis_server.set(agent_disabled("default", "1001"), "1")
    assert admission_refusal(auth, auth.check_bearer(bearer, tenant(), "1001", NOW)) == REVOKED


def test_verification_is_in_memory_and_admission_one_redis_round_trip(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    identity = auth.check_bearer(token(), tenant(), "1001", NOW)
    assert redis_server.commands == []
    auth.admit(identity, publish_contact="node-1 sip:1001@192.0.2.5:5060", ttl=300)
    assert redis_server.commands == ["evalsha"]
    contact = agent_contact("default", "1001")
    assert redis_server.get(contact) == b"node-1 sip:1001@192.0.2.5:5060"
    assert redis_server.ttl(contact) == 300


def test_a_refused_agent_is_not_published_reachable(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    redis_server.set(agent_disabled("default", "1001"), "1")
    with pytest.raises(AuthFailure):
        auth.admit(auth.identity(tenant(), "1001"), publish_contact="n sip:x@y", ttl=60)
    assert redis_server.get(agent_contact("default", "1001")) is None


def test_admission_without_a_contact_publishes_nothing(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    auth.admit(auth.identity(tenant(), "1001"))
    assert redis_server.keys() == []


def test_redis_failing_refuses_the_agent(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    # A revoked token must never pass because Redis could not say it is revoked; nor a
    # token this worker had already verified and cached; nor digest credentials.
    bearer = token(jti="cached")
    admitted(auth, bearer)
    redis_server.fail("evalsha")
    for identity in (auth.check_bearer(token(), tenant(), "1001", NOW),
                     auth.check_bearer(bearer, tenant(), "1001", NOW),
                     auth.identity(tenant(), "1001")):
        with pytest.raises(AuthFailure) as caught:
            auth.admit(identity)
        assert caught.value.reason.startswith("revocation state unavailable")
        assert "Redis went away" in caught.value.reason
        assert caught.value.counts is False  # our fault: not counted towards a ban


def test_garbage_never_costs_a_redis_round_trip(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    for bearer in ("not-a-jwt", token(private_pem=generate_signing_key("EdDSA")),
                   token(now=NOW - 7200)):
        refusal(auth, bearer)
    assert redis_server.commands == []


# ---------------------------------------------------------------------------- digest


def test_a_static_password_is_handed_over_when_allowed(auth: AgentAuthenticator) -> None:
    assert auth.digest_password(tenant(), "1001", "1001", NOW) == "pass-default-1001"
    assert auth.digest_password(tenant("acme"), "1001", "1001", NOW) == "pass-acme-1001"


REAL_PASSWORDS = {"pass-default-1001", "pass-default-1002", "pass-acme-1001"}


@pytest.mark.parametrize(("aor", "auth_user"), [
    ("1001", "1002"),   # 1002's digest user for 1001's AOR
    ("1009", "1009"),   # no such agent
    ("1001", ""),       # no username
], ids=["other-user", "unknown-user", "empty-user"])
def test_static_credentials_that_prove_nothing_get_a_decoy(
    auth: AgentAuthenticator, aor: str, auth_user: str
) -> None:
    password = auth.digest_password(tenant(), aor, auth_user, NOW)
    assert password not in REAL_PASSWORDS
    assert len(password) >= 32


def test_static_passwords_turned_off_get_a_decoy(redis_server: FakeRedis) -> None:
    config = config_with("auth:\n  digest:\n    allow_static_passwords: false\n")
    auth = authenticator(redis_server, config)
    assert auth.digest_password(tenant(), "1001", "1001", NOW) not in REAL_PASSWORDS
    # Ephemeral credentials still work.
    username = ephemeral_username()
    assert auth.digest_password(tenant(), "1001", username, NOW) == ephemeral_password(username)


def test_a_digest_password_costs_no_redis_round_trip(
    auth: AgentAuthenticator, redis_server: FakeRedis
) -> None:
    # Whether the agent is disabled is asked by admit(), after pv_auth_check.
    auth.digest_password(tenant(), "1001", "1001", NOW)
    auth.digest_password(tenant(), "1001", ephemeral_username("1001"), NOW)
    assert redis_server.commands == []


def test_ephemeral_credentials_get_the_hmac_of_their_username(auth: AgentAuthenticator) -> None:
    username = ephemeral_username("1001")
    assert auth.digest_password(tenant(), "1001", username, NOW) == ephemeral_password(username)


def test_ephemeral_credentials_are_per_tenant(auth: AgentAuthenticator) -> None:
    username = ephemeral_username("1001")
    acme = auth.digest_password(tenant("acme"), "1001", username, NOW)
    assert acme == ephemeral_password(username, "acme")
    assert acme != ephemeral_password(username, "default")


@pytest.mark.parametrize(("aor", "username"), [
    ("1001", ephemeral_username("1001", expires_in=-1)),          # expired
    ("1001", ephemeral_username("1001", expires_in=0)),           # expires this second
    ("1001", ephemeral_username("1002")),                         # another extension's
    ("1009", ephemeral_username("1009")),                         # no such agent
    ("1001", ephemeral_username("1001", expires_in=400 * 86400)),  # too far ahead
    ("1001", "abc:1001"),                                         # malformed
    ("1001", "1:2:1001"),
    ("1001", f"{int(NOW) + 60}:" + "1" * 100),
], ids=["expired", "expiring-now", "other-extension", "unknown-extension", "too-long-lived",
        "malformed", "three-parts", "oversized"])
def test_ephemeral_credentials_that_prove_nothing_get_a_decoy(
    auth: AgentAuthenticator, aor: str, username: str
) -> None:
    password = auth.digest_password(tenant(), aor, username, NOW)
    assert password not in REAL_PASSWORDS
    assert password != ephemeral_password(username)


def test_decoys_differ_every_time(auth: AgentAuthenticator) -> None:
    decoys = {auth.digest_password(tenant(), "1009", "1009", NOW) for _ in range(20)}
    assert len(decoys) == 20


def test_identity_names_tenant_and_extension(auth: AgentAuthenticator) -> None:
    assert auth.identity(tenant(), "1002") == AgentIdentity(tenant(), "1002")


# ---------------------------------------------------------------------------- from_config


def test_from_config_reads_the_local_secrets(tmp_path: Path, redis_server: FakeRedis) -> None:
    config_path = tmp_path / "omnicc.yaml"
    config_path.write_text(CONFIG_TEXT)
    var = tmp_path / "var"
    ensured = ensure_local_secrets(CONFIG, config_path, var)
    auth = AgentAuthenticator.from_config(CONFIG, config_path, var, redis_server)

    jwt = CONFIG.auth.jwt
    signed = mint_agent_token(read_signing_key(ensured.files), kid=jwt.signing_kid,
                              algorithm=jwt.algorithm, issuer=jwt.issuer,
                              audience="default.omnicc.test", subject="1001",
                              ttl_seconds=600, now=time.time())
    assert auth.check_bearer(signed, tenant(), "1001", time.time()).extension == "1001"

    username = f"{int(time.time()) + 600}:1001"
    secret = tenant_secret(read_digest_secret(ensured.files), "default")
    assert auth.digest_password(tenant(), "1001", username, time.time()) == \
        password_for(secret, username)


def test_a_rotated_jwks_file_is_picked_up_without_a_restart(tmp_path) -> None:
    """A token signed by a key added to the JWKS file later verifies once the file changed."""
    import json
    import os

    from omnicc.agent_auth import AgentAuthenticator
    from omnicc.config import parse_config
    from omnicc.tokens import (
        generate_signing_key,
        jwks_document,
        load_jwks,
        mint_agent_token,
        public_jwk,
    )

    config = parse_config(
        "tenants:\n  - name: default\n    domain: d.test\n"
        "    agents: [{extension: '1001', password: 'pw-12345678'}]\n"
    )
    old_key, new_key = generate_signing_key(), generate_signing_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document([public_jwk(old_key, "old", "EdDSA")])))

    auth = AgentAuthenticator(config, load_jwks(path), b"s" * 32, FakeRedis(),
                              jwks_path=path)
    tenant = config.tenants[0]
    now = 1_800_000_000.0
    token = mint_agent_token(new_key, kid="new", algorithm="EdDSA", issuer="omnicc",
                             audience="d.test", subject="1001", ttl_seconds=600, now=now)
    from omnicc.agent_auth import AuthFailure

    try:
        auth.check_bearer(token, tenant, "1001", now)
        raise AssertionError("a token of an unknown kid was accepted")
    except AuthFailure as failure:
        assert "unknown_kid" in failure.reason
    path.write_text(json.dumps(jwks_document([public_jwk(old_key, "old", "EdDSA"),
                                              public_jwk(new_key, "new", "EdDSA")])))
    os.utime(path, (now, now + 5))  # a visibly newer file
    assert auth.check_bearer(token, tenant, "1001", now + 2).extension == "1001"
