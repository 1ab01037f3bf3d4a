"""Registration trunks and per-trunk codecs: the config (credentials, registration,
codecs), the rendered pjsip.conf and pjsip_trunk_auth.conf, the DID of a call to a
registered contact, and the registered_call AGI over the fake Asterisk."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from agi.handlers.registered_call import RegisteredCall
from omnicc.config import KNOWN_CODECS, ConfigError, OmniccConfig, parse_config
from omnicc.render import REPO_ROOT, render_asterisk
from omnicc.trunk_registration import (
    RegisteredCallRefused,
    RegistrationState,
    parse_registrations,
    registered_call_did,
    uri_user,
)

from .test_agi_handlers import MemoryEventLog, as_event_log, run_handler

HEAD = """
tenants:
  - name: acme
    domain: acme.example
    inbound_routes: [{did: "5550100", destination: busy}]
    trunks:
"""

REGISTERED = HEAD + """\
      - name: carrier-r
        address: 203.0.113.10
        dial_host: sip.carrier.example
        dial_port: 5070
        codecs: [alaw, ulaw]
        credentials: {username: "4420712345", password: "Pa$$w0rd!", auth_username: "acc-77"}
        registration: {expiration: 600, retry_interval: 30, contact_user: "cc1"}
      - {name: plain, address: 203.0.113.20, dial_host: 203.0.113.20}
      - name: challenging
        address: 203.0.113.30
        dial_host: 203.0.113.30
        credentials: {username: "alice", password: "only-for-invites"}
        codecs: [gsm]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "omnicc.yaml")
    return caught.value.problems


def trunk_line(**keys: str) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in {"name": "t", "address": "203.0.113.9",
                                                **keys}.items())
    return HEAD + f"      - {{{fields}}}\n"


# ---------------------------------------------------------------------------- the config


def test_a_registration_trunk_loads_with_its_defaults() -> None:
    config = parse_config(trunk_line(
        dial_host="203.0.113.9",
        credentials='{username: "4420712345", password: "secret-1"}',
        registration="{}"))
    trunk = config.tenants[0].trunks[0]
    assert trunk.registration is not None
    assert (trunk.registration.expiration, trunk.registration.retry_interval,
            trunk.registration.did_from) == (3600, 60, "to")
    assert trunk.contact_user == "4420712345"
    assert trunk.registrar_uri == "sip:203.0.113.9:5060"
    assert trunk.registered_aor == "sip:4420712345@203.0.113.9"
    assert trunk.codecs == ["ulaw", "alaw"]


def test_a_registrar_of_its_own_and_the_did_from_the_request_uri() -> None:
    config = parse_config(trunk_line(
        dial_host="203.0.113.9", dial_port="5070",
        credentials='{username: "u1", password: "secret-1"}',
        registration='{server: reg.carrier.example, did_from: request_uri}'))
    trunk = config.tenants[0].trunks[0]
    # Its own server: port 5060 unless given, not the dial_port.
    assert trunk.registrar_uri == "sip:reg.carrier.example:5060"
    assert trunk.registered_aor == "sip:u1@reg.carrier.example"
    assert trunk.dial_uri == "sip:203.0.113.9:5070"


@pytest.mark.parametrize(("keys", "where", "message"), [
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1"}'},
     "credentials.password", "Field required"),
    ({"dial_host": "203.0.113.9", "credentials": '{password: "secret-1"}'},
     "credentials.username", "Field required"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: ""}'},
     "credentials.password", "printable ASCII characters without spaces or ';'"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: "a;b-cdef"}'},
     "credentials.password", "without spaces or ';'"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: "a b"}'},
     "credentials.password", "without spaces"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u 1", password: "secret-1"}'},
     "credentials.username", "a SIP user name is"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u@x", password: "secret-1"}'},
     "credentials.username", "a SIP user name is"),
    ({"dial_host": "203.0.113.9", "registration": "{}"},
     "registration", "a registration needs credentials (username and password)"),
    ({"credentials": '{username: "u1", password: "secret-1"}', "registration": "{}"},
     "registration", "a trunk with registration needs a dial_host"),
    ({"credentials": '{username: "u1", password: "secret-1"}'},
     "credentials", "a trunk with credentials needs a dial_host"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: "secret-1"}',
      "registration": "{did_from: from}"},
     "registration.did_from", "Input should be 'to' or 'request_uri'"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: "secret-1"}',
      "registration": "{server: 'bad host;x'}"},
     "registration.server", "server is an IP address or a host name"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: "secret-1"}',
      "registration": "{expiration: 10}"},
     "registration.expiration", "greater than or equal to 60"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: "secret-1"}',
      "registration": "{contact_user: 'a,b'}"},
     "registration.contact_user", "a SIP user name is"),
    # '#' is not a SIP URI user character unescaped (RFC 3261 25.1).
    ({"dial_host": "203.0.113.9", "credentials": '{username: "ac#ct", password: "secret-1"}'},
     "credentials.username", "a SIP user name is"),
    ({"dial_host": "203.0.113.9", "credentials": '{username: "u1", password: 12345678}'},
     "credentials.password", "a password is text: quote it"),
])
def test_incomplete_or_bad_credentials_are_config_errors(
    keys: dict[str, str], where: str, message: str
) -> None:
    found = problems(trunk_line(**keys))
    assert any(f"tenants[0].trunks[0].{where}:" in p and message in p for p in found), found


@pytest.mark.parametrize(("codecs", "message"), [
    ("[alaw, g729]", "unknown codec 'g729' (known: ulaw, alaw, gsm)"),
    ("[PCMA]", "unknown codec 'PCMA' (known: ulaw, alaw, gsm)"),
    ("[]", "at least one codec (known: ulaw, alaw, gsm)"),
    ("[alaw, alaw]", "a codec is listed twice"),
])
def test_a_codec_asterisk_cannot_carry_is_a_config_error(codecs: str, message: str) -> None:
    found = problems(trunk_line(codecs=codecs))
    assert any("tenants[0].trunks[0].codecs:" in p and message in p for p in found), found


def test_every_known_codec_has_its_translator_loaded() -> None:
    """KNOWN_CODECS are the codecs the stack's Asterisk transcodes: each codec_NAME.so is
    loaded, and the Kamailio-facing endpoint (agents' side) accepts every one of them."""
    modules = (REPO_ROOT / "modules.conf.j2").read_text()
    loaded = set(re.findall(r"^load = codec_(\w+)\.so$", modules, re.M))
    assert set(KNOWN_CODECS) <= loaded
    pjsip = (REPO_ROOT / "pjsip.conf.j2").read_text()
    kamailio = pjsip[pjsip.index("[kamailio]"):pjsip.index("type = aor")]
    (allow,) = re.findall(r"^allow = (.*)$", kamailio, re.M)
    assert set(KNOWN_CODECS) <= set(allow.split(","))


# ---------------------------------------------------------------------------- rendering


def sections(text: str) -> dict[tuple[str, str], list[str]]:
    """pjsip.conf's sections by (name, type): their `key = value` lines."""
    out: dict[tuple[str, str], list[str]] = {}
    for block in re.split(r"^(?=\[)", text, flags=re.M):
        head = re.match(r"\[([^\]]+)\]", block)
        if head is None:
            continue
        lines = [line.strip() for line in block.splitlines()[1:]
                 if line.strip() and not line.startswith(";")]
        kind = next(line.split(" = ", 1)[1] for line in lines if line.startswith("type = "))
        out[(head.group(1), kind)] = lines
    return out


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[dict[tuple[str, str], list[str]], str, Path]:
    render_asterisk(parse_config(REGISTERED), tmp_path)
    pjsip = (tmp_path / "pjsip.conf").read_text()
    return sections(pjsip), pjsip, tmp_path / "pjsip_trunk_auth.conf"


def test_the_registration_and_its_endpoint_are_rendered(rendered) -> None:
    found, pjsip, _ = rendered
    registration = found[("trunk.acme.carrier-r", "registration")]
    for line in ["server_uri = sip:sip.carrier.example:5070",
                 "client_uri = sip:4420712345@sip.carrier.example",
                 "contact_user = cc1", "expiration = 600", "retry_interval = 30",
                 "outbound_auth = trunk.acme.carrier-r", "line = yes",
                 "endpoint = trunk.acme.carrier-r", "transport = transport-udp"]:
        assert line in registration, (line, registration)
    endpoint = found[("trunk.acme.carrier-r", "endpoint")]
    for line in ["context = omnicc-from-registration", "set_var = OMNICC_TENANT=acme",
                 "set_var = OMNICC_TRUNK=carrier-r", "outbound_auth = trunk.acme.carrier-r",
                 "disallow = all", "allow = alaw,ulaw"]:
        assert line in endpoint, (line, endpoint)
    # Calls to the contact are identified by the line token only; no identify section.
    assert "endpoint_identifier_order = ip,line" in found[("global", "global")]
    assert [name for name, kind in found if kind == "identify"] == ["kamailio"]
    # The password is not in pjsip.conf, which includes the file that has it.
    assert "Pa$$w0rd!" not in pjsip
    assert "#include pjsip_trunk_auth.conf" in pjsip.splitlines()


def test_trunks_without_a_registration_keep_the_refusing_context(rendered) -> None:
    found, _, _ = rendered
    plain = found[("trunk.acme.plain", "endpoint")]
    assert "context = omnicc-trunk-endpoint" in plain
    assert "allow = ulaw,alaw" in plain
    assert not any(line.startswith(("outbound_auth", "set_var")) for line in plain)
    challenging = found[("trunk.acme.challenging", "endpoint")]
    assert "context = omnicc-trunk-endpoint" in challenging
    assert "outbound_auth = trunk.acme.challenging" in challenging
    assert "allow = gsm" in challenging
    assert ("trunk.acme.challenging", "registration") not in found
    assert ("trunk.acme.plain", "registration") not in found


def test_the_credentials_are_in_a_file_only_its_owner_reads(rendered) -> None:
    _, _, auth_file = rendered
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    found = sections(auth_file.read_text())
    assert found[("trunk.acme.carrier-r", "auth")] == [
        "type = auth", "auth_type = userpass", "username = acc-77", "password = Pa$$w0rd!"]
    assert found[("trunk.acme.challenging", "auth")] == [
        "type = auth", "auth_type = userpass", "username = alice",
        "password = only-for-invites"]
    assert [name for name, _ in found] == ["trunk.acme.carrier-r", "trunk.acme.challenging"]


def test_a_rendered_auth_file_that_was_readable_becomes_private(tmp_path: Path) -> None:
    auth_file = tmp_path / "pjsip_trunk_auth.conf"
    auth_file.write_text("old")
    auth_file.chmod(0o644)
    render_asterisk(parse_config(REGISTERED), tmp_path)
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- the DID


@pytest.mark.parametrize(("uri", "user"), [
    ("sip:+15550100@carrier.example", "+15550100"),
    ("<sip:5550100@carrier.example;user=phone>", "5550100"),
    ("sips:5550100@carrier.example:5061", "5550100"),
    ("sip:5550100;phone-context=+1@carrier.example", "5550100"),
    ("tel:+15550100;phone-context=x", "+15550100"),
    ("sip:%2B15550100@carrier.example", "+15550100"),
    ("sip:carrier.example", ""),
    ("http://x/5550100", ""),
    ("", ""),
])
def test_uri_user(uri: str, user: str) -> None:
    assert uri_user(uri) == user


@pytest.fixture(scope="module")
def registered_config() -> OmniccConfig:
    return parse_config(REGISTERED.replace(
        "      - {name: plain", "      - name: by-ruri\n"
        "        address: 203.0.113.40\n        dial_host: 203.0.113.40\n"
        "        credentials: {username: \"5550100\", password: \"secret-1\"}\n"
        "        registration: {did_from: request_uri}\n      - {name: plain"))


def trunk(config: OmniccConfig, name: str):
    found = config.tenants[0].trunk(name)
    assert found is not None
    return found


def test_the_did_comes_from_the_to_header_by_default(registered_config: OmniccConfig) -> None:
    carrier = trunk(registered_config, "carrier-r")
    assert registered_call_did(carrier, "sip:cc1@10.0.0.21:5080;line=abc",
                               "sip:+442071230000@carrier.example") == "+442071230000"


def test_the_did_from_the_request_uri(registered_config: OmniccConfig) -> None:
    by_ruri = trunk(registered_config, "by-ruri")
    assert registered_call_did(by_ruri, "sip:5550100@10.0.0.21:5080;line=abc",
                               "sip:whatever@carrier.example") == "5550100"


@pytest.mark.parametrize("to_uri", [
    "sip:5550100,1@carrier.example", "sip:5550100&PJSIP/x@carrier.example",
    "sip:abc@carrier.example", "sip:+@carrier.example", "sip:carrier.example",
    "sip:" + "1" * 21 + "@carrier.example", "sip:%0a5550100@carrier.example",
    "sip:5550100%2c1@carrier.example",
])
def test_anything_but_a_did_is_refused(registered_config: OmniccConfig, to_uri: str) -> None:
    with pytest.raises(RegisteredCallRefused, match="holds no DID"):
        registered_call_did(trunk(registered_config, "carrier-r"), "sip:cc1@h;line=x", to_uri)


def test_a_trunk_without_a_registration_takes_no_such_call(
    registered_config: OmniccConfig,
) -> None:
    with pytest.raises(RegisteredCallRefused, match="has no registration"):
        registered_call_did(trunk(registered_config, "plain"), "sip:5550100@h",
                            "sip:5550100@h")


# ---------------------------------------------------------------------------- the AGI


def registered_call(config: OmniccConfig, log: MemoryEventLog, **params: str):
    return run_handler(RegisteredCall(config, as_event_log(log)), "registered_call", params)


def test_registered_call_sets_the_checked_did(registered_config: OmniccConfig) -> None:
    log = MemoryEventLog()
    record = registered_call(registered_config, log, tenant="acme", trunk="carrier-r",
                             request_uri="sip:cc1@10.0.0.21:5080;line=abc",
                             to_uri="sip:5550100@carrier.example")
    assert record.variables["OMNICC_DID"] == "5550100"
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert log.events == []


def test_registered_call_refuses_a_to_without_a_did(registered_config: OmniccConfig) -> None:
    log = MemoryEventLog()
    record = registered_call(registered_config, log, tenant="acme", trunk="carrier-r",
                             request_uri="sip:cc1@10.0.0.21:5080;line=abc",
                             to_uri="sip:5550100,1@carrier.example")
    assert "OMNICC_DID" not in record.variables
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == ("ERROR",
                                                                                    "1")
    (event,) = log.events
    assert (event.tenant, event.event, event.fields["trunk"]) == (
        "acme", "registered_call_refused", "carrier-r")
    assert "holds no DID" in event.fields["reason"]


@pytest.mark.parametrize(("tenant", "trunk_name"), [
    ("acme", "nope"), ("other", "carrier-r"), ("", ""), ("acme", "plain")])
def test_registered_call_for_an_unknown_or_plain_trunk_is_refused(
    registered_config: OmniccConfig, tenant: str, trunk_name: str
) -> None:
    record = registered_call(registered_config, MemoryEventLog(), tenant=tenant,
                             trunk=trunk_name, request_uri="sip:5550100@h",
                             to_uri="sip:5550100@h")
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert "OMNICC_DID" not in record.variables


# ---------------------------------------------------------------------------- omnicc status

# As Asterisk 22 prints it (columns narrowed to fit the line length here).
SHOW_REGISTRATIONS = """
 <Registration/ServerURI..............................>  <Auth....................>  <Status.......>
==========================================================================================

 trunk.acme.carrier-r/sip:sip.carrier.example:5070  trunk.acme.carrier-r  Registered  (exp. 589s)
 trunk.acme.by-ruri/sip:203.0.113.40:5060                trunk.acme.by-ruri          Rejected
 trunk.acme.other/sip:203.0.113.50:5060                                              Unregistered

Objects found: 3
"""


def test_pjsip_show_registrations_is_read_line_by_line() -> None:
    assert parse_registrations(SHOW_REGISTRATIONS) == [
        RegistrationState("trunk.acme.carrier-r", "sip:sip.carrier.example:5070", "Registered"),
        RegistrationState("trunk.acme.by-ruri", "sip:203.0.113.40:5060", "Rejected"),
        RegistrationState("trunk.acme.other", "sip:203.0.113.50:5060", "Unregistered"),
    ]
    assert parse_registrations("No objects found.\n") == []
