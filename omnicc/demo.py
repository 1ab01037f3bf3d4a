"""`omnicc demo`: drive demo calls through a running stack with SIPp and print a summary.

Agents of the first tenant register through Kamailio with digest credentials; a SIPp
"carrier", sending from the tenant's first trunk address, calls each DID routed to an
agent; each call reaches the agent's phone, is answered, talks, and ends with BYE. Then,
when the tenant has a DID routed to a queue, the queue's members log in to the ACD by
dialling the login feature code from their phones, and the carrier calls that DID: the
ACD offers each call to a member, whose phone answers.
The summary puts omnicc's own record (the event stream) beside what SIPp saw.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from omnicc import sipp
from omnicc.acd import AcdSync
from omnicc.config import Tenant
from omnicc.events import read_events
from omnicc.keys import agent_hash
from omnicc.reports import format_call_summary, format_table, summarize_calls
from omnicc.stack import Stack


class DemoError(Exception):
    pass


@dataclass
class DemoResult:
    placed: int
    answered_by_sipp: int
    answered_by_omnicc: int
    report: str


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def trunk_source_ip(address: str) -> str:
    network = ipaddress.ip_network(address)
    return str(network.network_address if network.num_addresses == 1 else next(network.hosts()))


def dial_feature_code(workdir: Path, *, proxy: str, tenant: Tenant, extension: str,
                      code: str, local_ip: str) -> sipp.SippRun:
    """Agent `extension` dials a feature code from its phone (digest authenticated)."""
    agent = tenant.agent(extension)
    assert agent is not None
    name = f"feature-{extension}"
    return sipp.SippRun(name, [
        sipp.sipp_binary(), proxy, "-sf", str(sipp.SCENARIOS / "agent_feature_code.xml"),
        "-m", "1", "-i", local_ip, "-p", "0", "-s", code, "-au", extension,
        "-ap", agent.password, "-key", "from", extension, "-key", "domain", tenant.domain,
        "-key", "claim", extension, "-timeout", "30s", *sipp._common(name, workdir),
    ], workdir)


def run_demo(stack: Stack, *, calls_per_did: int = 2, talk_ms: int = 2000,
             workdir: Path | None = None,
             progress: Callable[[str], None] = print) -> DemoResult:
    config = stack.config
    tenant = config.tenants[0]
    # The demo's carrier sends through Kamailio: a trunk it admits by address.
    source_trunk = next((t for t in tenant.trunks if t.address is not None), None)
    if source_trunk is None or source_trunk.address is None:
        raise DemoError(f"tenant {tenant.name} has no trunk with an address to place demo "
                        "calls from")
    routes = [r for r in tenant.inbound_routes if r.destination.kind == "agent"]
    if not routes:
        raise DemoError(f"tenant {tenant.name} has no inbound route to an agent")
    # One queue DID is enough to show a queue; its members answer the calls.
    queue_route = next((r for r in tenant.inbound_routes if r.destination.kind == "queue"),
                       None)
    queue = tenant.queue(queue_route.destination.target) if queue_route else None
    members = [m.agent for m in queue.members] if queue else []
    workdir = workdir or Path(tempfile.mkdtemp(prefix="omnicc-demo-", dir=stack.var))
    listen = config.services.listen
    proxy = f"{listen}:{config.services.kamailio.port}"
    carrier_ip = trunk_source_ip(source_trunk.address)

    expected: dict[str, int] = {}
    for route in routes:
        expected[route.destination.target] = expected.get(route.destination.target, 0) \
            + calls_per_did
    for member in members:  # at most every queue call; which member gets which is the ACD's
        expected[member] = expected.get(member, 0) + calls_per_did
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    acd = AcdSync(client, config.node)
    start_id = f"{int(time.time() * 1000)}-0"
    phones: dict[str, tuple[int, sipp.SippRun]] = {}
    try:
        for ext, calls in expected.items():
            port = free_udp_port(listen)
            phones[ext] = (port, sipp.agent_phone(workdir, local_ip=listen, port=port,
                                                  calls=calls).start())
        time.sleep(0.3)  # let the phones bind before their contacts are registered
        for ext, (port, _) in phones.items():
            agent = tenant.agent(ext)
            assert agent is not None
            reg = sipp.agent_register(workdir, proxy=proxy, extension=ext,
                                      password=agent.password, domain=tenant.domain,
                                      local_ip=listen, contact_port=port)
            if reg.run(timeout=30) != 0:
                raise DemoError(f"agent {ext} could not register; see {reg.messages}")
            progress(f"  agent {ext} ({agent.name or 'no name'}) registered, phone on "
                     f"{listen}:{port}")
        callers = []
        for route in routes:
            progress(f"  carrier {carrier_ip} calls DID {route.did} x{calls_per_did} "
                     f"-> agent {route.destination.target}")
            callers.append(sipp.carrier_calls(
                workdir, proxy=proxy, did=route.did, local_ip=carrier_ip,
                calls=calls_per_did, talk_ms=talk_ms).start())
        sipp.wait_all(callers, timeout=60 + calls_per_did * (talk_ms / 1000 + 2))
        if queue_route is not None and queue is not None:
            code = tenant.feature_codes.login
            for member in members:
                dial_feature_code(workdir, proxy=proxy, tenant=tenant, extension=member,
                                  code=code, local_ip=listen).run(timeout=45)
                state = client.hget(agent_hash(tenant.name, member), "state")
                progress(f"  agent {member} dials {code} (login): "
                         f"{state.decode() if state else 'OFFLINE'}")
            progress(f"  carrier {carrier_ip} calls DID {queue_route.did} x{calls_per_did} "
                     f"-> queue {queue.name} ({queue.strategy}, members "
                     f"{', '.join(members)})")
            queued = sipp.carrier_calls(workdir, proxy=proxy, did=queue_route.did,
                                        local_ip=carrier_ip, calls=calls_per_did,
                                        talk_ms=talk_ms, name=f"calls-{queue_route.did}")
            callers.append(queued.start())
            sipp.wait_all([queued], timeout=60 + calls_per_did * (talk_ms / 1000 + 2))
        # The phones took their direct calls and any queue calls; a phone may have been
        # offered fewer queue calls than it could take.
        time.sleep(0.5)
    finally:
        for _, phone in phones.values():
            phone.stop()
        for member in members:
            # Out of the ACD again (an agent still in wrap-up too); OFFLINE already is fine.
            acd.logout(tenant.name, member)
    for ext, (port, _) in phones.items():
        agent = tenant.agent(ext)
        assert agent is not None
        sipp.agent_register(workdir, proxy=proxy, extension=ext, password=agent.password,
                            domain=tenant.domain, local_ip=listen, contact_port=port,
                            expires=0, name=f"unregister-{ext}").run(timeout=30)

    time.sleep(0.5)  # the hangup handler's call_end may trail the BYE by a moment
    events = read_events(client, tenant.name, since=start_id)
    summary = summarize_calls(events)
    placed = sum(c.successful_calls + c.failed_calls for c in callers)
    by_sipp = sum(c.successful_calls for c in callers)
    sipp_rows = [[c.argv[c.argv.index("-s") + 1], str(c.successful_calls + c.failed_calls),
                  str(c.successful_calls), str(c.failed_calls)] for c in callers]
    report = "\n".join([
        f"omnicc demo — tenant {tenant.name} ({tenant.domain}), node {config.node}",
        "",
        "What omnicc recorded (event stream):",
        format_call_summary(summary),
        "",
        "What the SIPp carrier saw:",
        format_table(["DID", "placed", "answered", "failed"], sipp_rows),
        "",
        f"SIPp traces: {workdir}",
    ])
    return DemoResult(placed, by_sipp, summary.answered, report)
