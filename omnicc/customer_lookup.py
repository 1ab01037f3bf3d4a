"""Customer identification by an HTTP lookup of the caller's number.

An inbound route with `lookup: {url, timeout_ms, fallback}` asks an HTTP service, before
routing, who is calling: GET {url}?caller={number, URL-encoded} (plain HTTP/1.0, so the
answer is not chunked; the service is on the operator's own network). It answers 200 with
JSON {"customer_id": "...", "destination": "queue:vip"} (destination optional: the
route's own). The destination must be one the tenant knows; the customer id is short and
plain. Anything else (timeout, refused connection, another status, bad JSON, an unknown
destination) is a LookupFailed: the call goes to the lookup's fallback.

Parsing and checking are pure; `fetch` is the only I/O (asyncio streams, no client library).

The other way to identify a customer, by DTMF (a route's `account_entry`), only needs
`account_id`: what the caller keyed is an account number when it is digits only and not
longer than the route allows.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from omnicc.config import Destination, Tenant

CUSTOMER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_ANSWER_BYTES = 16384


class LookupUrlError(ValueError):
    pass


class LookupFailed(Exception):
    """Why a lookup gave no usable answer (logged, and in the event)."""


@dataclass(frozen=True)
class LookupUrl:
    host: str
    port: int
    path: str   # with its query, if any


@dataclass(frozen=True)
class LookupAnswer:
    customer_id: str
    destination: Destination | None  # None: the route's own


def parse_lookup_url(url: str) -> LookupUrl:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise LookupUrlError("a lookup url is http://HOST[:PORT]/PATH")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise LookupUrlError("a lookup url names a host, without credentials or fragment")
    if any(ch in url for ch in " \r\n\t\0"):
        raise LookupUrlError("a lookup url has no spaces or control characters")
    try:
        port = parts.port or 80
    except ValueError:
        raise LookupUrlError("a lookup url's port is a number up to 65535") from None
    path = parts.path or "/"
    return LookupUrl(parts.hostname, port, f"{path}?{parts.query}" if parts.query else path)


def request_bytes(url: LookupUrl, caller: str) -> bytes:
    """The GET request for `caller`, percent-encoded whatever it holds."""
    sep = "&" if "?" in url.path else "?"
    target = f"{url.path}{sep}caller={quote(caller, safe='')}"
    host = url.host if url.port == 80 else f"{url.host}:{url.port}"
    return (f"GET {target} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n"
            "User-Agent: omnicc\r\n\r\n").encode("ascii")


def parse_response(raw: bytes) -> bytes:
    """The body of a 200 answer; LookupFailed for anything else."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise LookupFailed("no complete HTTP answer")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise LookupFailed("not an HTTP answer")
    if status[1] != b"200":
        raise LookupFailed(f"HTTP status {status[1].decode('ascii', 'replace')}")
    return body


def known_destination(tenant: Tenant, dest: Destination) -> bool:
    if dest.kind == "agent":
        return tenant.agent(dest.target) is not None
    if dest.kind == "queue":
        return tenant.queue(dest.target) is not None
    if dest.kind == "ivr":
        return tenant.ivr(dest.target) is not None
    if dest.kind == "time_condition":
        return tenant.time_condition(dest.target) is not None
    if dest.kind == "context":
        return dest.target in tenant.dialplan_contexts
    return dest.kind in ("hangup", "busy")


def parse_answer(tenant: Tenant, body: bytes) -> LookupAnswer:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LookupFailed("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise LookupFailed("the answer is not a JSON object")
    customer = data.get("customer_id")
    if not isinstance(customer, str) or not CUSTOMER_ID_RE.fullmatch(customer):
        raise LookupFailed("customer_id is missing or not a plain id")
    text = data.get("destination")
    if text is None:
        return LookupAnswer(customer, None)
    if not isinstance(text, str):
        raise LookupFailed("destination is not a string")
    try:
        dest = Destination.parse(text)
    except ValueError:
        raise LookupFailed(f"destination {text[:64]!r} is not a destination") from None
    if not known_destination(tenant, dest):
        raise LookupFailed(f"destination {text[:64]!r} is not one of tenant {tenant.name}")
    return LookupAnswer(customer, dest)


async def fetch(url: LookupUrl, caller: str, timeout_s: float) -> bytes:
    """The raw answer to the GET, read to its end; LookupFailed on timeout or error."""
    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(request_bytes(url, caller))
            await writer.drain()
            raw = await reader.read(MAX_ANSWER_BYTES + 1)
            while raw and len(raw) <= MAX_ANSWER_BYTES:
                more = await reader.read(MAX_ANSWER_BYTES + 1 - len(raw))
                if not more:
                    break
                raw += more
            if len(raw) > MAX_ANSWER_BYTES:
                raise LookupFailed("the answer is too long")
            return raw
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout_s)
    except TimeoutError:
        raise LookupFailed(f"no answer within {int(timeout_s * 1000)} ms") from None
    except OSError as exc:
        raise LookupFailed(f"cannot reach the lookup service: {exc}") from None


async def look_up(tenant: Tenant, url: str, caller: str, timeout_ms: int) -> LookupAnswer:
    raw = await fetch(parse_lookup_url(url), caller, timeout_ms / 1000)
    return parse_answer(tenant, parse_response(raw))


def account_id(entry: str, max_digits: int) -> str | None:
    """The account number the caller keyed, or None: nothing keyed, anything but digits
    (Read() also returns '*'), or more than max_digits."""
    if not entry or len(entry) > max_digits or not all("0" <= ch <= "9" for ch in entry):
        return None
    return entry
