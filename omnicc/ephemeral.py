"""Time-limited digest credentials for hard phones and SIPp, as Kamailio's auth_ephemeral.

The username carries its own expiry, ``"<expiry-unix-time>:<extension>"`` (auth_ephemeral's
default ``username_format`` 1, the IETF TURN REST form), and the password is
``base64(HMAC(secret, username))``. Nothing is stored per credential: whoever holds the
secret can check any username, and a credential stops working when its expiry passes.

The HMAC is SHA-256 (auth_ephemeral's ``sha_algorithm`` 2). SHA-1, its default, is still
sound inside HMAC, but SHA-256 costs the same here and leaves no weak primitive to explain
in a security review. With ``modparam("auth_ephemeral", "sha_algorithm", 2)`` and the same
(per-tenant) secret, Kamailio's own module accepts the credentials minted here.

Tenants: the username names an extension but no tenant, and extension 1001 exists in many
tenants. So each tenant's credentials are made under its own secret,
:func:`tenant_secret` of the one shared secret, and a credential minted for 1001 of tenant A
is no credential for 1001 of tenant B.

In Kamailio, the digest check itself is ``pv_auth_check``, which computes HA1 from a
plaintext password: the KEMI script passes it :func:`password_for` of the username the
phone sent (``$aU``, the whole username — the HA1 is computed over the whole username).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Literal

from omnicc.config import EXTENSION_RE

# A credential may live up to a year and a day; an expiry further out than this is not one
# omnicc made (and would be a credential that, in practice, never expires).
MAX_LIFETIME_SECONDS = 366 * 24 * 3600
# Far longer than any real username ("1767225600:123456789012" is 23 characters); anything
# longer is refused before it is looked at.
MAX_USERNAME_LENGTH = 64
# Short secrets make the HMAC guessable offline from one captured digest exchange.
MIN_SECRET_BYTES = 16

_USERNAME_RE = re.compile(r"([0-9]{1,12}):([0-9]+)")
_TENANT_SECRET_LABEL = b"omnicc digest credentials of tenant\x00"

EphemeralErrorReason = Literal["malformed", "expired", "bad_password"]


class EphemeralError(Exception):
    """A username or password that must not be accepted; ``reason`` is machine-readable."""

    def __init__(self, reason: EphemeralErrorReason, message: str):
        self.reason: EphemeralErrorReason = reason
        super().__init__(f"{reason}: {message}")


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the digest secret must be at least {MIN_SECRET_BYTES} bytes")


def tenant_secret(shared_secret: bytes, tenant: str) -> bytes:
    """The secret one tenant's credentials are made under, derived from the shared one.

    Hex text rather than raw bytes so it can be given as it is to Kamailio's
    ``modparam("auth_ephemeral", "secret", ...)``, which takes a string."""
    _check_secret(shared_secret)
    if not tenant:
        raise ValueError("the tenant name must not be empty")
    digest = hmac.new(shared_secret, _TENANT_SECRET_LABEL + tenant.encode("utf-8"),
                      hashlib.sha256).hexdigest()
    return digest.encode("ascii")


def password_for(secret: bytes, username: str) -> str:
    """The password of ``username`` under ``secret``: base64(HMAC-SHA256(secret, username)),
    standard base64 with padding, as auth_ephemeral computes it."""
    _check_secret(secret)
    mac = hmac.new(secret, username.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def passwords_equal(given: str, expected: str) -> bool:
    """Constant-time comparison: how long it takes tells nothing of where they differ."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def mint_credentials(
    secret: bytes, extension: str, *, ttl_seconds: int, now: float
) -> tuple[str, str]:
    """A (username, password) pair for ``extension`` that expires ``ttl_seconds`` after
    ``now``."""
    if not EXTENSION_RE.fullmatch(extension):
        raise ValueError(f"not an extension (2 to 12 digits): {extension!r}")
    if not 0 < ttl_seconds <= MAX_LIFETIME_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_LIFETIME_SECONDS}")
    username = f"{int(now) + ttl_seconds}:{extension}"
    return username, password_for(secret, username)


def parse_username(username: str, *, now: float) -> str:
    """The extension of an ephemeral username that has not expired.

    Refused as ``malformed``: anything but ``DIGITS:EXTENSION``, and an expiry more than
    :data:`MAX_LIFETIME_SECONDS` ahead. Refused as ``expired``: an expiry at or before
    ``now`` (auth_ephemeral accepts the expiry second itself; one second is not worth a
    difference in meaning)."""
    if not isinstance(username, str) or len(username) > MAX_USERNAME_LENGTH:
        raise EphemeralError("malformed", "not an ephemeral username")
    match = _USERNAME_RE.fullmatch(username)
    if match is None or not EXTENSION_RE.fullmatch(match.group(2)):
        raise EphemeralError("malformed", "not EXPIRY:EXTENSION")
    expiry = int(match.group(1))
    if expiry > now + MAX_LIFETIME_SECONDS:
        raise EphemeralError("malformed", "expiry too far in the future")
    if expiry <= now:
        raise EphemeralError("expired", "past its expiry")
    return match.group(2)


def check_credentials(secret: bytes, username: str, password: str, *, now: float) -> str:
    """The extension, when ``password`` is the password of a valid ``username``. For places
    that receive the plaintext password; a SIP digest exchange never does, and is checked
    by Kamailio's pv_auth_check with :func:`password_for` instead."""
    extension = parse_username(username, now=now)
    if not passwords_equal(password, password_for(secret, username)):
        raise EphemeralError("bad_password", "wrong password")
    return extension
