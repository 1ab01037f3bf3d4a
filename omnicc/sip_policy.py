"""Who sent a SIP request, and which tenant it belongs to: pure logic for the KEMI script.

Kamailio is omnicc's only SIP door. Every initial request is first classified by its
source: an Asterisk node of ours, another Kamailio node of ours (DMQ only), a trusted peer
(carrier, SBC, PBX) admitted by address, or anyone else — who must then authenticate as an agent.
A registration trunk without an address is no trusted peer of Kamailio's: its carrier sends
to the contact Asterisk registered.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import secrets
from dataclasses import dataclass

from omnicc.config import OmniccConfig, Tenant, Trunk

CLASSIFY_CACHE_SIZE = 65536


class Source(enum.Enum):
    ASTERISK = "asterisk"  # one of our Asterisk nodes (matched by address and port)
    KAMAILIO = "kamailio"  # another Kamailio node of ours (address and port): DMQ only
    TRUNK = "trunk"        # a carrier/SBC/PBX of some tenant (matched by address or subnet)
    UNTRUSTED = "untrusted"  # everyone else: agents, who must authenticate, and strangers


@dataclass(frozen=True)
class Classified:
    source: Source
    tenant: Tenant | None = None
    trunk: Trunk | None = None


class SourcePolicy:
    """Classifies (ip, port) pairs; built once per Kamailio worker from the config."""

    def __init__(self, config: OmniccConfig):
        self._asterisk = {
            (ipaddress.ip_address(n.host), n.port) for n in config.dispatcher_nodes
        }
        self._kamailio = {
            (ipaddress.ip_address(n.host), n.port) for n in config.kamailio_peers
        }
        # Most specific first, so a /32 PBX inside a carrier's /24 wins, and on the same
        # network a trunk bound to one port wins over one that takes any port. A
        # registration trunk without an address admits no source: its carrier's calls go
        # to the contact Asterisk registered, never through Kamailio.
        trunks = [
            (t.network, t.port, tenant, t) for tenant in config.tenants for t in tenant.trunks
            if t.network is not None
        ]
        self._classify = functools.lru_cache(maxsize=CLASSIFY_CACHE_SIZE)(
            self._classify_uncached)
        self._trunks = sorted(
            trunks, key=lambda item: (item[0].prefixlen, item[1] is not None), reverse=True
        )

    def classify(self, ip: str, port: int) -> Classified:
        # Asked for every request: remembered per (ip, port), a bounded number of them.
        return self._classify(ip, port)

    def _classify_uncached(self, ip: str, port: int) -> Classified:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return Classified(Source.UNTRUSTED)
        if (addr, port) in self._asterisk:
            return Classified(Source.ASTERISK)
        if (addr, port) in self._kamailio:
            return Classified(Source.KAMAILIO)
        for network, trunk_port, tenant, trunk in self._trunks:
            if addr in network and (trunk_port is None or trunk_port == port):
                return Classified(Source.TRUNK, tenant, trunk)
        return Classified(Source.UNTRUSTED)


# A random digest password nobody holds, made per process: unknown users are challenged
# and checked exactly like known ones, so replies never tell which extensions exist.
UNKNOWN_USER_PASSWORD = secrets.token_urlsafe(32)


def agent_password(config: OmniccConfig, domain: str, user: str) -> tuple[Tenant | None, str]:
    """The tenant of `domain` and the password of agent `user` in it (a dummy if unknown)."""
    tenant = config.tenant_by_domain(domain)
    agent = tenant.agent(user) if tenant else None
    return tenant, (agent.password if agent else UNKNOWN_USER_PASSWORD)
