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
