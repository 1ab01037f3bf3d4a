"""`omnicc token ...`: make the local secrets, and mint agent credentials.

    omnicc token init                     create missing secrets under var/secrets, print paths
    omnicc token agent EXT [--tenant T] [--ttl 8h] [--role agent|supervisor]
                                          print a bearer token (only the token, for $(...))
    omnicc token digest EXT [--tenant T] [--ttl 24h] [--json]
                                          print "username password" of digest credentials

``omnicc.cli`` adds these with :func:`add_token_commands`. Each handler takes the parsed
arguments (``.config``, ``.var`` and its own) and returns the exit status; problems with
secrets or keys are printed as one clear line on stderr and exit 1. Config errors are left
to ``omnicc.cli.main``, which reports them with file and line.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnicc.auth_secrets import (
    SecretsError,
    ensure_local_secrets,
    read_digest_secret,
    read_signing_key,
)
from omnicc.config import OmniccConfig, Tenant, load_config
from omnicc.ephemeral import MAX_LIFETIME_SECONDS, mint_credentials, tenant_secret
from omnicc.tokens import (
    ROLES,
    JwksError,
    SigningKeyError,
    TokenError,
    load_jwks,
    mint_agent_token,
    verify_agent_token,
)

# The config bounds auth.jwt.token_ttl_seconds to 31 days; --ttl may not exceed it either.
MAX_TOKEN_TTL_SECONDS = 31 * 24 * 3600
_DURATION_RE = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenCommandError(Exception):
    """A request the command cannot carry out; printed as one line, exit status 1."""


Handler = Callable[[argparse.Namespace], int]


def _reporting_errors(handler: Handler) -> Handler:
    """Problems with secrets, keys or the request: one line on stderr and exit status 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (TokenCommandError, SecretsError, JwksError, SigningKeyError) as exc:
            print(f"omnicc token: error: {exc}", file=sys.stderr)
            return 1

    return run


def parse_duration(text: str) -> int:
    """Seconds in ``3600``, ``45s``, ``30m``, ``8h`` or ``2d``."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 3600, 45s, 30m, 8h, 2d)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return seconds


def add_token_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds `token` with its subcommands to the `omnicc` command line."""
    token = subparsers.add_parser(
        "token", help="agent credentials: bearer tokens (JWT) and ephemeral digest logins")
    commands = token.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")

    init = commands.add_parser(
        "init", help="create the missing secrets under var/secrets and print their paths")
    init.set_defaults(func=cmd_token_init)

    agent = commands.add_parser("agent", help="print a bearer token (JWT) for an agent")
    agent.add_argument("extension", metavar="EXT", help="the agent's extension")
    agent.add_argument("--tenant", help="tenant name (default: the first tenant)")
    agent.add_argument("--ttl", type=parse_duration,
                       help="lifetime, e.g. 8h, 30m, 3600 (default: auth.jwt.token_ttl_seconds)")
    agent.add_argument("--role", choices=ROLES, default="agent")
    agent.set_defaults(func=cmd_token_agent)

    digest = commands.add_parser(
        "digest", help="print time-limited digest credentials: username password")
    digest.add_argument("extension", metavar="EXT", help="the agent's extension")
    digest.add_argument("--tenant", help="tenant name (default: the first tenant)")
    digest.add_argument("--ttl", type=parse_duration,
                        help="lifetime (default: auth.digest.credential_ttl_seconds)")
    digest.add_argument("--json", action="store_true",
                        help="print a JSON object instead of `username password`")
    digest.set_defaults(func=cmd_token_digest)

    revoke = commands.add_parser(
        "revoke", help="refuse a token from now on, on every Kamailio node")
    revoke.add_argument("jti", help="the token's jti claim")
    revoke.add_argument("--tenant", help="tenant name (default: the first tenant)")
    revoke.add_argument("--for", dest="seconds", type=parse_duration,
                        default=MAX_TOKEN_TTL_SECONDS,
                        help="how long to keep refusing it: the token's remaining life "
                             "(default: the longest a token can live)")
    revoke.set_defaults(func=cmd_token_revoke)


def _redis(args: argparse.Namespace, config: OmniccConfig) -> Any:
    import redis

    services = config.services
    return redis.Redis(host=services.listen, port=services.redis.port, socket_timeout=5)


@_reporting_errors
def cmd_token_revoke(args: argparse.Namespace) -> int:
    from omnicc.revocation import NOT_CONFIRMED, revoke_token

    config = load_config(args.config)
    tenant = config.tenant(args.tenant) if args.tenant else config.tenants[0]
    if tenant is None:
        raise TokenCommandError(f"no tenant named {args.tenant!r} in {args.config}")
    told = revoke_token(_redis(args, config), tenant.name, args.jti, args.seconds)
    print(f"token {args.jti} of tenant {tenant.name} revoked for {args.seconds} s")
    if not told:
        print(NOT_CONFIRMED, file=sys.stderr)
    return 0


@_reporting_errors
def cmd_token_init(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ensured = ensure_local_secrets(config, args.config, Path(args.var))
    for secret_file in ensured.files.all():
        if secret_file.path in ensured.created:
            state = "created"
        elif secret_file.path in ensured.updated:
            state = "updated"
        else:
            state = "given" if secret_file.given else "exists"
        print(f"{secret_file.config_key}: {secret_file.path} ({state})")
    if ensured.files.signing_key is None:
        print("auth.jwt.signing_key_file: not set (tokens come from the issuer of the JWKS)")
    return 0


@_reporting_errors
def cmd_token_agent(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tenant = _agent_tenant(config, args.tenant, args.extension)
    ttl = _ttl(args.ttl, config.auth.jwt.token_ttl_seconds, MAX_TOKEN_TTL_SECONDS)
    # Secrets are made on first use, so `$(omnicc token agent 1001)` works on a fresh
    # checkout without a separate `token init`.
    files = ensure_local_secrets(config, args.config, Path(args.var)).files
    jwt_auth = config.auth.jwt
    now = time.time()
    token = mint_agent_token(
        read_signing_key(files), kid=jwt_auth.signing_kid, algorithm=jwt_auth.algorithm,
        issuer=jwt_auth.issuer, audience=tenant.domain, subject=args.extension,
        role=args.role, ttl_seconds=ttl, now=now,
    )
    # A token Kamailio would refuse is worse than none: check it against the JWKS that
    # Kamailio reads (a given signing key may not be among a given JWKS's keys).
    try:
        verify_agent_token(token, load_jwks(files.jwks.path), issuer=jwt_auth.issuer,
                           audience=tenant.domain, now=now)
    except TokenError as exc:
        raise TokenCommandError(
            f"the token would be refused by the keys in {files.jwks.config_key} "
            f"({files.jwks.path}): {exc}") from None
    print(token)
    return 0


@_reporting_errors
def cmd_token_digest(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tenant = _agent_tenant(config, args.tenant, args.extension)
    ttl = _ttl(args.ttl, config.auth.digest.credential_ttl_seconds, MAX_LIFETIME_SECONDS)
    files = ensure_local_secrets(config, args.config, Path(args.var)).files
    secret = tenant_secret(read_digest_secret(files), tenant.name)
    now = time.time()
    username, password = mint_credentials(secret, args.extension, ttl_seconds=ttl, now=now)
    if args.json:
        print(json.dumps({
            "username": username, "password": password, "extension": args.extension,
            "tenant": tenant.name, "domain": tenant.domain,
            "expires_at": int(username.split(":", 1)[0]),
        }))
    else:
        print(f"{username} {password}")
    return 0


def _agent_tenant(config: OmniccConfig, tenant_name: str | None, extension: str) -> Tenant:
    """The tenant asked for (the first by default), which must have this agent."""
    tenant = config.tenants[0] if tenant_name is None else config.tenant(tenant_name)
    if tenant is None:
        names = ", ".join(t.name for t in config.tenants)
        raise TokenCommandError(f"no tenant {tenant_name!r} (tenants: {names})")
    if tenant.agent(extension) is None:
        known = ", ".join(a.extension for a in tenant.agents) or "none"
        raise TokenCommandError(f"{extension!r} is not an agent of tenant {tenant.name} "
                                f"(its agents: {known})")
    return tenant


def _ttl(requested: int | None, default: int, maximum: int) -> int:
    ttl = default if requested is None else requested
    if ttl > maximum:
        raise TokenCommandError(f"--ttl of {ttl} s is longer than the maximum of {maximum} s")
    return ttl
