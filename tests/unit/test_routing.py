"""omnicc/routing.py: which destination a DID reaches, per tenant."""

from __future__ import annotations

import pytest

from omnicc.config import OmniccConfig, parse_config
from omnicc.routing import InboundDecision, RoutingError, decide_inbound

TWO_TENANTS = """
tenants:
  - name: acme
    domain: acme.example
    agents:
      - {extension: "1001", password: "acme-pass-1001"}
    inbound_routes:
      - {did: "5550100", destination: "agent:1001"}
      - {did: "+15550199", destination: "hangup"}
  - name: globex
    domain: globex.example
    agents:
      - {extension: "1001", password: "globex-pass-1001"}
      - {extension: "2002", password: "globex-pass-2002"}
    inbound_routes:
      - {did: "5550200", destination: "agent:2002"}
      - {did: "5550201", destination: "agent:1001"}
"""


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(TWO_TENANTS)


def test_agent_destination_dials_the_agent_through_kamailio(config: OmniccConfig) -> None:
    assert decide_inbound(config, "acme", "5550100") == InboundDecision(
        tenant="acme", did="5550100", destination="agent", agent="1001",
        dial="PJSIP/kamailio/sip:1001@acme.example",
    )


def test_the_dial_string_uses_the_callers_tenant_domain(config: OmniccConfig) -> None:
    # Both tenants have an agent 1001: the domain is what keeps their calls apart.
    decision = decide_inbound(config, "globex", "5550201")
    assert decision.dial == "PJSIP/kamailio/sip:1001@globex.example"


def test_hangup_destination_has_no_agent_and_nothing_to_dial(config: OmniccConfig) -> None:
    assert decide_inbound(config, "acme", "+15550199") == InboundDecision(
        tenant="acme", did="+15550199", destination="hangup",
    )


def test_unknown_did_is_a_routing_error(config: OmniccConfig) -> None:
    with pytest.raises(RoutingError, match="no inbound route for DID '5559999' in tenant acme"):
        decide_inbound(config, "acme", "5559999")


@pytest.mark.parametrize("tenant", ["initech", "", "ACME", "acme.example"])
def test_unknown_tenant_is_a_routing_error(config: OmniccConfig, tenant: str) -> None:
    with pytest.raises(RoutingError, match="unknown tenant"):
        decide_inbound(config, tenant, "5550100")


@pytest.mark.parametrize(("tenant", "foreign_did"), [
    ("acme", "5550200"), ("acme", "5550201"), ("globex", "5550100"), ("globex", "+15550199"),
])
def test_a_tenant_cannot_reach_another_tenants_did(
    config: OmniccConfig, tenant: str, foreign_did: str
) -> None:
    with pytest.raises(RoutingError, match=f"in tenant {tenant}$"):
        decide_inbound(config, tenant, foreign_did)


def test_did_match_is_exact(config: OmniccConfig) -> None:
    # No normalisation: "+15550199" is routed, "15550199" is not (a prefix rule would be
    # an explicit feature of the route, not a guess here).
    with pytest.raises(RoutingError):
        decide_inbound(config, "acme", "15550199")
    with pytest.raises(RoutingError):
        decide_inbound(config, "acme", " 5550100")
