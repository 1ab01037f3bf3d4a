"""A transferring agent's phone in raw SIP over UDP, for tests/integration/test_transfers.py.

SIPp plays the caller and the transfer target; the transferring agent holds two dialogs
at once (the caller's call and the consultation call) and sends REFER in the first with
the second's identifiers in Replaces, which SIPp's single-dialog scenarios cannot build
from what they received. So this phone does just that much, and no more: digest
registration and INVITE, answering a call, REFER, and answering NOTIFY and BYE.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import quote

SDP = ("v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 (RFC 2617's digest)


@dataclass
class SipMessage:
    first_line: str
    headers: list[tuple[str, str]]
    body: str

    @classmethod
    def parse(cls, data: str) -> SipMessage:
        head, _, body = data.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return cls(lines[0], headers, body)

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def get(self, name: str) -> str:
        found = self.all(name)
        return found[0] if found else ""

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ", 2)[1]) if self.is_response else 0

    @property
    def method(self) -> str:
        return self.get("cseq").split()[-1] if self.is_response else self.first_line.split()[0]


def uri_in(header: str) -> str:
    """The URI of a From/To/Contact/Record-Route value."""
    match = re.search(r"<([^>]*)>", header)
    return match.group(1) if match else header.split(";")[0].strip()


def tag_of(header: str) -> str:
    match = re.search(r";tag=([^;>\s]+)", header)
    return match.group(1) if match else ""


@dataclass
class Dialog:
    call_id: str
    local: str           # our From/To value, with our tag
    remote: str          # theirs, with their tag
    remote_target: str   # their Contact
    route_set: list[str] = field(default_factory=list)
    cseq: int = 1

    @property
    def local_tag(self) -> str:
        return tag_of(self.local)

    @property
    def remote_tag(self) -> str:
        return tag_of(self.remote)


class RawAgent:
    """An agent phone on 127.0.0.1 that registers through Kamailio with its digest."""

    def __init__(self, proxy: tuple[str, int], extension: str, password: str, domain: str):
        self.proxy = proxy
        self.extension = extension
        self.password = password
        self.domain = domain
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()
        self.received: list[SipMessage] = []
        self.sent: list[str] = []
        self.pending: list[SipMessage] = []  # received, not yet asked for
        self._nc = 0

    # ------------------------------------------------------------------ transport
    def send(self, message: str) -> None:
        self.sent.append(message)
        self.sock.sendto(message.encode(), self.proxy)

    def receive(self, want, timeout: float = 10.0) -> SipMessage:
        """The first message `want` accepts (in arrival order); requests that arrive meanwhile
        and are not wanted are answered as a phone would (NOTIFY, BYE: 200) and kept."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.pending:
                if want(message):
                    self.pending.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.extension}: nothing wanted in {timeout} s; got "
                                   f"{[m.first_line for m in self.received]}; last sent: "
                                   f"{self.sent[-3:]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                continue
            message = SipMessage.parse(data)
            self.received.append(message)
            if not message.is_response and message.method in ("NOTIFY", "BYE"):
                self.reply(message, 200, "OK")
            self.pending.append(message)

    def response_to(self, method: str, cseq: int, timeout: float = 10.0,
                    final: bool = True) -> SipMessage:
        return self.receive(lambda m: m.is_response and m.get("cseq") == f"{cseq} {method}"
                            and (m.status >= 200 or not final), timeout)

    def reply(self, request: SipMessage, code: int, reason: str, *, to_tag: str = "",
              extra: str = "", body: str = "") -> None:
        to = request.get("to")
        if to_tag and not tag_of(to):
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {via}" for via in request.all("via")]
        lines += [f"Record-Route: {rr}" for rr in request.all("record-route")]
        lines += [f"From: {request.get('from')}", f"To: {to}",
                  f"Call-ID: {request.get('call-id')}", f"CSeq: {request.get('cseq')}"]
        self.send("\r\n".join(lines) + "\r\n" + extra
                  + f"Content-Length: {len(body)}\r\n\r\n{body}")

    def _via(self) -> str:
        return f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport"

    @property
    def contact(self) -> str:
        return f"<sip:{self.extension}@{self.host}:{self.port}>"

    # ------------------------------------------------------------------ digest
    def _authorization(self, challenge: SipMessage, method: str, uri: str) -> str:
        header_name = "proxy-authenticate" if challenge.status == 407 else "www-authenticate"
        # Kamailio offers Bearer and Digest: this phone answers the Digest one.
        header = next(value for value in challenge.all(header_name)
                      if value.lower().startswith("digest "))
        params = dict(re.findall(r'(\w+)="?([^",]+)"?', header.split(" ", 1)[1]))
        self._nc += 1
        nc, cnonce = f"{self._nc:08x}", secrets.token_hex(8)
        ha1 = md5(f"{self.extension}:{params['realm']}:{self.password}")
        ha2 = md5(f"{method}:{uri}")
        response = md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        name = "Proxy-Authorization" if challenge.status == 407 else "Authorization"
        return (f'{name}: Digest username="{self.extension}", realm="{params["realm"]}", '
                f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", '
                f'algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"\r\n')

    # ------------------------------------------------------------------ requests
    def register(self, expires: int = 120) -> int:
        call_id = f"{secrets.token_hex(8)}@raw-agent"
        uri = f"sip:{self.domain}"
        auth = ""
        for cseq in (1, 2):
            self.send(
                f"REGISTER {uri} SIP/2.0\r\nVia: {self._via()}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:{self.extension}@{self.domain}>;tag={secrets.token_hex(4)}\r\n"
                f"To: <sip:{self.extension}@{self.domain}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} REGISTER\r\nContact: {self.contact}\r\nExpires: {expires}\r\n"
                f"{auth}Content-Length: 0\r\n\r\n")
            reply = self.response_to("REGISTER", cseq)
            if reply.status != 401:
                return reply.status
            auth = self._authorization(reply, "REGISTER", uri)
        return reply.status

    def answer(self, timeout: float = 15.0) -> Dialog:
        """Take the next INVITE: 200 OK with SDP; the dialog once the ACK came."""
        invite = self.receive(lambda m: not m.is_response and m.method == "INVITE", timeout)
        tag = secrets.token_hex(4)
        self.reply(invite, 200, "OK", to_tag=tag,
                   extra=f"Contact: {self.contact}\r\nContent-Type: application/sdp\r\n",
                   body=SDP.format(port=self.port + 2))
        self.receive(lambda m: not m.is_response and m.method == "ACK"
                     and m.get("call-id") == invite.get("call-id"))
        return Dialog(call_id=invite.get("call-id"), local=f"{invite.get('to')};tag={tag}",
                      remote=invite.get("from"), remote_target=uri_in(invite.get("contact")),
                      route_set=invite.all("record-route"))

    def call(self, extension: str, timeout: float = 20.0) -> Dialog:
        """INVITE `extension` through Kamailio, answering its digest challenge; the dialog
        once answered (200 OK, ACK sent)."""
        uri = f"sip:{extension}@{self.domain}"
        call_id = f"{secrets.token_hex(8)}@raw-agent"
        local = f"<sip:{self.extension}@{self.domain}>;tag={secrets.token_hex(4)}"
        auth = ""
        for cseq in (1, 2):
            via = self._via()
            body = SDP.format(port=self.port + 4)
            head = (f"Via: {via}\r\nMax-Forwards: 70\r\nFrom: {local}\r\nTo: <{uri}>\r\n"
                    f"Call-ID: {call_id}\r\n")
            self.send(f"INVITE {uri} SIP/2.0\r\n{head}CSeq: {cseq} INVITE\r\n"
                      f"Contact: {self.contact}\r\n{auth}Content-Type: application/sdp\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}")
            reply = self.response_to("INVITE", cseq, timeout)
            if reply.status in (401, 407):
                # The ACK of a non-2xx final response: the same transaction (branch).
                ack_head = head.replace(f"To: <{uri}>", "To: " + reply.get("to"))
                self.send(f"ACK {uri} SIP/2.0\r\n{ack_head}CSeq: {cseq} ACK\r\n"
                          "Content-Length: 0\r\n\r\n")
                auth = self._authorization(reply, "INVITE", uri)
                continue
            break
        if reply.status != 200:
            raise AssertionError(f"call to {extension}: {reply.first_line}")
        dialog = Dialog(call_id=call_id, local=local, remote=reply.get("to"),
                        remote_target=uri_in(reply.get("contact")),
                        route_set=list(reversed(reply.all("record-route"))), cseq=cseq)
        self._in_dialog(dialog, "ACK", cseq=cseq)
        return dialog

    def _in_dialog(self, dialog: Dialog, method: str, extra: str = "",
                   cseq: int | None = None) -> int:
        if cseq is None:
            dialog.cseq += 1
            cseq = dialog.cseq
        routes = "".join(f"Route: {route}\r\n" for route in dialog.route_set)
        self.send(f"{method} {dialog.remote_target} SIP/2.0\r\nVia: {self._via()}\r\n"
                  f"Max-Forwards: 70\r\n{routes}From: {dialog.local}\r\nTo: {dialog.remote}\r\n"
                  f"Call-ID: {dialog.call_id}\r\nCSeq: {cseq} {method}\r\n"
                  f"Contact: {self.contact}\r\n{extra}Content-Length: 0\r\n\r\n")
        return cseq

    def refer(self, dialog: Dialog, refer_to: str) -> SipMessage:
        """REFER in `dialog` (Refer-To: `refer_to`, a URI in angle brackets); the final
        response to it."""
        cseq = self._in_dialog(dialog, "REFER", extra=(
            f"Refer-To: {refer_to}\r\n"
            f"Referred-By: <sip:{self.extension}@{self.domain}>\r\n"))
        return self.response_to("REFER", cseq)

    def replaces(self, dialog: Dialog) -> str:
        """The Refer-To for an attended transfer to `dialog`'s far end: its URI with the
        dialog in Replaces (to-tag: the far end's, from-tag: ours; RFC 3891)."""
        value = (f"{dialog.call_id};to-tag={dialog.remote_tag};from-tag={dialog.local_tag}")
        return f"<{uri_in(dialog.remote)}?Replaces={quote(value, safe='')}>"

    def hang_up(self, dialog: Dialog) -> SipMessage:
        return self.response_to("BYE", self._in_dialog(dialog, "BYE"))

    def notifications(self, dialog: Dialog) -> list[str]:
        """The sipfrag status lines of the NOTIFYs received in `dialog`."""
        return [m.body.strip().split("\r\n")[0] for m in self.received
                if not m.is_response and m.method == "NOTIFY"
                and m.get("call-id") == dialog.call_id]

    def wait_for_outcome(self, dialog: Dialog, timeout: float = 15.0) -> str:
        """The final sipfrag (>= 200) Asterisk reports in `dialog`'s REFER subscription."""
        def final(message: SipMessage) -> bool:
            return (not message.is_response and message.method == "NOTIFY"
                    and message.get("call-id") == dialog.call_id
                    and re.match(r"SIP/2.0 [2-6]", message.body.strip()) is not None)
        return self.receive(final, timeout).body.strip().split("\r\n")[0]

    def finish(self, dialog: Dialog) -> None:
        """The transferor leaves the call (RFC 5589): BYE, unless Asterisk sent one."""
        if not self.byes(dialog):
            self.hang_up(dialog)

    def byes(self, dialog: Dialog) -> int:
        return sum(1 for m in self.received if not m.is_response and m.method == "BYE"
                   and m.get("call-id") == dialog.call_id)

    def wait_for_bye(self, dialog: Dialog, timeout: float = 10.0) -> None:
        if not self.byes(dialog):
            self.receive(lambda m: not m.is_response and m.method == "BYE"
                         and m.get("call-id") == dialog.call_id, timeout)

    def close(self) -> None:
        self.sock.close()
