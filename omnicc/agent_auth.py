"""Who an agent's credentials prove it to be — the decisions behind the KEMI script's
authentication, with the SIP I/O left to Kamailio.

Credentials are checked in the worker's own memory first: a bearer token's signature and
claims (cached per worker) and the AOR; for digest this module says which password the
request must prove (the agent's static one, the HMAC of an ephemeral username, or a decoy
nobody holds) and Kamailio's pv_auth_check does the nonce arithmetic. Then `admit` asks
Redis, in one round trip, whether the agent is disabled or the token revoked — never
cached, so a revocation takes effect on the next request — and, for a REGISTER, publishes
the agent's reachability for the ACD in the same step. Every failure looks the same from
outside, whether the extension exists or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnicc.auth_secrets import read_digest_secret, resolve_secret_files
from omnicc.config import OmniccConfig, Tenant
from omnicc.ephemeral import EphemeralError, parse_username, password_for, tenant_secret
from omnicc.keys import agent_contact, agent_disabled, revoked_jti
from omnicc.sip_auth import decoy_password
from omnicc.tokens import Jwks, TokenCache, TokenError, load_jwks


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None


class AuthFailure(Exception):
    """Credentials that prove nothing; `.reason` is for the log, never for the reply.
    `.counts` is False when the fault is ours (Redis unreachable), so it does not count
    towards banning the source."""

    def __init__(self, reason: str, counts: bool = True, stale: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.counts = counts
        # A right answer to a nonce this node no longer takes: the next challenge says
        # stale=true (RFC 7616 3.3), so the phone answers it without asking its user.
        self.stale = stale


@dataclass(frozen=True)
class AgentIdentity:
    tenant: Tenant
    extension: str
    jti: str | None = None  # the bearer token's id: admit() checks its revocation


# One round trip per authenticated request: refuse a disabled agent or a revoked token,
# else (for a REGISTER) publish the agent's reachability for the ACD. Every key is the
# tenant's ({t:T}): one Redis Cluster slot.
# KEYS: disabled flag, revoked-token flag (the disabled flag again without a token),
# contact key. ARGV: contact to publish ('' for none), its TTL in seconds.
# Returns 1 if refused, else 0.
ADMIT_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 1 end
if ARGV[1] ~= '' then redis.call('SET', KEYS[3], ARGV[1], 'EX', tonumber(ARGV[2])) end
return 0
"""


class AgentAuthenticator:
    def __init__(self, config: OmniccConfig, jwks: Jwks, digest_secret: bytes, redis: Any,
                 cache: TokenCache | None = None, jwks_path: Path | None = None,
                 admit_script: Callable[..., Any] | None = None):
        self._config = config
        self._jwks = jwks
        self._digest_secret = digest_secret
        self._tenant_secrets: dict[str, bytes] = {}
        self._redis = redis
        self._cache = cache or TokenCache()
        # Watched so a key rotation (a new kid in the JWKS) needs no Kamailio restart.
        self._jwks_path = jwks_path
        self._jwks_mtime = _mtime(jwks_path)
        self._jwks_checked = 0.0
        # ADMIT_LUA as a callable(keys=, args=): the KEMI script passes a lean one
        # (omnicc.lean_redis), anyone else gets redis-py's.
        self._admit = admit_script or redis.register_script(ADMIT_LUA)

    @classmethod
    def from_config(cls, config: OmniccConfig, config_path: str | Path, var_dir: str | Path,
                    redis: Any, admit_script: Callable[..., Any] | None = None,
                    ) -> AgentAuthenticator:
        files = resolve_secret_files(config, config_path, var_dir)
        return cls(config, load_jwks(files.jwks.path), read_digest_secret(files), redis,
                   jwks_path=files.jwks.path, admit_script=admit_script)

    def _refresh_jwks(self, now: float) -> None:
        """Reload the JWKS when its file changed (looked at no more than once a second).
        A file that no longer loads keeps the keys in use, so a bad edit locks nobody out."""
        if self._jwks_path is None or now - self._jwks_checked < 1.0:
            return
        self._jwks_checked = now
        mtime = _mtime(self._jwks_path)
        if mtime == self._jwks_mtime:
            return
        try:
            self._jwks = load_jwks(self._jwks_path)
        except (OSError, ValueError):
            return
        self._jwks_mtime = mtime

    def _tenant_secret(self, tenant: str) -> bytes:
        # Derived once per tenant: an HMAC fewer on every ephemeral digest check.
        secret = self._tenant_secrets.get(tenant)
        if secret is None:
            secret = self._tenant_secrets[tenant] = tenant_secret(self._digest_secret, tenant)
        return secret

    def identity(self, tenant: Tenant, extension: str) -> AgentIdentity:
        return AgentIdentity(tenant, extension)

    def admit(self, identity: AgentIdentity, *, publish_contact: str = "",
              ttl: int = 0) -> None:
        """Refuse a disabled agent or a revoked token (AuthFailure); else, when
        `publish_contact` is given, mark the agent reachable for `ttl` seconds. If Redis
        cannot say, refuse — a revoked token must never be honoured."""
        tenant, extension = identity.tenant.name, identity.extension
        disabled = agent_disabled(tenant, extension)
        revoked = revoked_jti(tenant, identity.jti) if identity.jti else disabled
        try:
            refused = self._admit(keys=[disabled, revoked, agent_contact(tenant, extension)],
                                  args=[publish_contact, max(int(ttl), 1)])
        except Exception as exc:  # redis.RedisError and socket errors alike
            raise AuthFailure(f"revocation state unavailable: {exc}", counts=False) from None
        if refused:
            raise AuthFailure("disabled agent or revoked token")

    def check_bearer(self, token: str, tenant: Tenant, aor_user: str,
                     now: float) -> AgentIdentity:
        jwt = self._config.auth.jwt
        self._refresh_jwks(now)
        if tenant.agent(aor_user) is None:
            raise AuthFailure("bearer: no such agent")
        try:
            # Revocation is not checked here but by admit(), in the same round trip as
            # everything else this request needs from Redis.
            claims = self._cache.verify(
                token, self._jwks, issuer=jwt.issuer, audience=tenant.domain, now=now)
        except TokenError as exc:
            raise AuthFailure(f"bearer: {exc.reason}") from None
        if claims.subject != aor_user:
            # A token of agent A presented as agent B.
            raise AuthFailure("bearer: token subject is not the AOR")
        return AgentIdentity(tenant, aor_user, claims.jti)

    def digest_password(self, tenant: Tenant, aor_user: str, auth_user: str,
                        now: float) -> str:
        """The password the digest response must prove; a decoy when nothing valid could."""
        if ":" in auth_user:
            try:
                extension = parse_username(auth_user, now=now)
            except EphemeralError:
                return decoy_password()  # expired or malformed: fails like a wrong password
            if extension != aor_user or tenant.agent(extension) is None:
                return decoy_password()
            return password_for(self._tenant_secret(tenant.name), auth_user)
        agent = tenant.agent(aor_user)
        if (agent is None or auth_user != aor_user
                or not self._config.auth.digest.allow_static_passwords):
            return decoy_password()
        return agent.password
