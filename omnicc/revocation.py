"""Revoking tokens and disabling agents: keys in the shared Redis that every Kamailio node
checks on each request (omnicc/agent_auth.py), so a change takes effect at once."""

from __future__ import annotations

from typing import Any

from omnicc.keys import agent_disabled, revoked_jti


def revoke_token(redis: Any, tenant: str, jti: str, seconds: int) -> None:
    """Refuse the token `jti` for `seconds` (its remaining life: after that it has expired
    anyway, and the key goes with it)."""
    redis.set(revoked_jti(tenant, jti), "1", ex=max(1, seconds))


def disable_agent(redis: Any, tenant: str, extension: str, node: str = "cli") -> None:
    """Refuse the agent's credentials and calls to it; the ACD stops seeing it reachable."""
    from omnicc.acd import AcdSync

    redis.set(agent_disabled(tenant, extension), "1")
    # Unregistered in the ACD's eyes: OFFLINE at once, a ringing reservation withdrawn.
    AcdSync(redis, node).unregister(tenant, extension)


def enable_agent(redis: Any, tenant: str, extension: str) -> bool:
    return bool(redis.delete(agent_disabled(tenant, extension)))


def is_agent_disabled(redis: Any, tenant: str, extension: str) -> bool:
    return bool(redis.exists(agent_disabled(tenant, extension)))
