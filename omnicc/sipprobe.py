"""A SIP OPTIONS ping over UDP: the health check of Kamailio and Asterisk."""

from __future__ import annotations

import secrets
import socket


def sip_options_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a SIP server at host:port answers an OPTIONS request with any response."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((host, 0))
        local_host, local_port = sock.getsockname()[:2]
        call_id = secrets.token_hex(8)
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local_host}:{local_port};"
            f"branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:omnicc-health@{local_host}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}@omnicc\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(request.encode(), (host, port))
            while True:
                data, _ = sock.recvfrom(65535)
                if data.startswith(b"SIP/2.0 ") and call_id.encode() in data:
                    return True
        except OSError:  # timeout, ICMP port unreachable
            return False
