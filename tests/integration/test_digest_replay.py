"""Digest replay: Kamailio challenges with qop=auth and remembers each nonce's count
(auth module nonce_count), so an authenticated REGISTER sent again as it was is refused,
while the phone's next request on the same nonce (a higher nc) is accepted.

SIPp cannot resend a request byte for byte, so this test speaks raw SIP over UDP."""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from .conftest import DOMAIN, RunningStack, free_ports, kamailio_beside

pytestmark = pytest.mark.integration

SOURCE_IP = "127.0.0.31"
EXTENSION = "1002"
PASSWORD = "it-pass-1002"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 (RFC 2617's digest)


class RawPhone:
    """Just enough of a SIP phone to register (digest or bearer credentials), from one
    address, refreshing as a phone does (same Call-ID, next CSeq): milliseconds a
    REGISTER, where a SIPp run takes a tenth of a second."""

    def __init__(self, stack: RunningStack, *, source_ip: str = SOURCE_IP,
                 extension: str = EXTENSION):
        self.server = ("127.0.0.1", stack.config.services.kamailio.port)  # may be changed
        self.extension = extension
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source_ip, 0))
        self.sock.settimeout(3)
        self.local = self.sock.getsockname()
        self.call_id = f"{secrets.token_hex(8)}@replay-test"
        self.cseq = 0

    def register(self, expires: int = 60, authorization: str = "") -> str:
        self.cseq += 1
        host, port = self.local
        message = (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{self.extension}@{DOMAIN}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{self.extension}@{DOMAIN}>\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} REGISTER\r\n"
            f"Contact: <sip:{self.extension}@{host}:{port}>\r\nExpires: {expires}\r\n"
            + (f"Authorization: {authorization}\r\n" if authorization else "")
            + "User-Agent: omnicc-replay-test\r\nContent-Length: 0\r\n\r\n"
        )
        return self.send(message)

    def send(self, message: str) -> str:
        self.sock.sendto(message.encode(), self.server)
        self.last_sent = message
        while True:
            data = self.sock.recv(65535).decode(errors="replace")
            if not data.startswith("SIP/2.0 1"):  # skip provisional replies
                return data

    def close(self) -> None:
        self.sock.close()


def status(reply: str) -> int:
    return int(reply.split(" ", 2)[1])


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def challenge_params(challenge_reply: str) -> dict[str, str]:
    header = next(line for line in challenge_reply.split("\r\n")
                  if line.lower().startswith("www-authenticate: digest"))
    return dict(re.findall(r'(\w+)="?([^",]+)"?', header.split(" ", 2)[2]))


def digest_authorization(challenge_reply: str, nc: int, cnonce: str,
                         algorithm: str = "MD5") -> str:
    params = challenge_params(challenge_reply)
    assert "auth" in params.get("qop", "").split(","), params
    realm, nonce = params["realm"], params["nonce"]
    digest = {"MD5": md5, "SHA-256": sha256}[algorithm]
    uri = f"sip:{DOMAIN}"
    nc_text = f"{nc:08x}"
    ha1 = digest(f"{EXTENSION}:{realm}:{PASSWORD}")
    ha2 = digest(f"REGISTER:{uri}")
    response = digest(f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{EXTENSION}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc_text}, '
            f'cnonce="{cnonce}"')


def test_a_replayed_digest_register_is_refused(running_stack: RunningStack) -> None:
    phone = RawPhone(running_stack)
    try:
        challenge = phone.register()
        assert status(challenge) == 401, challenge
        cnonce = secrets.token_hex(8)
        assert status(phone.register(authorization=digest_authorization(challenge, 1, cnonce))) \
            == 200
        # The same request again, as an eavesdropper would resend it (a new transaction,
        # the same credentials): refused.
        replay = phone.last_sent.replace(";branch=z9hG4bK", ";branch=z9hG4bKreplay", 1)
        replayed = phone.send(replay)
        assert status(replayed) == 401, replayed
        # The phone itself goes on with the same nonce and the next count: accepted.
        time.sleep(0.1)
        assert status(phone.register(authorization=digest_authorization(challenge, 2, cnonce))) \
            == 200
        assert status(phone.register(
            expires=0, authorization=digest_authorization(challenge, 3, cnonce))) == 200
    finally:
        phone.close()


def test_a_digest_answer_without_qop_is_refused(running_stack: RunningStack) -> None:
    """Answered RFC 2069 style (no qop, no nonce count), a right password is still refused:
    such an answer could be replayed while its nonce lives."""
    phone = RawPhone(running_stack)
    try:
        challenge = phone.register()
        assert status(challenge) == 401, challenge
        params = challenge_params(challenge)
        uri = f"sip:{DOMAIN}"
        ha1 = md5(f"{EXTENSION}:{params['realm']}:{PASSWORD}")
        response = md5(f"{ha1}:{params['nonce']}:{md5(f'REGISTER:{uri}')}")
        answer = (f'Digest username="{EXTENSION}", realm="{params["realm"]}", '
                  f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", '
                  'algorithm=MD5')
        refused = phone.register(authorization=answer)
        assert status(refused) == 401, refused
        # The same password with qop=auth on the new challenge: let in.
        assert status(phone.register(
            authorization=digest_authorization(refused, 1, secrets.token_hex(8)))) == 200
        assert status(phone.register(
            expires=0, authorization=digest_authorization(refused, 2, "x"))) == 200
    finally:
        phone.close()


@pytest.fixture
def sha256_kamailio(running_stack: RunningStack) -> Iterator[tuple[str, int]]:
    """Another Kamailio of the same deployment with auth.digest.algorithm SHA-256, on a
    port of its own."""
    (port,) = free_ports(1)
    text = running_stack.stack.config_path.read_text()
    text = text.replace("node: it-main", "node: it-sha256")
    text = re.sub(r"kamailio_nodes:\n(  - .*\n)+", "", text)  # not a DMQ peer
    text = re.sub(r"kamailio: \{port: \d+\}", f"kamailio: {{port: {port}}}", text)
    with kamailio_beside(running_stack, "sha256", text + SHA256_AUTH):
        yield ("127.0.0.1", port)


SHA256_AUTH = "auth:\n  digest:\n    algorithm: SHA-256\n"


def test_sha256_digest_when_the_config_asks_for_it(
    running_stack: RunningStack, sha256_kamailio: tuple[str, int]
) -> None:
    phone = RawPhone(running_stack)
    phone.server = sha256_kamailio
    try:
        challenge = phone.register()
        assert status(challenge) == 401, challenge
        assert challenge_params(challenge).get("algorithm") == "SHA-256", challenge
        # An MD5 answer to it is a wrong answer ...
        refused = phone.register(authorization=digest_authorization(challenge, 1, "c1"))
        assert status(refused) == 401, refused
        # ... the SHA-256 one (RFC 8760) lets the phone in.
        assert status(phone.register(authorization=digest_authorization(
            refused, 1, "c2", algorithm="SHA-256"))) == 200
        assert status(phone.register(expires=0, authorization=digest_authorization(
            refused, 2, "c2", algorithm="SHA-256"))) == 200
    finally:
        phone.close()
