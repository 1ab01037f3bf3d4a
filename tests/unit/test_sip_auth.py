"""omnicc/sip_auth.py: which credentials an Authorization header carries, the Bearer
challenge, and the decoy password."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnicc.sip_auth import (
    MAX_CREDENTIAL_BYTES,
    Credentials,
    bearer_challenge,
    decoy_password,
    digest_answers_with_qop,
    parse_authorization,
)

DIGEST = ('Digest username="1001", realm="default.omnicc.test", nonce="abc", '
          'uri="sip:default.omnicc.test", response="0123456789abcdef"')


@pytest.mark.parametrize(("header", "expected"), [
    (None, Credentials("none")),
    ("", Credentials("none")),
    ("Bearer abc.def.ghi", Credentials("bearer", "abc.def.ghi")),
    ("bearer abc.def.ghi", Credentials("bearer", "abc.def.ghi")),
    ("BEARER abc.def.ghi", Credentials("bearer", "abc.def.ghi")),
    ("  Bearer \t abc.def.ghi  ", Credentials("bearer", "abc.def.ghi")),
    ("Bearer", Credentials("malformed")),
    ("Bearer ", Credentials("malformed")),
    ("Bearer a b", Credentials("malformed")),
    ("Bearerabc.def.ghi", Credentials("malformed")),
    (DIGEST, Credentials("digest")),
    (DIGEST.replace("Digest", "digest"), Credentials("digest")),
    ("Digest", Credentials("malformed")),
    ("Basic MTAwMTpzZWNyZXQ=", Credentials("malformed")),
    ("NTLM TlRMTVNTUAABAAAA", Credentials("malformed")),
    ("abc.def.ghi", Credentials("malformed")),
    ("Bearer " + "A" * MAX_CREDENTIAL_BYTES, Credentials("malformed")),
    ("Bearer " + "A" * 65536, Credentials("malformed")),
    ("Digest " + "x" * 65536, Credentials("malformed")),
], ids=["none", "empty", "bearer", "bearer-lower-case", "bearer-upper-case", "whitespace",
        "bearer-alone", "bearer-space", "bearer-two-words", "bearer-glued", "digest",
        "digest-lower-case", "digest-alone", "basic", "ntlm", "bare-token",
        "bearer-over-limit", "bearer-64-kb", "digest-64-kb"])
def test_parse_authorization(header: str | None, expected: Credentials) -> None:
    assert parse_authorization(header) == expected


def test_a_credential_of_exactly_the_limit_is_parsed() -> None:
    token = "A" * (MAX_CREDENTIAL_BYTES - len("Bearer "))
    assert parse_authorization("Bearer " + token) == Credentials("bearer", token)


@given(st.text(max_size=300))
def test_any_header_text_is_classified_never_raises(header: str) -> None:
    credentials = parse_authorization(header)
    assert credentials.scheme in ("none", "bearer", "digest", "malformed")
    if credentials.scheme == "bearer":
        assert credentials.token and not any(c.isspace() for c in credentials.token)
    else:
        assert credentials.token == ""


@pytest.mark.parametrize(("header", "answers_with_qop"), [
    ('Digest username="1001", nonce="n", response="r", qop=auth, nc=00000001, cnonce="c"',
     True),
    ('Digest username="1001",qop="auth",nc=00000001', True),  # quoted by some phones
    ('digest  QOP=Auth, nc=1', True),
    ('Digest username="1001", nonce="n", response="r"', False),  # RFC 2069 style
    ('Digest username="1001", qop=auth-int, nc=1', False),
    # Inside another parameter's quotes it is that parameter's text, not a qop.
    ('Digest username="1001", opaque="x, qop=auth", response="r"', False),
    ('Digest username="a\\"b, qop=auth"', False),
    ('Digest qop=auth, qop=auth', False),  # which one? neither
    ('Digest username="1001, qop=auth', False),  # an unclosed quote does not parse
    ("Bearer qop=auth", False),
    ("", False),
    (None, False),
])
def test_a_digest_answer_has_qop_auth_only_as_a_parameter_of_its_own(
    header: str | None, answers_with_qop: bool
) -> None:
    assert digest_answers_with_qop(header) is answers_with_qop


@given(st.text(max_size=300))
def test_any_header_text_is_judged_for_qop_never_raises(header: str) -> None:
    assert digest_answers_with_qop("Digest " + header) in (True, False)


@pytest.mark.parametrize(("proxy", "expected"), [
    (False, 'WWW-Authenticate: Bearer realm="default.omnicc.test"\r\n'),
    (True, 'Proxy-Authenticate: Bearer realm="default.omnicc.test"\r\n'),
])
def test_bearer_challenge_header(proxy: bool, expected: str) -> None:
    assert bearer_challenge("default.omnicc.test", proxy=proxy) == expected


def test_decoy_passwords_are_long_and_never_repeat() -> None:
    decoys = {decoy_password() for _ in range(100)}
    assert len(decoys) == 100
    assert all(len(d) >= 32 for d in decoys)


@pytest.mark.parametrize(("contact", "expires"), [
    ("<sip:1001@198.51.100.7:5062>;expires=120", "120"),
    ("<sip:1001@198.51.100.7:5062;transport=udp>;q=0.5;Expires=0", "0"),
    ("<sip:1001@198.51.100.7:5062;expires=99>", None),  # a URI parameter, not the header's
    ("<sip:1001@198.51.100.7:5062>", None),
    ("sip:1001@198.51.100.7:5062;expires=60", "60"),
    ("*", None),
    (None, None),
])
def test_contact_expires(contact: str | None, expires: str | None) -> None:
    from omnicc.sip_auth import contact_expires

    assert contact_expires(contact) == expires


def test_a_path_header_names_this_node_and_the_address_the_register_came_from() -> None:
    from omnicc.sip_auth import path_header

    assert path_header("sip:10.0.0.1:5060", None) == "Path: <sip:10.0.0.1:5060;lr>\r\n"
    assert path_header("sip:10.0.0.1:5060", ("203.0.113.7", 41000, "udp")) == \
        "Path: <sip:10.0.0.1:5060;lr;received=sip:203.0.113.7:41000>\r\n"
    # Over TCP the received URI keeps its transport, escaped inside the parameter.
    assert path_header("sip:10.0.0.1:5060", ("203.0.113.7", 41000, "tcp")) == \
        "Path: <sip:10.0.0.1:5060;lr;received=sip:203.0.113.7:41000%3Btransport%3Dtcp>\r\n"
    assert path_header("sip:10.0.0.1:5060", ("2001:db8::7", 5062, "udp")) == \
        "Path: <sip:10.0.0.1:5060;lr;received=sip:[2001:db8::7]:5062>\r\n"
