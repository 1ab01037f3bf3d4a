"""omnicc/sip_policy.py: who sent a SIP request, and the password an agent is checked with."""

from __future__ import annotations

import pytest

from omnicc.config import ConfigError, OmniccConfig, parse_config
from omnicc.sip_policy import (
    UNKNOWN_USER_PASSWORD,
    Classified,
    Source,
    SourcePolicy,
    agent_password,
)

CONFIG_TEXT = """
services: {listen: 127.0.0.1}
asterisk_nodes:
  - {host: 10.0.0.10, port: 5080}
  - {host: "2001:db8::10", port: 5080}
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
    trunks:
      - {name: carrier, address: 192.0.2.0/24}
      - {name: pbx, address: 192.0.2.77}
      - {name: sbc6, address: "2001:db8:5::/48"}
  - name: globex
    domain: globex.example
    agents:
      - {extension: "1001", password: "globex-pass-1001"}
    trunks:
      - {name: wide-carrier, address: 198.51.0.0/16}
      - {name: narrow-pbx, address: 198.51.100.0/28}
      - {name: sbc-any-port, address: 203.0.113.5}
  - name: initech
    domain: initech.example
    trunks:
      - {name: sbc-port, address: 203.0.113.5, port: 5070}
"""


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG_TEXT)


@pytest.fixture(scope="module")
def policy(config: OmniccConfig) -> SourcePolicy:
    return SourcePolicy(config)


def trunk_of(result: Classified) -> tuple[Source, str, str]:
    """(source, tenant name, trunk name) for a trunk classification."""
    assert result.tenant is not None and result.trunk is not None
    return result.source, result.tenant.name, result.trunk.name


# ---------------------------------------------------------------------------- Asterisk nodes


@pytest.mark.parametrize(("ip", "port"), [("10.0.0.10", 5080), ("2001:db8::10", 5080),
                                          ("2001:db8:0::10", 5080)])
def test_asterisk_node_is_matched_by_address_and_port(
    policy: SourcePolicy, ip: str, port: int
) -> None:
    assert policy.classify(ip, port) == Classified(Source.ASTERISK)


@pytest.mark.parametrize(("ip", "port"), [("10.0.0.10", 5060), ("10.0.0.10", 5081),
                                          ("10.0.0.11", 5080), ("2001:db8::10", 5060)])
def test_same_address_on_another_port_is_not_asterisk(
    policy: SourcePolicy, ip: str, port: int
) -> None:
    # Anything else on an Asterisk host (a softphone, a scanner) must not be trusted.
    assert policy.classify(ip, port) == Classified(Source.UNTRUSTED)


def test_the_local_asterisk_is_trusted_when_no_nodes_are_listed() -> None:
    config = parse_config(
        "services: {listen: 127.0.0.1, asterisk: {port: 5080}}\n"
        "tenants: [{name: t, domain: t.example}]\n"
    )
    policy = SourcePolicy(config)
    assert policy.classify("127.0.0.1", 5080).source is Source.ASTERISK
    assert policy.classify("127.0.0.1", 5060).source is Source.UNTRUSTED


# ---------------------------------------------------------------------------- trunks


def test_trunk_matched_by_its_address_from_any_port(policy: SourcePolicy) -> None:
    for port in (5060, 5061, 40000):
        assert trunk_of(policy.classify("192.0.2.77", port)) == (Source.TRUNK, "acme", "pbx")


def test_trunk_matched_by_subnet(policy: SourcePolicy) -> None:
    assert trunk_of(policy.classify("192.0.2.1", 5060)) == (Source.TRUNK, "acme", "carrier")
    assert trunk_of(policy.classify("192.0.2.255", 5060)) == (Source.TRUNK, "acme", "carrier")
    assert trunk_of(policy.classify("2001:db8:5:1::9", 5060)) == (Source.TRUNK, "acme", "sbc6")


@pytest.mark.parametrize(("ip", "expected_trunk"), [
    ("198.51.100.1", "narrow-pbx"),    # inside the /28 and the /16: the /28 wins
    ("198.51.100.15", "narrow-pbx"),
    ("198.51.100.16", "wide-carrier"),  # just outside the /28
    ("198.51.7.7", "wide-carrier"),
    ("192.0.2.77", "pbx"),             # a /32 inside acme's own /24
])
def test_most_specific_subnet_wins(policy: SourcePolicy, ip: str, expected_trunk: str) -> None:
    result = policy.classify(ip, 5060)
    assert result.trunk is not None and result.trunk.name == expected_trunk


def test_most_specific_wins_whatever_the_order_in_the_file() -> None:
    narrow_first = parse_config(
        "tenants:\n"
        "  - name: a\n    domain: a.example\n"
        "    trunks: [{name: narrow, address: 10.1.1.0/24}, {name: wide, address: 10.0.0.0/8}]\n"
    )
    wide_first = parse_config(
        "tenants:\n"
        "  - name: a\n    domain: a.example\n"
        "    trunks: [{name: wide, address: 10.0.0.0/8}, {name: narrow, address: 10.1.1.0/24}]\n"
    )
    for config in (narrow_first, wide_first):
        result = SourcePolicy(config).classify("10.1.1.9", 5060)
        assert result.trunk is not None and result.trunk.name == "narrow"


def test_trunk_with_a_port_matches_only_that_port(policy: SourcePolicy) -> None:
    assert trunk_of(policy.classify("203.0.113.5", 5070)) == (Source.TRUNK, "initech", "sbc-port")


def test_a_port_bound_trunk_wins_over_one_on_the_same_address_without_port(
    policy: SourcePolicy,
) -> None:
    # globex's trunk takes any port from 203.0.113.5 and is listed first; initech's
    # trunk is that address on port 5070 only, which is the more specific match.
    assert trunk_of(policy.classify("203.0.113.5", 5070))[1] == "initech"
    assert trunk_of(policy.classify("203.0.113.5", 5060))[1] == "globex"


def test_a_port_bound_trunk_alone_does_not_admit_other_ports() -> None:
    config = parse_config(
        "tenants:\n  - name: a\n    domain: a.example\n"
        "    trunks: [{name: sbc, address: 10.9.9.9, port: 5070}]\n"
    )
    assert SourcePolicy(config).classify("10.9.9.9", 5060) == Classified(Source.UNTRUSTED)


@pytest.mark.parametrize("ip", ["192.0.3.1", "127.0.0.1", "::1", "10.0.0.9"])
def test_unknown_address_is_untrusted(policy: SourcePolicy, ip: str) -> None:
    assert policy.classify(ip, 5060) == Classified(Source.UNTRUSTED)


@pytest.mark.parametrize("ip", ["", "not-an-ip", "192.0.2.300", "192.0.2.77:5060",
                                "[2001:db8::10]", "192.0.2.0/24", " 192.0.2.77"])
def test_bad_ip_string_is_untrusted(policy: SourcePolicy, ip: str) -> None:
    assert policy.classify(ip, 5060) == Classified(Source.UNTRUSTED)


# ---------------------------------------------------------------------------- passwords


def test_known_agent_gets_its_tenant_and_password(config: OmniccConfig) -> None:
    tenant, password = agent_password(config, "globex.example", "1001")
    assert tenant is not None and tenant.name == "globex"
    assert password == "globex-pass-1001"


def test_same_extension_in_two_tenants_has_each_tenants_password(config: OmniccConfig) -> None:
    assert agent_password(config, "acme.example", "1001")[1] == "acme-pass-1001"
    assert agent_password(config, "globex.example", "1001")[1] == "globex-pass-1001"


@pytest.mark.parametrize("user", ["1002", "", "admin", "1001 "])
def test_unknown_user_gets_its_tenant_and_a_password_nobody_holds(
    config: OmniccConfig, user: str
) -> None:
    tenant, password = agent_password(config, "acme.example", user)
    # The tenant is still known, so the challenge carries the same realm as for a real agent.
    assert tenant is not None and tenant.name == "acme"
    assert password == UNKNOWN_USER_PASSWORD


def test_the_unknown_user_password_cannot_be_guessed(config: OmniccConfig) -> None:
    assert UNKNOWN_USER_PASSWORD != ""
    assert len(UNKNOWN_USER_PASSWORD) >= 32  # token_urlsafe(32): 256 random bits
    agent_passwords = {a.password for t in config.tenants for a in t.agents}
    assert UNKNOWN_USER_PASSWORD not in agent_passwords
    assert UNKNOWN_USER_PASSWORD not in {"", "1002", "acme.example", "password"}


def test_unknown_domain_has_no_tenant(config: OmniccConfig) -> None:
    tenant, password = agent_password(config, "evil.example", "1001")
    assert tenant is None
    assert password == UNKNOWN_USER_PASSWORD  # never another tenant's agent's password


# ---------------------------------------------------------------------------- Kamailio peers


def test_peer_kamailio_nodes_are_matched_by_address_and_port() -> None:
    config = parse_config(
        "services: {listen: 10.0.0.1, kamailio: {port: 5060}}\n"
        "kamailio_nodes:\n  - {host: 10.0.0.1}\n  - {host: 10.0.0.2, port: 5070}\n"
        "tenants:\n  - {name: acme, domain: acme.example}\n")
    policy = SourcePolicy(config)
    assert policy.classify("10.0.0.2", 5070).source is Source.KAMAILIO
    assert policy.classify("10.0.0.2", 5060).source is Source.UNTRUSTED
    # This node itself is no peer of its own.
    assert policy.classify("10.0.0.1", 5060).source is Source.UNTRUSTED
    assert [n.uri for n in config.kamailio_peers] == ["sip:10.0.0.2:5070"]


def test_a_bad_kamailio_node_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kamailio_nodes"):
        parse_config("kamailio_nodes:\n  - {host: node-b.example}\n"
                     "tenants:\n  - {name: acme, domain: acme.example}\n")


# ---------------------------------------------------- registration trunks without an address

# A carrier that cannot name its source addresses: Asterisk registers to it, and its calls
# come to the registered contact (matched there by the line token), never through Kamailio.
NO_ADDRESS_TRUNK = """\
      - name: {name}
        dial_host: {dial_host}
        credentials: {{username: "4420712345", password: "it-Carrier-pw!9"}}
        registration: {{expiration: 600}}
"""


def tenant_with_trunks(name: str, trunks: str) -> str:
    return f"  - name: {name}\n    domain: {name}.example\n    trunks:\n{trunks}"


def test_a_registration_trunk_may_leave_out_its_address() -> None:
    config = parse_config("tenants:\n" + tenant_with_trunks(
        "acme", NO_ADDRESS_TRUNK.format(name="reg", dial_host="192.0.2.10")))
    trunk = config.tenants[0].trunks[0]
    assert (trunk.address, trunk.network, trunk.source) == (None, None, None)
    assert trunk.registrar_uri == "sip:192.0.2.10:5060"


def test_a_trunk_without_address_admits_no_source() -> None:
    config = parse_config("tenants:\n" + tenant_with_trunks(
        "acme",
        NO_ADDRESS_TRUNK.format(name="reg", dial_host="192.0.2.10")
        + "      - {name: carrier, address: 198.51.100.0/24}\n"))
    policy = SourcePolicy(config)
    # Not its registrar's address, nor any other: Kamailio trusts it for nothing.
    for ip in ("192.0.2.10", "192.0.2.11", "0.0.0.0", "255.255.255.255", "::1", "::"):
        for port in (5060, 5080, 0):
            assert policy.classify(ip, port) == Classified(Source.UNTRUSTED), (ip, port)
    # The tenant's trunks that have an address are classified as before.
    assert trunk_of(policy.classify("198.51.100.9", 5060)) == (Source.TRUNK, "acme", "carrier")


def test_several_trunks_without_address_are_no_duplicate_sources() -> None:
    config = parse_config("tenants:\n" + tenant_with_trunks(
        "acme", NO_ADDRESS_TRUNK.format(name="reg-a", dial_host="192.0.2.10")
        + NO_ADDRESS_TRUNK.format(name="reg-b", dial_host="192.0.2.20"),
    ) + tenant_with_trunks(
        "globex", NO_ADDRESS_TRUNK.format(name="reg-a", dial_host="192.0.2.10")))
    assert [t.source for tenant in config.tenants for t in tenant.trunks] == [None] * 3


def test_a_trunk_without_registration_still_needs_its_address() -> None:
    text = "tenants:\n" + tenant_with_trunks(
        "acme", "      - {name: carrier, dial_host: 192.0.2.10}\n"
                "      - name: challenging\n"
                "        dial_host: 192.0.2.20\n"
                "        credentials: {username: u1, password: it-pass-123}\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "omnicc.yaml")
    assert raised.value.problems == [
        "omnicc.yaml:5: tenants[0].trunks[0].address: Field required: the source Kamailio "
        "admits this trunk's calls from (only a trunk with a registration may leave it out)",
        "omnicc.yaml:6: tenants[0].trunks[1].address: Field required: the source Kamailio "
        "admits this trunk's calls from (only a trunk with a registration may leave it out)",
    ]


def test_a_port_without_an_address_is_refused() -> None:
    text = "tenants:\n" + tenant_with_trunks(
        "acme", NO_ADDRESS_TRUNK.format(name="reg", dial_host="192.0.2.10")
        + "        port: 5070\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "omnicc.yaml")
    assert raised.value.problems == [
        "omnicc.yaml:9: tenants[0].trunks[0].port: a port needs an address (the source it "
        "is a port of)"]


def test_a_registration_trunk_with_an_address_is_admitted_from_it_too() -> None:
    config = parse_config("tenants:\n" + tenant_with_trunks(
        "acme", NO_ADDRESS_TRUNK.format(name="reg", dial_host="192.0.2.10")
        + "        address: 192.0.2.10\n"))
    assert trunk_of(SourcePolicy(config).classify("192.0.2.10", 5060)) == (
        Source.TRUNK, "acme", "reg")
