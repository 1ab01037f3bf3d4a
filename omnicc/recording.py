"""Where recordings go, relative to Asterisk's monitor directory (pure: no I/O).

A queue that records (`record: always`) records each answered call into
{tenant}/{queue}/{YYYY-MM-DD, UTC}/{queued call id}.wav (agi/handlers/queue_call.py);
an inbound route that records records the call's bridged parts, whatever its destination,
into {tenant}/route-{did digits}/{YYYY-MM-DD, UTC}/{Asterisk uniqueid}.wav. Each
recording is announced by a call_recording event naming the file and its call.
"""

from __future__ import annotations

import re
import time

# Asterisk's uniqueid (1764180000.12, or a node's own prefix): it becomes a file name.
UNIQUEID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def utc_date(now_s: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now_s))


def route_recording_file(tenant: str, did: str, uniqueid: str, now_s: float) -> str | None:
    """The file of a recording route's call; None when the DID or uniqueid cannot be part
    of a file name (nothing recorded rather than a name made of what the caller sent)."""
    digits = did[1:] if did.startswith("+") else did
    if not digits.isdigit() or len(digits) > 20 or not UNIQUEID_RE.fullmatch(uniqueid):
        return None
    return f"{tenant}/route-{digits}/{utc_date(now_s)}/{uniqueid}.wav"
