"""Calls a carrier sends to the contact a registration trunk registered: which DID.

Asterisk registers to the carrier (pjsip.conf type=registration, line=yes); the carrier
sends its calls straight to that contact, to Asterisk, not through Kamailio. The endpoint
they reach is found by the registration's line token and names the tenant and trunk
(pjsip.conf.j2); the number called comes from the request, so it is checked here exactly
as a DID from Kamailio's path is: digits with an optional leading '+' (config DID_RE),
nothing else ever reaches the dialplan.

Carriers put the registered contact's user in the Request-URI and the number called in
the To header; the trunk's `registration.did_from` says which one to read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from omnicc.config import DID_RE, Trunk


class RegisteredCallRefused(Exception):
    """A call to a registration trunk's contact that omnicc does not route; the message
    says why (without the request's own text when that is not a number)."""


def uri_user(uri: str) -> str:
    """The user part of a SIP, SIPS or tel URI as Asterisk gives it (``sip:+155501@host``,
    ``<sip:5550100@h;user=phone>``, ``tel:+155501;phone-context=x``), percent-decoded;
    "" when it has none."""
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips", "tel"):
        return ""
    if scheme.lower() == "tel":
        user = rest
    else:
        user, at, _host = rest.partition("@")
        if not at:
            return ""
    # User parameters (;phone-context=..., ;isub=...) are not part of the number.
    return unquote(user.split(";", 1)[0])


def registered_call_did(trunk: Trunk, request_uri: str, to_uri: str) -> str:
    """The DID of a call to `trunk`'s registered contact: the user of the To URI or of the
    Request-URI, as the trunk's registration says; RegisteredCallRefused when the trunk has
    no registration or that user is not a DID."""
    if trunk.registration is None:
        raise RegisteredCallRefused(f"trunk {trunk.name} has no registration")
    if trunk.registration.did_from == "to":
        did, where = uri_user(to_uri), "the To header"
    else:
        did, where = uri_user(request_uri), "the Request-URI"
    if not DID_RE.fullmatch(did):
        shown = repr(did) if did.isprintable() and len(did) <= 40 else f"{len(did)} characters"
        raise RegisteredCallRefused(
            f"{where} holds no DID ({shown}): digits with an optional leading '+', 1 to 20")
    return did


@dataclass(frozen=True)
class RegistrationState:
    """One line of Asterisk's `pjsip show registrations`."""

    name: str    # the registration's section: trunk.TENANT.TRUNK
    server: str  # its server_uri
    status: str  # Registered, Unregistered, Rejected, Stopped, ...


# " trunk.acme.carrier-b/sip:203.0.113.20:5060   trunk.acme.carrier-b   Registered  (exp. 589s)"
_REGISTRATION_LINE = re.compile(r"^\s*(\S+?)/(sips?:\S+)\s+(?:\S+\s+)?([A-Z][A-Za-z]+)(?:\s|$)")


def parse_registrations(text: str) -> list[RegistrationState]:
    """The registrations `pjsip show registrations` lists (header and footer skipped)."""
    found = []
    for line in text.splitlines():
        match = _REGISTRATION_LINE.match(line)
        if match and not line.lstrip().startswith("<"):
            found.append(RegistrationState(*match.groups()))
    return found
