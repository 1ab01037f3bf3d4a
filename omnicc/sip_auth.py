"""Agent authentication at the SIP edge: which credentials a request carries, and whether
they prove the agent it claims to be. Pure logic; the KEMI script does the SIP I/O and
Kamailio's auth module does the digest arithmetic (nonces, HA1).

Three kinds of credentials are accepted from agents:
- RFC 8898 bearer tokens: `Authorization: Bearer <JWT>` (or Proxy-Authorization);
- time-limited digest credentials, as Kamailio's auth_ephemeral (username EXPIRY:EXT);
- static digest passwords from the config, when auth.digest.allow_static_passwords.
Whatever fails, the reply does not tell an unknown extension from a known one.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

BEARER_RE = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)
DIGEST_RE = re.compile(r"^\s*Digest\s", re.IGNORECASE)
# Longer than any token we mint by far; a 64 KB header is refused before any parsing.
MAX_CREDENTIAL_BYTES = 8192


@dataclass(frozen=True)
class Credentials:
    scheme: str  # "none" | "bearer" | "digest" | "malformed"
    token: str = ""


def parse_authorization(value: str | None) -> Credentials:
    """Classify an Authorization / Proxy-Authorization header value."""
    if not value:
        return Credentials("none")
    if len(value) > MAX_CREDENTIAL_BYTES:
        return Credentials("malformed")
    bearer = BEARER_RE.match(value)
    if bearer:
        return Credentials("bearer", bearer.group(1))
    if value.lstrip()[:6].lower() == "bearer":
        return Credentials("malformed")  # "Bearer" with nothing, or with spaces inside
    if DIGEST_RE.match(value):
        return Credentials("digest")
    return Credentials("malformed")


# One auth-param of a Digest answer: name=token or name="quoted string" (RFC 7616 3.4);
# the quoted string's loop unrolled, which Python's re runs several times faster.
_AUTH_VALUE = r'(?:"[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"]*)'
_AUTH_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(' + _AUTH_VALUE + ')')
# The whole list: such params, each followed by a comma or the end (checked in one match).
_AUTH_PARAMS_RE = re.compile(
    r'(?:\s*[A-Za-z0-9_-]+\s*=\s*' + _AUTH_VALUE + r'\s*(?:,|$))*\s*')


def digest_params(value: str) -> dict[str, str] | None:
    """The parameters of a Digest Authorization header (names lower-cased, quotes
    removed), or None when it is not one or does not parse: a quoted value is one value,
    so a `qop=auth` inside another parameter's quotes is not a qop."""
    if not DIGEST_RE.match(value):
        return None
    rest = value.lstrip()[len("digest"):]
    if not _AUTH_PARAMS_RE.fullmatch(rest):
        return None
    # The list parsed as a whole, so its params, found left to right, are the ones above.
    pairs = _AUTH_PARAM_RE.findall(rest)
    params = {name.lower(): text[1:-1] if text.startswith('"') else text
              for name, text in pairs}
    if len(params) != len(pairs):
        return None  # a second qop (or anything) is not for us to pick from
    return params


def digest_answers_with_qop(value: str | None) -> bool:
    """Whether a Digest Authorization header answers with qop=auth. Without qop (RFC 2069
    style) there is no nonce count, so Kamailio cannot tell a replayed answer from the
    first while its nonce lives."""
    params = digest_params(value) if value else None
    return params is not None and params.get("qop", "").lower() == "auth"


def bearer_challenge(realm: str, proxy: bool) -> str:
    """The Bearer challenge header sent beside the Digest one (RFC 8898 section 2.1)."""
    name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    return f'{name}: Bearer realm="{realm}"\r\n'


def decoy_password() -> str:
    """A password nobody holds: unknown users and expired credentials are checked against
    it, so they fail exactly as a wrong password does."""
    return secrets.token_urlsafe(32)


def registration_ttl(expires_header: str | None, contact_expires: str | None, *,
                     default: int = 3600, minimum: int = 30, maximum: int = 3600) -> int:
    """How long a REGISTER's binding lives, as Kamailio's registrar reckons it (the
    Contact's expires parameter first, then the Expires header, then the default, clamped
    to [minimum, maximum]); 0 is an unregistration."""
    for text in (contact_expires, expires_header):
        if text is not None and text.strip().isdigit():
            seconds = int(text.strip())
            return 0 if seconds == 0 else max(minimum, min(maximum, seconds))
    return default


def contact_expires(contact: str | None) -> str | None:
    """The `expires` parameter of a Contact header value (after the URI), if any."""
    if not contact or contact.strip() == "*":
        return None
    params = contact.split(">", 1)[1] if ">" in contact else contact.split(";", 1)[-1] \
        if ";" in contact else ""
    for part in params.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "expires":
            return value.strip()
    return None


def contact_uri(contact: str | None) -> str:
    """The URI of a Contact header value (inside <...> when there are brackets)."""
    if not contact:
        return ""
    if "<" in contact and ">" in contact:
        return contact.split("<", 1)[1].split(">", 1)[0].strip()
    return contact.split(";", 1)[0].strip()


def path_header(node_uri: str, received: tuple[str, int, str] | None) -> str:
    """A Path header (RFC 3327) naming this node; for an agent behind NAT, with the
    (ip, port, protocol) its REGISTER came from as the `received` parameter: another node
    sends the agent's calls to this node, which sends them to that address — the one the
    agent's NAT lets in. The received URI's own parameters are escaped, as they sit
    inside one."""
    if received is None:
        return f"Path: <{node_uri};lr>\r\n"
    source_ip, source_port, protocol = received
    host = f"[{source_ip}]" if ":" in source_ip else source_ip
    uri = f"sip:{host}:{int(source_port)}"
    if protocol and protocol.lower() != "udp":
        uri += f"%3Btransport%3D{protocol.lower()}"
    return f"Path: <{node_uri};lr;received={uri}>\r\n"
