"""omnicc/tokens.py, omnicc/auth_secrets.py and `omnicc token agent`: every way a bearer
token is refused has its own reason, keys rotate by kid, the cache never outlives exp or
revocation, and the local secrets are made once, private, and never over a user's file."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import OKPAlgorithm

from omnicc.auth_secrets import (
    AuthSecretFiles,
    SecretsError,
    ensure_local_secrets,
    resolve_secret_files,
)
from omnicc.config import OmniccConfig, parse_config
from omnicc.token_cli import add_token_commands, parse_duration
from omnicc.tokens import (
    MAX_TOKEN_BYTES,
    AgentClaims,
    Jwks,
    JwksError,
    SigningKeyError,
    TokenCache,
    TokenError,
    generate_signing_key,
    jwks_document,
    load_jwks,
    mint_agent_token,
    public_jwk,
    verify_agent_token,
)

NOW = 1_800_000_000.0
ISSUER = "omnicc"
AUDIENCE = "default.omnicc.test"
KID = "omnicc-1"

EDDSA_KEY = generate_signing_key("EdDSA")
OTHER_EDDSA_KEY = generate_signing_key("EdDSA")
ES256_KEY = generate_signing_key("ES256")
RS256_KEY = generate_signing_key("RS256")


def jwks_of(*keys: tuple[bytes, str, str]) -> Jwks:
    """A JWKS of (private PEM, kid, algorithm) triples, through the JSON document form."""
    document = jwks_document(public_jwk(pem, kid, alg) for pem, kid, alg in keys)  # type: ignore[arg-type]
    return Jwks.from_document(json.loads(json.dumps(document)))


JWKS = jwks_of((EDDSA_KEY, KID, "EdDSA"))


def mint(**overrides: Any) -> str:
    arguments: dict[str, Any] = dict(
        kid=KID, algorithm="EdDSA", issuer=ISSUER, audience=AUDIENCE, subject="1001",
        ttl_seconds=3600, now=NOW,
    )
    private_pem = overrides.pop("private_pem", EDDSA_KEY)
    arguments.update(overrides)
    return mint_agent_token(private_pem, **arguments)


def verify(token: str, jwks: Jwks = JWKS, **overrides: Any) -> AgentClaims:
    arguments: dict[str, Any] = dict(issuer=ISSUER, audience=AUDIENCE, now=NOW)
    arguments.update(overrides)
    return verify_agent_token(token, jwks, **arguments)


def refusal(token: str, jwks: Jwks = JWKS, **overrides: Any) -> str:
    with pytest.raises(TokenError) as caught:
        verify(token, jwks, **overrides)
    return caught.value.reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value).encode())


def claims_of(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "1001", "iat": int(NOW), "nbf": int(NOW),
        "exp": int(NOW) + 3600, "jti": "jti-1", "role": "agent",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def signed_with_our_key(claims: dict[str, Any] | str) -> str:
    """Claims PyJWT would not write (missing, odd types, raw JSON text), signed with the
    real key: so the claims are the only thing wrong with the token."""
    payload = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{segment({'alg': 'EdDSA', 'kid': KID})}.{b64url(payload.encode())}"
    private_key = serialization.load_pem_private_key(EDDSA_KEY, password=None)
    signature = OKPAlgorithm().sign(signing_input.encode(), private_key)  # type: ignore[arg-type]
    return f"{signing_input}.{b64url(signature)}"


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("private_pem", "algorithm"),
                         [(EDDSA_KEY, "EdDSA"), (ES256_KEY, "ES256"), (RS256_KEY, "RS256")])
def test_each_algorithm_round_trips(private_pem: bytes, algorithm: str) -> None:
    jwks = jwks_of((private_pem, "k", algorithm))
    token = mint(private_pem=private_pem, kid="k", algorithm=algorithm, jti="fixed",
                 role="supervisor")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == algorithm and header["kid"] == "k"
    assert verify(token, jwks) == AgentClaims(
        subject="1001", role="supervisor", jti="fixed", expires_at=NOW + 3600,
        audience=AUDIENCE, issuer=ISSUER, kid="k",
    )


def test_claims_are_the_ones_minted() -> None:
    token = mint(subject="1002")
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert set(payload) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "role"}
    assert payload["iat"] == payload["nbf"] == int(NOW)
    assert payload["exp"] == int(NOW) + 3600
    assert payload["role"] == "agent"


def test_subject_is_what_was_minted_so_the_caller_can_match_the_aor() -> None:
    # A token of agent A presented for agent B is refused by the caller comparing the
    # subject with the AOR: verify must return exactly the minted subject.
    assert verify(mint(subject="1001")).subject == "1001"
    assert verify(mint(subject="1002")).subject == "1002"


def test_jti_is_random_when_not_given() -> None:
    assert verify(mint()).jti != verify(mint()).jti
    assert len(verify(mint()).jti) >= 16


def test_public_jwk_names_kid_alg_and_use() -> None:
    jwk = public_jwk(EDDSA_KEY, "kid-x", "EdDSA")
    assert jwk["kid"] == "kid-x" and jwk["alg"] == "EdDSA" and jwk["use"] == "sig"
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and "d" not in jwk
    rsa_jwk = public_jwk(RS256_KEY, "r", "RS256")
    assert "key_ops" not in rsa_jwk and set(rsa_jwk) >= {"n", "e"}


def test_a_key_of_the_wrong_type_cannot_be_used_for_an_algorithm() -> None:
    with pytest.raises(SigningKeyError):
        public_jwk(EDDSA_KEY, KID, "ES256")
    with pytest.raises(SigningKeyError):
        mint(private_pem=ES256_KEY, algorithm="RS256")
    with pytest.raises(SigningKeyError):
        public_jwk(b"not a key", KID, "EdDSA")


# ---------------------------------------------------------------------------- refusals


def test_expired() -> None:
    token = mint(ttl_seconds=60)
    assert verify(token, now=NOW + 60 + 29).subject == "1001"  # within the leeway
    assert refusal(token, now=NOW + 60 + 30) == "expired"
    assert refusal(token, now=NOW + 61, leeway=0) == "expired"


def test_not_yet_valid() -> None:
    token = mint(now=NOW + 600)
    assert refusal(token) == "not_yet_valid"
    assert verify(mint(now=NOW + 20)).subject == "1001"  # a clock a little ahead is fine


def test_issued_in_the_future_without_nbf_is_not_yet_valid() -> None:
    token = signed_with_our_key(claims_of(nbf=None, iat=int(NOW) + 3600, exp=int(NOW) + 7200))
    assert refusal(token) == "not_yet_valid"


def test_wrong_audience() -> None:
    assert refusal(mint(audience="other.omnicc.test")) == "bad_audience"


def test_audience_may_be_a_list() -> None:
    token = signed_with_our_key(claims_of(aud=["x.test", AUDIENCE]))
    assert verify(token).audience == AUDIENCE
    assert refusal(signed_with_our_key(claims_of(aud=["x.test"]))) == "bad_audience"


def test_wrong_issuer() -> None:
    assert refusal(mint(issuer="someone-else")) == "bad_issuer"


def test_alg_none_is_refused() -> None:
    for signature in ("", "c2ln"):
        token = f"{segment({'alg': 'none', 'kid': KID})}.{segment(claims_of())}.{signature}"
        assert refusal(token) == "alg_not_allowed"
    no_kid = f"{segment({'alg': 'none'})}.{segment(claims_of())}."
    assert refusal(no_kid) == "alg_not_allowed"


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # Algorithm confusion: a verifier that takes alg from the header would check this
    # HMAC with the public key as secret, which anyone can compute.
    public_pem = serialization.load_pem_private_key(EDDSA_KEY, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{segment({'alg': 'HS256', 'kid': KID, 'typ': 'JWT'})}.{segment(claims_of())}"
    for secret in (public_pem, public_pem.strip(), json.dumps(public_jwk(EDDSA_KEY, KID, "EdDSA"))
                   .encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert refusal(f"{signing_input}.{b64url(mac)}") == "alg_not_allowed"


def test_a_header_alg_other_than_the_keys_alg_is_refused() -> None:
    # A real ES256 signature, but the kid names an EdDSA key.
    assert refusal(mint(private_pem=ES256_KEY, algorithm="ES256")) == "alg_not_allowed"
    # And an algorithm we accept nowhere.
    token = f"{segment({'alg': 'RS512', 'kid': KID})}.{segment(claims_of())}.c2ln"
    assert refusal(token) == "alg_not_allowed"


def test_signature_by_another_key_under_the_same_kid_is_refused() -> None:
    assert refusal(mint(private_pem=OTHER_EDDSA_KEY)) == "bad_signature"


def test_tampered_payload_is_a_bad_signature() -> None:
    header, _, signature = mint(subject="1001").split(".")
    forged = f"{header}.{segment(claims_of(sub='1002'))}.{signature}"
    assert refusal(forged) == "bad_signature"


def test_empty_or_truncated_signature_is_refused() -> None:
    header, payload, signature = mint().split(".")
    assert refusal(f"{header}.{payload}.") == "bad_signature"
    assert refusal(f"{header}.{payload}.{signature[:-4]}") == "bad_signature"


def test_unknown_kid() -> None:
    assert refusal(mint(kid="nobody")) == "unknown_kid"
    no_kid = f"{segment({'alg': 'EdDSA'})}.{segment(claims_of())}.c2ln"
    assert refusal(no_kid) == "unknown_kid"


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "exp", "jti", "role"])
def test_missing_claim(claim: str) -> None:
    assert refusal(signed_with_our_key(claims_of(**{claim: None}))) == "missing_claim"


def test_nbf_and_iat_are_optional() -> None:
    assert verify(signed_with_our_key(claims_of(nbf=None, iat=None))).subject == "1001"


@pytest.mark.parametrize("role", ["admin", "Agent", ""])
def test_bad_role(role: str) -> None:
    expected = "malformed" if role == "" else "bad_role"
    assert refusal(signed_with_our_key(claims_of(role=role))) == expected


def test_bad_role_is_refused_when_minting_too() -> None:
    with pytest.raises(ValueError):
        mint(role="admin")


@pytest.mark.parametrize("claims", [
    claims_of(exp="tomorrow"), claims_of(exp=True), claims_of(nbf=[1]), claims_of(sub=1001),
    claims_of(jti="x" * 200), claims_of(aud=[1, 2]), claims_of(iss=None) | {"iss": {}},
])
def test_claims_of_the_wrong_type_are_malformed(claims: dict[str, Any]) -> None:
    assert refusal(signed_with_our_key(claims)) == "malformed"


def test_nan_expiry_is_malformed() -> None:
    # Python's json reads NaN; a NaN exp would compare false and never expire.
    text = json.dumps(claims_of()).replace(str(int(NOW) + 3600), "NaN")
    assert refusal(signed_with_our_key(text)) == "malformed"
    text = json.dumps(claims_of()).replace(str(int(NOW) + 3600), "1e999")  # infinity
    assert refusal(signed_with_our_key(text)) == "malformed"


def test_a_payload_that_is_not_an_object_is_malformed() -> None:
    assert refusal(signed_with_our_key("[1, 2]")) == "malformed"
    assert refusal(signed_with_our_key("{")) == "malformed"


def test_revoked_jti() -> None:
    revoked = {"gone"}
    assert refusal(mint(jti="gone"), is_revoked=revoked.__contains__) == "revoked"
    assert verify(mint(jti="kept"), is_revoked=revoked.__contains__).jti == "kept"


def test_revocation_is_not_consulted_for_invalid_tokens() -> None:
    asked: list[str] = []

    def is_revoked(jti: str) -> bool:
        asked.append(jti)
        return False

    refusal(mint(private_pem=OTHER_EDDSA_KEY), is_revoked=is_revoked)
    refusal(mint(audience="x.test"), is_revoked=is_revoked)
    assert asked == []


@pytest.mark.parametrize("token", [
    "", "Bearer", "a.b", "a.b.c.d", "a.b.c.d.e", "!!!.???.***", "abc..def",
    "eyJhbGciOiJFZERTQSJ9.e30", "e30=.e30.e30", "W10.e30.c2ln", "bnVsbA.e30.c2ln",
    f"{b64url(b'not json')}.e30.c2ln", "a" * 100,
    f"{segment({'alg': 'EdDSA', 'kid': 7})}.e30.c2ln",
    f"{segment({'alg': 'EdDSA', 'kid': KID, 'crit': ['exp']})}.e30.c2ln",
    "\u00e9t\u00e9.\u00e9t\u00e9.\u00e9t\u00e9",
])
def test_garbage_is_malformed(token: str) -> None:
    assert refusal(token) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=60), min_size=1,
             max_size=5).map(".".join),
    st.builds(lambda header, rest: f"{b64url(header)}.{rest}", st.binary(max_size=80),
              st.text(max_size=80)),
))
def test_garbage_after_bearer_never_raises_anything_but_a_token_error(token: str) -> None:
    with pytest.raises(TokenError):
        verify(token)
    with pytest.raises(TokenError):
        TokenCache().verify(token, JWKS, issuer=ISSUER, audience=AUDIENCE, now=NOW)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "x"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=10),
                                 st.sampled_from(["EdDSA", KID, "none", "HS256"]),
                                 st.lists(st.text(max_size=5), max_size=2))),
       st.dictionaries(st.sampled_from(list(claims_of())), st.one_of(
           st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))))
def test_odd_headers_and_claims_never_raise_anything_but_a_token_error(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    with pytest.raises(TokenError):
        verify(f"{segment(header)}.{segment(claims)}.c2ln")


def test_a_64_kb_token_is_refused_quickly_as_malformed() -> None:
    token = mint() + "A" * 65536
    started = time.perf_counter()
    for _ in range(1000):
        assert refusal(token) == "malformed"
    # Generous: the point is that nothing is decoded; a parse of 64 KB would take far longer.
    assert time.perf_counter() - started < 1.0
    assert refusal("A" * (MAX_TOKEN_BYTES + 1)) == "malformed"
    with pytest.raises(TokenError) as caught:
        TokenCache().verify(token, JWKS, issuer=ISSUER, audience=AUDIENCE, now=NOW)
    assert caught.value.reason == "malformed"


def test_error_messages_do_not_echo_the_token() -> None:
    token = mint(audience="x.test")
    with pytest.raises(TokenError) as caught:
        verify(token)
    assert token not in str(caught.value)
    assert str(caught.value).startswith("bad_audience: ")


# ---------------------------------------------------------------------------- JWKS


def test_key_rotation_by_kid() -> None:
    both = jwks_of((EDDSA_KEY, "old", "EdDSA"), (ES256_KEY, "new", "ES256"))
    old_token = mint(kid="old")
    new_token = mint(private_pem=ES256_KEY, kid="new", algorithm="ES256")
    assert verify(old_token, both).kid == "old"
    assert verify(new_token, both).kid == "new"
    new_only = jwks_of((ES256_KEY, "new", "ES256"))
    assert refusal(old_token, new_only) == "unknown_kid"
    assert verify(new_token, new_only).subject == "1001"


def test_load_jwks_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document([public_jwk(EDDSA_KEY, KID, "EdDSA"),
                                              public_jwk(RS256_KEY, "r", "RS256")])))
    jwks = load_jwks(path)
    assert jwks.kids == (KID, "r") and len(jwks) == 2 and KID in jwks
    assert verify(mint(), jwks).kid == KID


def test_jwks_without_alg_binds_the_algorithm_of_the_key_type() -> None:
    jwk = public_jwk(ES256_KEY, "e", "ES256")
    del jwk["alg"], jwk["use"]
    jwks = Jwks.from_document({"keys": [jwk]})
    assert jwks.get("e") is not None and jwks.get("e").algorithm == "ES256"  # type: ignore[union-attr]


def test_jwks_skips_keys_it_does_not_verify_with() -> None:
    usable = public_jwk(EDDSA_KEY, KID, "EdDSA")
    document = {"keys": [
        usable,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        {**public_jwk(ES256_KEY, "enc", "ES256"), "use": "enc"},
        {**public_jwk(RS256_KEY, "ps", "RS256"), "alg": "PS256"},
        {**public_jwk(EDDSA_KEY, "mismatch", "EdDSA"), "alg": "RS256"},
        {k: v for k, v in public_jwk(EDDSA_KEY, "x", "EdDSA").items() if k != "kid"},
    ]}
    jwks = Jwks.from_document(document)
    assert jwks.kids == (KID,)
    assert len(jwks.skipped) == 5
    assert any("hmac" in reason for reason in jwks.skipped)


def test_a_jwks_with_private_members_is_used_for_its_public_key_only() -> None:
    private_jwk = json.loads(OKPAlgorithm.to_jwk(
        serialization.load_pem_private_key(EDDSA_KEY, None)))  # type: ignore[arg-type]
    jwks = Jwks.from_document({"keys": [{**private_jwk, "kid": KID, "alg": "EdDSA"}]})
    assert verify(mint(), jwks).subject == "1001"


@pytest.mark.parametrize("document", [
    [], {"keys": "x"}, {"keys": []}, {"keys": [1]},
    {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]},
    {"keys": [public_jwk(EDDSA_KEY, KID, "EdDSA"), public_jwk(OTHER_EDDSA_KEY, KID, "EdDSA")]},
    {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": KID, "x": "short"}]},
])
def test_unusable_jwks_documents_are_refused(document: Any) -> None:
    with pytest.raises(JwksError):
        Jwks.from_document(document)


def test_load_jwks_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="no such JWKS file"):
        load_jwks(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(JwksError, match="bad.json: not JSON"):
        load_jwks(bad)


# ---------------------------------------------------------------------------- cache


class CountingVerifier:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> AgentClaims:
        self.calls += 1
        return verify_agent_token(*args, **kwargs)


def cached(cache: TokenCache, token: str, jwks: Jwks = JWKS, **overrides: Any) -> AgentClaims:
    arguments: dict[str, Any] = dict(issuer=ISSUER, audience=AUDIENCE, now=NOW)
    arguments.update(overrides)
    return cache.verify(token, jwks, **arguments)


def test_cache_hit_avoids_verifying_again() -> None:
    verifier = CountingVerifier()
    cache = TokenCache(verifier=verifier)
    token = mint()
    first = cached(cache, token)
    for step in range(5):
        assert cached(cache, token, now=NOW + step) == first
    assert verifier.calls == 1 and cache.hits == 5 and cache.misses == 1


def test_cache_entry_ends_at_exp() -> None:
    verifier = CountingVerifier()
    cache = TokenCache(verifier=verifier)
    token = mint(ttl_seconds=60)
    cached(cache, token)
    cached(cache, token, now=NOW + 60 + 29)  # within the leeway, as the verifier
    assert verifier.calls == 1
    with pytest.raises(TokenError) as caught:
        cached(cache, token, now=NOW + 60 + 30)
    assert caught.value.reason == "expired"
    assert len(cache) == 0


def test_revocation_after_caching_is_honoured() -> None:
    revoked: set[str] = set()
    cache = TokenCache()
    token = mint(jti="j-1")
    assert cached(cache, token, is_revoked=revoked.__contains__).jti == "j-1"
    revoked.add("j-1")
    with pytest.raises(TokenError) as caught:
        cached(cache, token, is_revoked=revoked.__contains__)
    assert caught.value.reason == "revoked"
    revoked.clear()  # revocation lifted: the cached entry serves again
    assert cached(cache, token, is_revoked=revoked.__contains__).jti == "j-1"


def test_a_revoked_token_is_not_cached() -> None:
    verifier = CountingVerifier()
    cache = TokenCache(verifier=verifier)
    token = mint(jti="j-2")
    with pytest.raises(TokenError):
        cached(cache, token, is_revoked=lambda jti: True)
    assert len(cache) == 0


def test_cache_does_not_carry_a_token_to_another_audience_or_issuer() -> None:
    cache = TokenCache()
    token = mint()
    cached(cache, token)
    with pytest.raises(TokenError) as caught:
        cached(cache, token, audience="other.omnicc.test")
    assert caught.value.reason == "bad_audience"
    with pytest.raises(TokenError) as caught:
        cached(cache, token, issuer="other")
    assert caught.value.reason == "bad_issuer"


def test_cache_re_verifies_when_the_jwks_changes() -> None:
    verifier = CountingVerifier()
    cache = TokenCache(verifier=verifier)
    token = mint()
    cached(cache, token)
    with pytest.raises(TokenError) as caught:
        cached(cache, token, jwks_of((ES256_KEY, "new", "ES256")))
    assert caught.value.reason == "unknown_kid"
    reloaded = jwks_of((EDDSA_KEY, KID, "EdDSA"))  # same keys, a new load: verify once more
    cached(cache, token, reloaded)
    cached(cache, token, reloaded)
    assert verifier.calls == 3


def test_cache_is_bounded_least_recently_used_first() -> None:
    verifier = CountingVerifier()
    cache = TokenCache(max_entries=2, verifier=verifier)
    a, b, c = (mint(jti=name) for name in "abc")
    cached(cache, a)
    cached(cache, b)
    cached(cache, a)  # a is now the most recently used
    cached(cache, c)  # evicts b
    assert len(cache) == 2
    calls = verifier.calls
    cached(cache, a)
    assert verifier.calls == calls
    cached(cache, b)
    assert verifier.calls == calls + 1


def test_failures_are_not_cached() -> None:
    verifier = CountingVerifier()
    cache = TokenCache(verifier=verifier)
    token = mint(private_pem=OTHER_EDDSA_KEY)
    for _ in range(2):
        with pytest.raises(TokenError):
            cached(cache, token)
    assert verifier.calls == 2 and len(cache) == 0


# ---------------------------------------------------------------------------- secret files

CONFIG_TEXT = """
tenants:
  - name: default
    domain: default.omnicc.test
    agents:
      - {extension: "1001", password: "demo-pass-1001"}
      - {extension: "1002", password: "demo-pass-1002"}
  - name: acme
    domain: acme.omnicc.test
    agents:
      - {extension: "2001", password: "demo-pass-2001"}
"""


def write_config(directory: Path, auth: str = "") -> Path:
    path = directory / "omnicc.yaml"
    path.write_text(CONFIG_TEXT + auth)
    return path


def load(path: Path) -> OmniccConfig:
    return parse_config(path.read_text(), str(path))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(files: AuthSecretFiles) -> dict[Path, tuple[bytes, int, int]]:
    return {f.path: (f.path.read_bytes(), f.path.stat().st_mtime_ns, mode_of(f.path))
            for f in files.all()}


def test_default_secrets_are_created_private(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    var = tmp_path / "var"
    ensured = ensure_local_secrets(load(config_path), config_path, var)
    files = ensured.files
    assert [f.path.name for f in files.all()] == ["jwks.json", "signing-key.pem",
                                                  "digest.secret"]
    assert set(ensured.created) == {f.path for f in files.all()}
    assert mode_of(var / "secrets") == 0o700
    for secret_file in files.all():
        assert secret_file.path.parent == (var / "secrets").resolve()
        assert mode_of(secret_file.path) == 0o600
    # The JWKS holds the signing key's public key under the configured kid.
    jwks = load_jwks(files.jwks.path)
    assert jwks.kids == ("omnicc-1",)
    token = mint(private_pem=files.signing_key.path.read_bytes(),  # type: ignore[union-attr]
                 kid="omnicc-1")
    assert verify(token, jwks).subject == "1001"
    assert len(files.digest_secret.path.read_bytes().strip()) >= 32
    assert not list((var / "secrets").glob(".*"))  # no temporary file left behind


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    config = load(config_path)
    files = ensure_local_secrets(config, config_path, tmp_path / "var").files
    before = snapshot(files)
    again = ensure_local_secrets(config, config_path, tmp_path / "var")
    assert again.created == () and again.updated == ()
    assert snapshot(again.files) == before


def test_a_new_kid_is_added_to_our_jwks_and_the_old_one_kept(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    files = ensure_local_secrets(load(config_path), config_path, tmp_path / "var").files
    old_token = mint(private_pem=files.signing_key.path.read_bytes())  # type: ignore[union-attr]
    # Rotation: remove the key, name a new kid.
    files.signing_key.path.unlink()  # type: ignore[union-attr]
    config_path.write_text(CONFIG_TEXT + "auth:\n  jwt:\n    signing_kid: omnicc-2\n")
    ensured = ensure_local_secrets(load(config_path), config_path, tmp_path / "var")
    assert ensured.updated == (files.jwks.path,)
    jwks = load_jwks(files.jwks.path)
    assert jwks.kids == ("omnicc-1", "omnicc-2")
    assert verify(old_token, jwks).kid == "omnicc-1"
    assert mode_of(files.jwks.path) == 0o600


def test_a_lost_signing_key_under_the_same_kid_is_an_error(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    files = ensure_local_secrets(load(config_path), config_path, tmp_path / "var").files
    jwks_before = files.jwks.path.read_bytes()
    files.signing_key.path.unlink()  # type: ignore[union-attr]
    with pytest.raises(SecretsError, match="another key under kid 'omnicc-1'"):
        ensure_local_secrets(load(config_path), config_path, tmp_path / "var")
    assert files.jwks.path.read_bytes() == jwks_before


def test_given_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    config_path = write_config(tmp_path, "auth:\n  digest:\n    ephemeral_secret_file: "
                                         "keys/digest.txt\n")
    files = resolve_secret_files(load(config_path), config_path, tmp_path / "var")
    assert files.digest_secret.path == tmp_path.resolve() / "keys" / "digest.txt"
    assert files.digest_secret.given and not files.jwks.given


def test_a_given_path_that_does_not_exist_is_an_error_naming_the_key(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, "auth:\n  jwt:\n    jwks_file: /nonexistent/x.json\n")
    with pytest.raises(SecretsError) as caught:
        ensure_local_secrets(load(config_path), config_path, tmp_path / "var")
    assert str(caught.value) == "auth.jwt.jwks_file: /nonexistent/x.json does not exist"
    assert not (tmp_path / "var" / "secrets").exists()  # nothing made on the way to the error


def test_given_files_are_never_written(tmp_path: Path) -> None:
    key_path = tmp_path / "my-key.pem"
    key_path.write_bytes(EDDSA_KEY)
    secret_path = tmp_path / "my-digest"
    secret_path.write_text("a user secret of enough length\n")
    config_path = write_config(tmp_path, "auth:\n  jwt:\n    signing_key_file: my-key.pem\n"
                                         "  digest:\n    ephemeral_secret_file: my-digest\n")
    ensured = ensure_local_secrets(load(config_path), config_path, tmp_path / "var")
    assert key_path.read_bytes() == EDDSA_KEY
    assert secret_path.read_text() == "a user secret of enough length\n"
    # Our JWKS is made from the user's signing key.
    assert ensured.created == (ensured.files.jwks.path,)
    assert verify(mint(), load_jwks(ensured.files.jwks.path)).subject == "1001"


def test_an_outside_issuer_gets_no_signing_key(tmp_path: Path) -> None:
    jwks_path = tmp_path / "idp-jwks.json"
    jwks_path.write_text(json.dumps(jwks_document([public_jwk(ES256_KEY, "idp", "ES256")])))
    config_path = write_config(tmp_path, "auth:\n  jwt:\n    jwks_file: idp-jwks.json\n")
    ensured = ensure_local_secrets(load(config_path), config_path, tmp_path / "var")
    assert ensured.files.signing_key is None
    assert [p.name for p in ensured.created] == ["digest.secret"]


# ---------------------------------------------------------------------------- CLI


def run_cli(tmp_path: Path, config_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="omnicc")
    parser.add_argument("-c", "--config")
    parser.add_argument("--var")
    add_token_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["-c", str(config_path), "--var", str(tmp_path / "var"), *argv])
    return args.func(args)


def test_token_agent_prints_a_token_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    assert run_cli(tmp_path, config_path, "token", "agent", "1001", "--ttl", "30m") == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2  # just the token, for $(...)
    jwks = load_jwks(tmp_path / "var" / "secrets" / "jwks.json")
    claims = verify_agent_token(token, jwks, issuer="omnicc", audience="default.omnicc.test",
                                now=time.time())
    assert claims.subject == "1001" and claims.role == "agent"
    assert 30 * 60 - 5 <= claims.expires_at - time.time() <= 30 * 60


def test_token_agent_of_another_tenant_and_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    assert run_cli(tmp_path, config_path, "token", "agent", "2001", "--tenant", "acme",
                   "--role", "supervisor") == 0
    token = capsys.readouterr().out.strip()
    jwks = load_jwks(tmp_path / "var" / "secrets" / "jwks.json")
    claims = verify_agent_token(token, jwks, issuer="omnicc", audience="acme.omnicc.test",
                                now=time.time())
    assert claims.role == "supervisor"
    assert claims.expires_at - time.time() > 7 * 3600  # the config's default of 8 h


@pytest.mark.parametrize(("argv", "message"), [
    (["1009"], "'1009' is not an agent of tenant default (its agents: 1001, 1002)"),
    (["2001"], "'2001' is not an agent of tenant default"),
    (["1001", "--tenant", "nope"], "no tenant 'nope' (tenants: default, acme)"),
    (["1001", "--ttl", "40d"], "longer than the maximum"),
])
def test_token_agent_refuses_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    config_path = write_config(tmp_path)
    assert run_cli(tmp_path, config_path, "token", "agent", *argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("omnicc token: error: ") and message in captured.err


def test_token_agent_with_an_outside_issuer_says_why_it_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "idp.json").write_text(
        json.dumps(jwks_document([public_jwk(ES256_KEY, "idp", "ES256")])))
    config_path = write_config(tmp_path, "auth:\n  jwt:\n    jwks_file: idp.json\n")
    assert run_cli(tmp_path, config_path, "token", "agent", "1001") == 1
    assert "auth.jwt.signing_key_file is not set" in capsys.readouterr().err


def test_token_agent_checks_the_token_against_a_given_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "key.pem").write_bytes(EDDSA_KEY)
    (tmp_path / "idp.json").write_text(
        json.dumps(jwks_document([public_jwk(ES256_KEY, "idp", "ES256")])))
    config_path = write_config(
        tmp_path, "auth:\n  jwt:\n    jwks_file: idp.json\n    signing_key_file: key.pem\n")
    assert run_cli(tmp_path, config_path, "token", "agent", "1001") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "unknown_kid" in captured.err


def test_token_init_prints_the_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path)
    assert run_cli(tmp_path, config_path, "token", "init") == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 3 and all(line.endswith("(created)") for line in first)
    assert first[0].startswith("auth.jwt.jwks_file: ")
    assert run_cli(tmp_path, config_path, "token", "init") == 0
    assert all(line.endswith("(exists)") for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize(("text", "seconds"),
                         [("3600", 3600), ("45s", 45), ("30m", 1800), ("8h", 28800),
                          ("2d", 172800)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "8x", "-5", "1.5h", "h", "8 h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
