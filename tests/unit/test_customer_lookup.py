"""Customer identification by an HTTP lookup (omnicc/customer_lookup.py): the config key,
the URL and request (the caller's number percent-encoded, never raw), the strict reading
of the answer, and the inbound_route handler over the fake Asterisk against a tiny local
HTTP server that answers good JSON, slowly, garbage, an unknown destination or 500; and
identification by DTMF entry (a route's account_entry, the customer_entry handler)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from agi.handlers.customer_entry import CustomerEntry
from agi.handlers.inbound_route import InboundRoute
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.config import ConfigError, OmniccConfig, parse_config
from omnicc.customer_lookup import (
    LookupFailed,
    LookupUrlError,
    account_id,
    parse_answer,
    parse_lookup_url,
    parse_response,
    request_bytes,
)
from omnicc.events import EventLog

CONFIG = """\
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {{extension: "1001", name: Alice, password: "pass-1001-long"}}
    dialplan_contexts: [custom]
    inbound_routes:
{routes}
    queues:
      - {{name: sales, members: [{{agent: "1001"}}]}}
      - {{name: vip, members: [{{agent: "1001"}}]}}
"""

ROUTE = ('      - {{did: "{did}", destination: "queue:sales", priority: 3, lookup: '
         '{{url: "http://127.0.0.1:{port}/{path}", timeout_ms: 300, fallback: "agent:1001"}}}}')

PATHS = {"5550100": "good", "5550101": "slow", "5550102": "garbage", "5550103": "unknown",
         "5550104": "error", "5550105": "nodest", "5550106": "closed"}


class LookupService(BaseHTTPRequestHandler):
    seen: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        LookupService.seen.append(parse_qs(parts.query))
        name = parts.path.strip("/")
        if name == "slow":
            time.sleep(1.0)
            self._send(200, {"customer_id": "late"})
        elif name == "garbage":
            self._send_raw(200, b"<html>not json</html>")
        elif name == "unknown":
            self._send(200, {"customer_id": "c-7", "destination": "queue:nosuch"})
        elif name == "error":
            self._send(500, {"error": "down"})
        elif name == "nodest":
            self._send(200, {"customer_id": "c-8"})
        elif name == "closed":
            self.connection.close()
        else:
            self._send(200, {"customer_id": "c-42", "destination": "queue:vip"})

    def _send(self, status: int, data: Any) -> None:
        self._send_raw(status, json.dumps(data).encode())

    def _send_raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the slow answer: omnicc stopped waiting
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def service_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), LookupService)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def config(service_port: int) -> OmniccConfig:
    routes = "\n".join(ROUTE.format(did=did, port=service_port, path=path)
                       for did, path in PATHS.items())
    return parse_config(CONFIG.format(routes=routes))


class MemoryEventLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def append(self, tenant: str, event: str, **fields: Any) -> str:
        self.events.append((tenant, event, fields))
        return f"{len(self.events)}-0"


def route(config: OmniccConfig, did: str,
          caller: str = "5551234") -> tuple[FakeCallRecord, MemoryEventLog]:
    log = MemoryEventLog()
    record = run_async(drive_session(InboundRoute(config, cast(EventLog, log)),
                                     script="inbound_route",
                                     params={"tenant": "acme", "did": did},
                                     env={"agi_callerid": caller}, command_timeout=3.0))
    return record, log


# ---------------------------------------------------------------------------- handler


def test_a_known_customer_goes_where_the_service_says(config: OmniccConfig) -> None:
    record, log = route(config, "5550100")
    assert record.variables["OMNICC_CUSTOMER"] == "c-42"
    assert (record.variables["OMNICC_DEST"], record.variables["OMNICC_QUEUE"]) == ("queue", "vip")
    assert record.variables["OMNICC_PRIORITY"] == "3"
    assert record.variables["OMNICC_STATUS"] == "OK"
    names = [e[1] for e in log.events]
    assert names == ["customer_identified", "call_routed"]
    assert (log.events[0][2]["customer_id"], log.events[0][2]["destination"]) == (
        "c-42", "queue:vip")


def test_an_answer_without_destination_keeps_the_routes(config: OmniccConfig) -> None:
    record, log = route(config, "5550105")
    assert record.variables["OMNICC_CUSTOMER"] == "c-8"
    assert record.variables["OMNICC_QUEUE"] == "sales"


def test_the_callers_number_is_percent_encoded(config: OmniccConfig) -> None:
    LookupService.seen.clear()
    record, _ = route(config, "5550100", caller="+1 555&x=1#")
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert LookupService.seen == [{"caller": ["+1 555&x=1#"]}]


@pytest.mark.parametrize(("did", "reason"), [
    ("5550101", "no answer within 300 ms"),
    ("5550102", "the answer is not JSON"),
    ("5550103", "destination 'queue:nosuch' is not one of tenant acme"),
    ("5550104", "HTTP status 500"),
    ("5550106", "no complete HTTP answer"),
])
def test_a_failed_lookup_goes_to_the_fallback(config: OmniccConfig, did: str,
                                              reason: str) -> None:
    started = time.monotonic()
    record, log = route(config, did)
    assert time.monotonic() - started < 0.9  # the slow service is not waited for
    assert "OMNICC_CUSTOMER" not in record.variables
    assert (record.variables["OMNICC_DEST"], record.variables["OMNICC_AGENT"]) == (
        "agent", "1001")
    (failed,) = [e[2] for e in log.events if e[1] == "customer_lookup_failed"]
    assert failed["reason"] == reason
    assert failed["destination"] == "agent:1001"
    assert [e[1] for e in log.events][-1] == "call_routed"


def test_an_unreachable_service_goes_to_the_fallback() -> None:
    routes = ROUTE.format(did="5550100", port=1, path="x")
    config = parse_config(CONFIG.format(routes=routes))
    record, log = route(config, "5550100")
    assert record.variables["OMNICC_DEST"] == "agent"
    (failed,) = [e[2] for e in log.events if e[1] == "customer_lookup_failed"]
    assert failed["reason"].startswith("cannot reach the lookup service")


# ---------------------------------------------------------------------------- pure parts


def test_the_request_encodes_the_caller_and_keeps_the_urls_query() -> None:
    url = parse_lookup_url("http://crm.example:8080/who?key=abc")
    assert (url.host, url.port, url.path) == ("crm.example", 8080, "/who?key=abc")
    assert request_bytes(url, "55 5\r\nX: y").startswith(
        b"GET /who?key=abc&caller=55%205%0D%0AX%3A%20y HTTP/1.0\r\nHost: crm.example:8080\r\n")


@pytest.mark.parametrize("url", ["https://crm.example/", "ftp://x/", "http:///path",
                                 "http://u:p@crm.example/", "http://crm.example/#f",
                                 "http://crm.example:99999/", "http://crm.example/a b"])
def test_bad_lookup_urls_are_refused(url: str) -> None:
    with pytest.raises(LookupUrlError):
        parse_lookup_url(url)


def test_the_config_refuses_a_bad_url_and_an_unknown_fallback_with_their_keys() -> None:
    text = CONFIG.format(routes=ROUTE.format(did="5550100", port=80, path="x"))
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace("http://127.0.0.1:80/x", "https://crm.example/x"))
    assert any("inbound_routes[0].lookup.url: a lookup url is http://" in p
               for p in caught.value.problems), caught.value.problems
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace('fallback: "agent:1001"', 'fallback: "queue:nosuch"'))
    assert any("inbound_routes[0].lookup.fallback: the lookup fallback of inbound route "
               "5550100 goes to queue nosuch" in p for p in caught.value.problems), \
        caught.value.problems
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace("timeout_ms: 300", "timeout_ms: 60000"))
    assert any("lookup.timeout_ms" in p for p in caught.value.problems)


@pytest.mark.parametrize(("body", "reason"), [
    (b"[1]", "not a JSON object"),
    (b'{"destination": "queue:vip"}', "customer_id is missing"),
    (b'{"customer_id": "a b"}', "customer_id is missing or not a plain id"),
    (b'{"customer_id": "' + b"x" * 65 + b'"}', "customer_id is missing"),
    (b'{"customer_id": 7}', "customer_id is missing"),
    (b'{"customer_id": "c", "destination": 3}', "destination is not a string"),
    (b'{"customer_id": "c", "destination": "queue:"}', "is not a destination"),
    (b'{"customer_id": "c", "destination": "agent:1999"}', "is not one of tenant"),
    (b'{"customer_id": "c", "destination": "context:other"}', "is not one of tenant"),
    (b"\xff\xfe", "not JSON"),
])
def test_answers_are_read_strictly(config: OmniccConfig, body: bytes, reason: str) -> None:
    with pytest.raises(LookupFailed, match=reason):
        parse_answer(config.tenants[0], body)


def test_known_destinations_of_every_kind_are_taken(config: OmniccConfig) -> None:
    tenant = config.tenants[0]
    for text in ("queue:vip", "agent:1001", "context:custom", "busy", "hangup"):
        answer = parse_answer(tenant, json.dumps({"customer_id": "c",
                                                  "destination": text}).encode())
        assert str(answer.destination).startswith(text)  # context:custom,s


def test_only_a_200_answer_has_a_body() -> None:
    assert parse_response(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\n{}") == b"{}"
    for raw in (b"HTTP/1.0 404 Not Found\r\n\r\n{}", b"garbage", b"SSH-2.0\r\n\r\n"):
        with pytest.raises(LookupFailed):
            parse_response(raw)


# ---------------------------------------------------------------------------- DTMF entry

ENTRY_CONFIG = """\
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", name: Alice, password: "pass-1001-long"}
    inbound_routes:
      - {did: "5550200", destination: "agent:1001",
         account_entry: {prompt: beep, max_digits: 6, timeout_seconds: 3}}
      - {did: "5550201", destination: "agent:1001"}
"""


@pytest.fixture(scope="module")
def entry_config() -> OmniccConfig:
    return parse_config(ENTRY_CONFIG)


@pytest.mark.parametrize(("entry", "expected"), [
    ("123456", "123456"), ("0", "0"), ("", None), ("1234567", None), ("12*4", None),
    ("12#", None), ("١٢", None), ("12 3", None)])
def test_an_account_number_is_digits_up_to_the_maximum(entry: str,
                                                       expected: str | None) -> None:
    assert account_id(entry, 6) == expected


def test_a_route_with_account_entry_tells_the_dialplan_how_to_read(
        entry_config: OmniccConfig) -> None:
    log = MemoryEventLog()
    record = run_async(drive_session(InboundRoute(entry_config, cast(EventLog, log)),
                                     script="inbound_route",
                                     params={"tenant": "acme", "did": "5550200"},
                                     command_timeout=1.0))
    assert (record.variables["OMNICC_ACCOUNT_PROMPT"], record.variables["OMNICC_ACCOUNT_DIGITS"],
            record.variables["OMNICC_ACCOUNT_TIMEOUT"]) == ("beep", "6", "3")
    assert record.variables["OMNICC_DEST"] == "agent"


def entry(config: OmniccConfig, did: str, keyed: str) -> tuple[FakeCallRecord, MemoryEventLog]:
    log = MemoryEventLog()
    record = run_async(drive_session(CustomerEntry(config, cast(EventLog, log)),
                                     script="customer_entry",
                                     params={"tenant": "acme", "did": did, "entry": keyed},
                                     command_timeout=1.0))
    return record, log


def test_a_keyed_account_number_identifies_the_customer(entry_config: OmniccConfig) -> None:
    record, log = entry(entry_config, "5550200", "004217")
    assert record.variables == {"OMNICC_CUSTOMER": "004217", "OMNICC_STATUS": "OK"}
    (event,) = log.events
    assert (event[1], event[2]["customer_id"], event[2]["method"], event[2]["route"]) == (
        "customer_identified", "004217", "dtmf", "5550200")


@pytest.mark.parametrize("keyed", ["", "1234567", "12*", "1;SET VARIABLE X 1"])
def test_a_bad_entry_identifies_nobody_and_is_not_logged(entry_config: OmniccConfig,
                                                         keyed: str) -> None:
    record, log = entry(entry_config, "5550200", keyed)
    assert record.variables == {"OMNICC_STATUS": "OK"}
    (event,) = log.events
    assert event[1] == "customer_entry_invalid" and event[2]["length"] == str(len(keyed))
    assert keyed == "" or keyed not in str(event[2])


@pytest.mark.parametrize(("tenant_did", "keyed"), [("5550201", "12"), ("9999", "12")])
def test_an_entry_for_a_route_without_account_entry_is_an_error(
        entry_config: OmniccConfig, tenant_did: str, keyed: str) -> None:
    record, log = entry(entry_config, tenant_did, keyed)
    assert record.variables == {"OMNICC_STATUS": "ERROR"}
    assert log.events == []


def test_the_config_refuses_a_bad_account_entry_with_its_key() -> None:
    for old, new, key in [("max_digits: 6", "max_digits: 21", "account_entry.max_digits"),
                          ("prompt: beep", "prompt: ../etc/x", "account_entry.prompt"),
                          ("timeout_seconds: 3", "timeout_seconds: 0",
                           "account_entry.timeout_seconds")]:
        with pytest.raises(ConfigError) as caught:
            parse_config(ENTRY_CONFIG.replace(old, new))
        assert any(key in p for p in caught.value.problems), caught.value.problems
