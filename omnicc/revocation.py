"""Revoking tokens and disabling agents: keys in the shared Redis that every Kamailio node
checks on each request (omnicc/agent_auth.py), so a change takes effect at once.

A Kamailio worker remembers that an agent was neither disabled nor revoked, and Redis
tells it the moment that changes (CLIENT TRACKING, omnicc.lean_redis.TrackedAdmission).
So that "at once" holds when the command returns, the change is reported done only after
Redis has written every such invalidation out to the workers' connections.
"""

from __future__ import annotations

import time
from typing import Any

from omnicc.keys import agent_disabled, revoked_jti

# What the CLI says when wait_until_nodes_told could not confirm.
NOT_CONFIRMED = ("warning: Redis did not confirm within 1 s that every Kamailio worker was "
                 "told; each one will be when Redis delivers the change")


def revoke_token(redis: Any, tenant: str, jti: str, seconds: int) -> bool:
    """Refuse the token `jti` for `seconds` (its remaining life: after that it has expired
    anyway, and the key goes with it). True once every node has been told."""
    redis.set(revoked_jti(tenant, jti), "1", ex=max(1, seconds))
    return wait_until_nodes_told(redis)


def disable_agent(redis: Any, tenant: str, extension: str, node: str = "cli") -> bool:
    """Refuse the agent's credentials and calls to it; the ACD stops seeing it reachable.
    True once every node has been told."""
    from omnicc.acd import AcdSync

    redis.set(agent_disabled(tenant, extension), "1")
    # Unregistered in the ACD's eyes: OFFLINE at once, a ringing reservation withdrawn.
    AcdSync(redis, node).unregister(tenant, extension)
    return wait_until_nodes_told(redis)


def wait_until_nodes_told(redis: Any, timeout: float = 1.0) -> bool:
    """Wait until Redis owes no tracking connection any output: the invalidations of the
    write just made have then left Redis for the Kamailio workers' connections — in their
    sockets when on this host, crossing the network otherwise — and each worker reads them
    before its next decision. (Redis queues them while it runs the write and writes them
    out before it runs this client's next command; only a connection whose socket is full
    keeps some.) False if that is not seen within `timeout` (a busy worker's ordinary
    replies can keep it from being seen), or CLIENT LIST is not allowed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            clients = redis.client_list()
        except Exception:  # an ACL without CLIENT LIST: cannot confirm
            return False
        if all(_output_flushed(client) for client in clients
               if "t" in str(client.get("flags", ""))):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _output_flushed(client: dict[str, Any]) -> bool:
    return all(int(client.get(field, 0) or 0) == 0 for field in ("obl", "oll"))


def enable_agent(redis: Any, tenant: str, extension: str) -> bool:
    return bool(redis.delete(agent_disabled(tenant, extension)))


def is_agent_disabled(redis: Any, tenant: str, extension: str) -> bool:
    return bool(redis.exists(agent_disabled(tenant, extension)))
