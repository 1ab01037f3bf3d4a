"""The FastAGI server's health check: a real AGI session to its `health` script."""

from __future__ import annotations

import socket


def agi_health_check(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if the server runs the `health` script and sets OMNICC_STATUS to OK."""
    env = (
        "agi_network: yes\n"
        f"agi_network_script: health\nagi_request: agi://{host}:{port}/health\n"
        "agi_channel: omnicc/health\nagi_uniqueid: health\n\n"
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(env.encode())
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            ok = buf.startswith(b"SET VARIABLE") and b"OMNICC_STATUS" in buf and b"OK" in buf
            sock.sendall(b"200 result=1\n")
            return ok
    except OSError:
        return False
