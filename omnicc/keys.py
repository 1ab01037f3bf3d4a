"""Redis key names. Every key of a tenant shares the hash tag {t:<tenant>}, so each Lua
script touches one Redis Cluster slot and a tenant can later move to its own shard."""


def tenant_tag(tenant: str) -> str:
    return "{t:" + tenant + "}"


def events_stream(tenant: str) -> str:
    """The tenant's event stream: every call and agent event, in order."""
    return f"{tenant_tag(tenant)}:events"


def revoked_jti(tenant: str, jti: str) -> str:
    """Set while a token id is revoked; expires with the token itself."""
    return f"{tenant_tag(tenant)}:revoked:jti:{jti}"


def agent_disabled(tenant: str, extension: str) -> str:
    """Set while an agent is disabled: none of its tokens or credentials is honoured."""
    return f"{tenant_tag(tenant)}:agent:{extension}:disabled"


# ---------------------------------------------------------------------------- the ACD
# Read by omnicc/acd.py and, through the same functions, by the Lua of omnicc/acd_lua.py:
# the scripts' key helpers are generated from these, so Python and Lua cannot disagree.


def agent_contact(tenant: str, extension: str) -> str:
    """Set while the agent's phone is registered (written by Kamailio after each REGISTER,
    with a TTL equal to the registration's expiry): only a registered agent can be READY."""
    return f"{tenant_tag(tenant)}:agent:{extension}:contact"


def contact_withdrawn(contact_key: str) -> str:
    """Set for a few seconds after an unregistration deleted `contact_key` (same slot): a
    refresh of it written back later (Kamailio's reachability flusher) must not bring it
    back."""
    return f"{contact_key}:withdrawn"


def agent_hash(tenant: str, extension: str) -> str:
    """The agent's ACD state: state, reason, since, call, lease_until, wrapup_until,
    last_ended, calls_taken, wrapup_ms (override)."""
    return f"{tenant_tag(tenant)}:agent:{extension}"


def agent_queues(tenant: str, extension: str) -> str:
    """Set of the queues the agent is a member of."""
    return f"{tenant_tag(tenant)}:agent:{extension}:queues"


def queue_settings(tenant: str, queue: str) -> str:
    """Hash of the queue's settings (strategy, wrap-up, leases, limits)."""
    return f"{tenant_tag(tenant)}:queue:{queue}"


def queue_members(tenant: str, queue: str) -> str:
    """Hash member extension -> penalty."""
    return f"{tenant_tag(tenant)}:queue:{queue}:members"


def queue_skills(tenant: str, queue: str) -> str:
    """Hash member extension -> skill level for this queue (skills-weighted strategy)."""
    return f"{tenant_tag(tenant)}:queue:{queue}:skills"


def queue_positions(tenant: str, queue: str) -> str:
    """Hash member extension -> join order (linear and round-robin strategies)."""
    return f"{tenant_tag(tenant)}:queue:{queue}:positions"


def queue_ready(tenant: str, queue: str) -> str:
    """Sorted set of the queue's READY members, lowest score offered first."""
    return f"{tenant_tag(tenant)}:queue:{queue}:ready"


def queue_waiting(tenant: str, queue: str) -> str:
    """Sorted set of the queue's WAITING calls: higher priority, then longest wait, first."""
    return f"{tenant_tag(tenant)}:queue:{queue}:waiting"


def queue_stats(tenant: str, queue: str) -> str:
    """Hash of the queue's counters (calls offered, answered, abandoned, ...)."""
    return f"{tenant_tag(tenant)}:queue:{queue}:stats"


def queue_agent_states(tenant: str, queue: str) -> str:
    """Hash agent state -> how many of the queue's members are in it."""
    return f"{tenant_tag(tenant)}:queue:{queue}:agent_states"


def queue_calls_taken(tenant: str, queue: str) -> str:
    """Hash member extension -> calls answered from this queue (fewest-calls strategy)."""
    return f"{tenant_tag(tenant)}:queue:{queue}:calls_taken"


def acd_call(tenant: str, call_id: str) -> str:
    """Hash of a queued call: queue, state, priority, enqueued_at, caller, did, node, agent,
    lease_until."""
    return f"{tenant_tag(tenant)}:call:{call_id}"


def call_ringing(tenant: str, call_id: str) -> str:
    """Set of the agents holding a reservation for the call (one, or several for ringall)."""
    return f"{tenant_tag(tenant)}:call:{call_id}:ringing"


def tenant_agents(tenant: str) -> str:
    """Set of every agent extension the ACD has seen."""
    return f"{tenant_tag(tenant)}:agents"


def tenant_queues(tenant: str) -> str:
    """Set of every configured queue."""
    return f"{tenant_tag(tenant)}:queues"


def reservation_leases(tenant: str) -> str:
    """Sorted set agent extension -> the end of its reservation's lease (ms)."""
    return f"{tenant_tag(tenant)}:reservation_leases"


def wrapup_ends(tenant: str) -> str:
    """Sorted set agent extension -> the end of its wrap-up (ms)."""
    return f"{tenant_tag(tenant)}:wrapup_ends"


def call_leases(tenant: str) -> str:
    """Sorted set call id -> the end of its lease (ms), for WAITING calls."""
    return f"{tenant_tag(tenant)}:call_leases"


def connected_leases(tenant: str) -> str:
    """Sorted set call id -> the end of its lease (ms), for CONNECTED calls: renewed by the
    node holding the call; when it runs out the call ends (its node died)."""
    return f"{tenant_tag(tenant)}:connected_leases"


def node_connected(tenant: str, node: str) -> str:
    """Set of the CONNECTED calls held by `node`, whose leases that node renews."""
    return f"{tenant_tag(tenant)}:node:{node}:connected"


def node_offers(tenant: str, node: str) -> str:
    """Pub/sub channel: each reservation of a call held by `node` is published here."""
    return f"{tenant_tag(tenant)}:node:{node}:offers"


# ---------------------------------------------------------------------------- routing


def blacklist(tenant: str) -> str:
    """Hash caller number -> reason: the tenant's blacklist (omnicc/blacklist.py)."""
    return f"{tenant_tag(tenant)}:blacklist"


def do_not_call(tenant: str) -> str:
    """Hash number -> reason: the tenant's do-not-call list (omnicc/do_not_call.py)."""
    return f"{tenant_tag(tenant)}:dnc"


def trunk_channels(tenant: str, trunk: str) -> str:
    """Sorted set channel id -> the end of its lease (ms): the trunk's channels in use on
    every Asterisk node (omnicc/channel_limit.py)."""
    return f"{tenant_tag(tenant)}:trunk:{trunk}:channels"
