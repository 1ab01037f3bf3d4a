"""Kamailio's control interface as omnicc's CLI uses it: JSON-RPC over the FIFO the
jsonrpcs module reads (kamailio.cfg.j2 puts it in the node's run directory).

One request per call: the reply comes back on a FIFO of our own, made in jsonrpcs'
fifo_reply_dir (its default, /tmp/, as kamctl expects too) and named in the request's
``reply_name``.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import time
from pathlib import Path
from typing import Any

FIFO_NAME = "kamailio_rpc.fifo"
# Where a Kamailio not started by `omnicc up` has it (kamailio.cfg.j2 without a run dir).
PACKAGED_FIFO = Path("/run/kamailio") / FIFO_NAME
REPLY_DIR = Path("/tmp")


class KamailioRpcError(Exception):
    """Kamailio could not be asked, or answered with an error."""


def fifo_path(run_dir: Path) -> Path:
    return Path(run_dir) / FIFO_NAME


def call(fifo: Path, method: str, *params: Any, timeout: float = 5.0,
         reply_dir: Path = REPLY_DIR) -> Any:
    """Run one RPC command; its result, or KamailioRpcError."""
    fifo = Path(fifo)
    try:
        present = fifo.exists()
    except OSError as exc:  # a directory this user may not enter
        raise KamailioRpcError(f"cannot look for {fifo}: {exc}") from None
    if not present:
        raise KamailioRpcError(f"no Kamailio control FIFO at {fifo} (is Kamailio running?)")
    reply_name = f"omnicc-rpc-{os.getpid()}-{secrets.token_hex(4)}"
    reply = Path(reply_dir) / reply_name
    os.mkfifo(reply)
    # Kamailio may run as another user (kamailio): it must be able to write the answer.
    os.chmod(reply, 0o622)
    try:
        # Opened before the request is written, non-blocking, so a Kamailio that never
        # answers cannot hang the caller.
        reader = os.open(reply, os.O_RDONLY | os.O_NONBLOCK)
        try:
            request = {"jsonrpc": "2.0", "method": method, "params": list(params),
                       "reply_name": reply_name, "id": 1}
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise KamailioRpcError(f"cannot write to {fifo}: {exc}") from None
            try:
                os.write(writer, (json.dumps(request) + "\n").encode())
            finally:
                os.close(writer)
            return _result(_read_reply(reader, timeout), method)
        finally:
            os.close(reader)
    finally:
        reply.unlink(missing_ok=True)


def dmq_peer_active(fifo: Path) -> bool:
    """Whether this Kamailio's DMQ lists another node as active (replication reaches it)."""
    try:
        nodes = call(fifo, "dmq.list_nodes")
    except KamailioRpcError:
        return False
    return isinstance(nodes, list) and any(
        isinstance(node, dict) and not node.get("local") and node.get("status") == "active"
        for node in nodes)


def is_missing_key(error: KamailioRpcError) -> bool:
    """htable.get / htable.delete of a key the table does not hold (the wording varies)."""
    text = str(error).lower()
    return "doesn't exist" in text or "not found" in text


def _read_reply(reader: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise KamailioRpcError(f"no answer from Kamailio within {timeout:g} s")
        ready, _, _ = select.select([reader], [], [], left)
        if not ready:
            continue
        chunk = os.read(reader, 65536)
        if chunk:
            data += chunk
            try:
                json.loads(data)
                return data
            except ValueError:
                continue  # more to come
        elif data:
            return data
        else:
            time.sleep(0.01)  # no writer yet: Kamailio has not opened the reply FIFO


def _result(data: bytes, method: str) -> Any:
    try:
        answer = json.loads(data)
    except ValueError:
        raise KamailioRpcError(f"{method}: unreadable answer {data[:200]!r}") from None
    if "error" in answer:
        error = answer["error"]
        raise KamailioRpcError(f"{method}: {error.get('message', error)}")
    return answer.get("result")
