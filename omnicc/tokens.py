"""Agent bearer tokens (RFC 8898): signing keys, JWKS, minting, verifying, a per-process cache.

An agent presents ``Authorization: Bearer <jwt>``; Kamailio's KEMI script hands the token to
:func:`verify_agent_token` (through a :class:`TokenCache`). The rules that keep it safe:

* The algorithm a token may use is the one bound to its key (``kid``) in the JWKS, never the
  one its header names. ``alg: none``, HS256 signed with the public key as an HMAC secret
  (algorithm confusion) and any header alg other than the key's are refused before any
  cryptography runs.
* Time is passed in (``now``), never read here, so verification is deterministic and the
  cache and the verifier agree on when a token expires.
* Anything larger than :data:`MAX_TOKEN_BYTES` is refused before it is parsed, and garbage
  of any shape ends in a :class:`TokenError` with a machine-readable ``reason``, never in
  another exception.

Signatures are computed and checked by PyJWT's algorithm implementations (over the
``cryptography`` package); parsing the compact form and checking claims is done here so
that every refusal has its own reason and no library default (its own clock, an algorithm
list from the header) can creep in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

SigningAlgorithm = Literal["EdDSA", "ES256", "RS256"]
Role = Literal["agent", "supervisor"]

ALLOWED_ALGORITHMS: tuple[str, ...] = ("EdDSA", "ES256", "RS256")
ROLES: tuple[str, ...] = ("agent", "supervisor")

# A token rides in one SIP header; 8 KB is far above any real token (an EdDSA token with our
# claims is ~350 bytes, RS256 ~550) and far below what would make parsing a cost worth
# attacking.
MAX_TOKEN_BYTES = 8192
# jti values become Redis keys of the revocation list: keep them short.
MAX_JTI_LENGTH = 128
MAX_SUBJECT_LENGTH = 128
DEFAULT_LEEWAY_SECONDS = 30
# The smallest RSA modulus a JWKS may hold (NIST SP 800-131A), and the size we generate.
MIN_RSA_BITS = 2048
RSA_KEY_BITS = 2048

REQUIRED_CLAIMS: tuple[str, ...] = ("iss", "aud", "sub", "exp", "jti", "role")

# Which key type each accepted algorithm needs: (kty, crv or None).
_KEY_TYPE: dict[str, tuple[str, str | None]] = {
    "EdDSA": ("OKP", "Ed25519"),
    "ES256": ("EC", "P-256"),
    "RS256": ("RSA", None),
}
# Members of a JWK that hold private material: a JWKS is public, so they are ignored.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_BASE64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()

TokenErrorReason = Literal[
    "malformed", "unknown_kid", "alg_not_allowed", "bad_signature", "expired",
    "not_yet_valid", "bad_audience", "bad_issuer", "missing_claim", "bad_role", "revoked",
]


class TokenError(Exception):
    """A token that must not be honoured. ``reason`` is one of :data:`TokenErrorReason`,
    stable for logs and metrics; the message is for humans and never echoes the token."""

    def __init__(self, reason: TokenErrorReason, message: str):
        self.reason: TokenErrorReason = reason
        super().__init__(f"{reason}: {message}")


class SigningKeyError(ValueError):
    """A private key that cannot sign with the algorithm asked for."""


class JwksError(ValueError):
    """A JWKS document or file that cannot be used."""


# ---------------------------------------------------------------------------- keys


def generate_signing_key(algorithm: SigningAlgorithm = "EdDSA") -> bytes:
    """A new private key for ``algorithm``, as unencrypted PKCS#8 PEM."""
    private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        raise SigningKeyError(f"unsupported signing algorithm {algorithm!r}; "
                              f"use one of {', '.join(ALLOWED_ALGORITHMS)}")
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private_key(private_pem: bytes, algorithm: str) -> Any:
    """The private key in ``private_pem``, checked to be of the type ``algorithm`` needs."""
    if algorithm not in ALLOWED_ALGORITHMS:
        raise SigningKeyError(f"unsupported signing algorithm {algorithm!r}; "
                              f"use one of {', '.join(ALLOWED_ALGORITHMS)}")
    try:
        private_key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not an unencrypted PEM private key: {exc}") from None
    fits = {
        "EdDSA": isinstance(private_key, ed25519.Ed25519PrivateKey),
        "ES256": isinstance(private_key, ec.EllipticCurvePrivateKey)
        and isinstance(private_key.curve, ec.SECP256R1),
        "RS256": isinstance(private_key, rsa.RSAPrivateKey)
        and private_key.key_size >= MIN_RSA_BITS,
    }[algorithm]
    if not fits:
        kty, crv = _KEY_TYPE[algorithm]
        needed = f"{kty} {crv}" if crv else f"{kty} of at least {MIN_RSA_BITS} bits"
        raise SigningKeyError(f"the private key is not a key for {algorithm} ({needed})")
    return private_key


def public_jwk(private_pem: bytes, kid: str, algorithm: SigningAlgorithm) -> dict[str, Any]:
    """The public half of a signing key as an RFC 7517 JWK, with ``kid``, ``alg`` and
    ``use: sig`` so a verifier binds the key to exactly one algorithm."""
    if not kid:
        raise SigningKeyError("a key id (kid) must not be empty")
    private_key = _load_private_key(private_pem, algorithm)
    jwk: dict[str, Any] = dict(_ALGORITHMS[algorithm].to_jwk(private_key.public_key(),
                                                             as_dict=True))
    # RFC 7517 §4.3: "use" and "key_ops" should not both be present; "use" is the one
    # identity providers and JWKS consumers commonly read.
    jwk.pop("key_ops", None)
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return jwk


def jwks_document(keys: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A JWKS document: ``{"keys": [...]}``."""
    return {"keys": [dict(key) for key in keys]}


@dataclass(frozen=True, eq=False)
class VerificationKey:
    """One public key of a JWKS, bound to the one algorithm it may verify."""

    kid: str
    algorithm: str
    public_key: Any  # a cryptography public key object, prepared once at load time

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return bool(_ALGORITHMS[self.algorithm].verify(signing_input, self.public_key,
                                                       signature))


class Jwks:
    """Verification keys by ``kid``. Several keys may be present so keys can rotate: a new
    kid is added, tokens signed under the old one keep verifying until it is removed."""

    def __init__(self, keys: Iterable[VerificationKey], skipped: Iterable[str] = ()):
        self._keys: dict[str, VerificationKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise JwksError(f"key id {key.kid!r} appears twice")
            self._keys[key.kid] = key
        # Keys of the document that are not used, with why (for a log line at load time).
        self.skipped: tuple[str, ...] = tuple(skipped)

    @classmethod
    def from_document(cls, document: Any) -> Jwks:
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise JwksError('a JWKS is a JSON object with a "keys" list')
        keys: list[VerificationKey] = []
        skipped: list[str] = []
        for index, jwk in enumerate(document["keys"]):
            if not isinstance(jwk, Mapping):
                raise JwksError(f"keys[{index}] is not a JSON object")
            key_or_reason = _verification_key(jwk)
            if isinstance(key_or_reason, str):
                skipped.append(f"keys[{index}]: {key_or_reason}")
            else:
                keys.append(key_or_reason)
        if not keys:
            detail = "; ".join(skipped) or "the keys list is empty"
            raise JwksError(f"no usable {'/'.join(ALLOWED_ALGORITHMS)} signature key ({detail})")
        return cls(keys, skipped)

    def get(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)


def _verification_key(jwk: Mapping[str, Any]) -> VerificationKey | str:
    """The key a JWK describes, or why it is not one omnicc verifies with. A key that claims
    to be usable but is broken raises JwksError: a silently dropped key would show up
    only as agents refused with unknown_kid."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        return "no kid (tokens name their key by kid)"
    use = jwk.get("use", "sig")
    if use != "sig":
        return f"kid {kid!r}: use {use!r}, not a signature key"
    kty, crv = jwk.get("kty"), jwk.get("crv")
    algorithm = jwk.get("alg")
    if algorithm is None:
        # RFC 7517 makes alg optional: infer it from the key type, only among ours.
        algorithm = next((alg for alg, (want_kty, want_crv) in _KEY_TYPE.items()
                          if kty == want_kty and (want_crv is None or crv == want_crv)), None)
        if algorithm is None:
            return f"kid {kid!r}: key type {kty!r} {crv or ''} is not accepted".rstrip()
    if algorithm not in ALLOWED_ALGORITHMS:
        return f"kid {kid!r}: alg {algorithm!r} is not accepted"
    want_kty, want_crv = _KEY_TYPE[algorithm]
    if kty != want_kty or (want_crv is not None and crv != want_crv):
        return f"kid {kid!r}: alg {algorithm} needs a {want_kty} {want_crv or ''} key".rstrip()
    public_members = {name: value for name, value in jwk.items() if name not in _PRIVATE_MEMBERS}
    try:
        public_key = _ALGORITHMS[algorithm].from_jwk(public_members)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise JwksError(f"kid {kid!r}: not a valid {algorithm} public key: {exc}") from None
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
        return f"kid {kid!r}: RSA key of {public_key.key_size} bits (at least {MIN_RSA_BITS})"
    return VerificationKey(kid=kid, algorithm=algorithm, public_key=public_key)


def load_jwks(path: str | Path) -> Jwks:
    """The JWKS in a file; every problem is a JwksError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JwksError(f"{path}: no such JWKS file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JwksError(f"{path}: cannot read: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise JwksError(f"{path}: not JSON: {exc}") from None
    try:
        return Jwks.from_document(document)
    except JwksError as exc:
        raise JwksError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------- minting


def mint_agent_token(
    private_pem: bytes,
    *,
    kid: str,
    algorithm: SigningAlgorithm,
    issuer: str,
    audience: str,
    subject: str,
    role: Role = "agent",
    ttl_seconds: int,
    now: float,
    jti: str | None = None,
) -> str:
    """A signed agent token valid from ``now`` for ``ttl_seconds``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if not subject or not audience or not issuer or not kid:
        raise ValueError("subject, audience, issuer and kid must not be empty")
    private_key = _load_private_key(private_pem, algorithm)
    issued_at = int(now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + ttl_seconds,
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
        "role": role,
    }
    return jwt.encode(claims, private_key, algorithm=algorithm, headers={"kid": kid})


# ---------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class AgentClaims:
    """What a verified token says. The caller still checks that ``subject`` is the agent
    the request is for (the AOR): a valid token of agent A must not register agent B."""

    subject: str
    role: Role
    jti: str
    expires_at: float
    audience: str  # the audience the token was verified for (one of its aud values)
    issuer: str
    kid: str


def _refuse_oversized(token: str) -> None:
    # len() of a str is O(1): a 64 KB header is refused without looking at its content.
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("malformed", f"longer than {MAX_TOKEN_BYTES} bytes")


def _no_json_constants(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and a NaN exp compares false
    # with everything, which would make an expiry check pass.
    raise ValueError(f"{name} is not JSON")


def _base64url_decode(segment: str) -> bytes:
    # JWS compact segments are unpadded (RFC 7515 §2); the decoder wants the padding back.
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _decode_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = _base64url_decode(segment)
        value = json.loads(raw, parse_constant=_no_json_constants)
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("malformed", f"the {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise TokenError("malformed", f"the {what} is not a JSON object")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_claims(
    claims: dict[str, Any], *, issuer: str, audience: str, now: float, leeway: float
) -> None:
    missing = [name for name in REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise TokenError("missing_claim", f"no {', '.join(missing)} claim")
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_number(claims[name]):
            raise TokenError("malformed", f"the {name} claim is not a number")
    for name in ("iss", "sub", "jti", "role"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise TokenError("malformed", f"the {name} claim is not a non-empty string")
    if len(claims["jti"]) > MAX_JTI_LENGTH or len(claims["sub"]) > MAX_SUBJECT_LENGTH:
        raise TokenError("malformed", "the jti or sub claim is too long")

    if claims["iss"] != issuer:
        raise TokenError("bad_issuer", "issued by another issuer")
    token_audience = claims["aud"]
    # RFC 7519 §4.1.3: aud is one string or a list of strings.
    audiences = [token_audience] if isinstance(token_audience, str) else token_audience
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise TokenError("malformed", "the aud claim is not a string or a list of strings")
    if audience not in audiences:
        raise TokenError("bad_audience", "not meant for this audience")
    if now >= claims["exp"] + leeway:
        raise TokenError("expired", "past its exp")
    if "nbf" in claims and now + leeway < claims["nbf"]:
        raise TokenError("not_yet_valid", "before its nbf")
    # A token issued in the future comes from a clock far off or a forger: neither is an
    # agent to let in yet.
    if "iat" in claims and now + leeway < claims["iat"]:
        raise TokenError("not_yet_valid", "its iat is in the future")
    if claims["role"] not in ROLES:
        raise TokenError("bad_role", f"role must be one of {', '.join(ROLES)}")


def verify_agent_token(
    token: str,
    jwks: Jwks,
    *,
    issuer: str,
    audience: str,
    now: float,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
    is_revoked: Callable[[str], bool] | None = None,
) -> AgentClaims:
    """The claims of a token whose signature, algorithm, issuer, audience and times are
    all right; TokenError otherwise. ``is_revoked(jti)`` runs last, only for a token that
    is otherwise valid, so garbage never costs a Redis round trip."""
    claims, kid = _verify_signed_claims(token, jwks)
    _check_claims(claims, issuer=issuer, audience=audience, now=now, leeway=leeway)
    result = AgentClaims(
        subject=claims["sub"],
        role=claims["role"],
        jti=claims["jti"],
        expires_at=claims["exp"],
        audience=audience,
        issuer=claims["iss"],
        kid=kid,
    )
    if is_revoked is not None and is_revoked(result.jti):
        raise TokenError("revoked", "its jti is revoked")
    return result


def _verify_signed_claims(token: str, jwks: Jwks) -> tuple[dict[str, Any], str]:
    """The payload of a token whose signature verifies under the key its kid names, with
    the algorithm that key is bound to."""
    if not isinstance(token, str):
        raise TokenError("malformed", "not a string")
    _refuse_oversized(token)
    segments = token.split(".")
    # An empty signature segment passes here so that an unsecured token ("alg": "none")
    # is refused for its alg below, the reason worth logging; it could not verify anyway.
    if len(segments) != 3 or not all(_BASE64URL_SEGMENT.fullmatch(s) for s in segments[:2]) \
            or not (segments[2] == "" or _BASE64URL_SEGMENT.fullmatch(segments[2])):
        # This also refuses JWE (five segments), detached payloads and padded segments.
        raise TokenError("malformed", "not three unpadded base64url segments")
    header_segment, payload_segment, signature_segment = segments
    header = _decode_segment(header_segment, "header")

    algorithm = header.get("alg")
    if algorithm not in ALLOWED_ALGORITHMS:
        raise TokenError("alg_not_allowed", f"alg {algorithm!r} is not accepted")
    if "crit" in header:
        # RFC 7515 §4.1.11: extensions we do not implement must make the token invalid.
        raise TokenError("malformed", "critical header extensions are not supported")
    kid = header.get("kid")
    if kid is None:
        raise TokenError("unknown_kid", "the header names no kid")
    if not isinstance(kid, str):
        raise TokenError("malformed", "the kid header is not a string")
    key = jwks.get(kid)
    if key is None:
        raise TokenError("unknown_kid", "no key with that kid")
    if algorithm != key.algorithm:
        raise TokenError("alg_not_allowed", f"alg {algorithm} is not the alg of key {kid!r}")

    try:
        signature = _base64url_decode(signature_segment)
        signed = key.verify(f"{header_segment}.{payload_segment}".encode("ascii"), signature)
    except (binascii.Error, ValueError, TypeError):
        signed = False
    if not signed:
        raise TokenError("bad_signature", "the signature does not verify")
    return _decode_segment(payload_segment, "payload"), kid


# ---------------------------------------------------------------------------- caching


@dataclass(frozen=True)
class _CachedToken:
    claims: AgentClaims
    key: VerificationKey  # the key it verified under: a reloaded JWKS must re-verify


Verifier = Callable[..., AgentClaims]


class TokenCache:
    """Verified tokens of this process, so a Kamailio worker checks a token's signature
    once, not on every REGISTER and INVITE.

    Entries are keyed by a hash of the token with the issuer and audience it was verified
    for (a token accepted for one tenant's domain is not thereby accepted for another's).
    An entry is used only while the key it verified under is still the JWKS's key for its
    kid, and only until the token's exp (with the same leeway as the verifier). Revocation
    is never cached: ``is_revoked`` is called on every lookup, hit or miss. Bounded: the
    least recently used entry goes first. Not thread-safe — each Kamailio worker is a
    process of its own with its own cache.
    """

    def __init__(self, max_entries: int = 10_000,
                 verifier: Verifier = verify_agent_token):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._verifier = verifier
        self._entries: OrderedDict[tuple[bytes, str, str], _CachedToken] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def verify(
        self,
        token: str,
        jwks: Jwks,
        *,
        issuer: str,
        audience: str,
        now: float,
        leeway: float = DEFAULT_LEEWAY_SECONDS,
        is_revoked: Callable[[str], bool] | None = None,
    ) -> AgentClaims:
        """As :func:`verify_agent_token`, from the cache when this token was verified
        before and is still within its time."""
        if not isinstance(token, str):
            raise TokenError("malformed", "not a string")
        _refuse_oversized(token)
        cache_key = (hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest(),
                     issuer, audience)
        cached = self._entries.get(cache_key)
        if cached is not None:
            fresh = now < cached.claims.expires_at + leeway
            if fresh and jwks.get(cached.claims.kid) is cached.key:
                self._entries.move_to_end(cache_key)
                self.hits += 1
                if is_revoked is not None and is_revoked(cached.claims.jti):
                    raise TokenError("revoked", "its jti is revoked")
                return cached.claims
            del self._entries[cache_key]
        self.misses += 1
        # Revocation is checked by the verifier on this path (after the signature).
        claims = self._verifier(token, jwks, issuer=issuer, audience=audience, now=now,
                                leeway=leeway, is_revoked=is_revoked)
        key = jwks.get(claims.kid)
        if key is not None:
            self._entries[cache_key] = _CachedToken(claims, key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return claims
