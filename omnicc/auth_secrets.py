"""The files that hold authentication secrets: where they are, and making the local ones.

Three files, each named by a config key or defaulted under ``<var>/secrets/``:

- ``auth.jwt.jwks_file`` (``jwks.json``): the public keys tokens verify under;
- ``auth.jwt.signing_key_file`` (``signing-key.pem``): the private key ``token agent`` signs
  with;
- ``auth.digest.ephemeral_secret_file`` (``digest.secret``): the shared secret of the
  ephemeral digest credentials (each tenant's own is derived from it).

A path given in the config is the user's: it must exist, and omnicc never writes it. A
default path is omnicc's own: :func:`ensure_local_secrets` creates what is missing (the
directory 0700, files 0600, each written whole under a temporary name and linked into place,
so a reader never sees half a key and a file that appeared meanwhile is never replaced).

When ``auth.jwt.jwks_file`` is given but ``auth.jwt.signing_key_file`` is not, tokens come
from an outside identity provider: omnicc makes no signing key, since tokens it signed
with a key of its own would not verify under that provider's JWKS.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnicc.config import OmniccConfig
from omnicc.ephemeral import MIN_SECRET_BYTES
from omnicc.tokens import SigningKeyError, generate_signing_key, jwks_document, public_jwk

SECRETS_DIR_NAME = "secrets"
DEFAULT_JWKS_NAME = "jwks.json"
DEFAULT_SIGNING_KEY_NAME = "signing-key.pem"
DEFAULT_DIGEST_SECRET_NAME = "digest.secret"

JWKS_KEY = "auth.jwt.jwks_file"
SIGNING_KEY_KEY = "auth.jwt.signing_key_file"
DIGEST_SECRET_KEY = "auth.digest.ephemeral_secret_file"

# The members that identify a public key, per RFC 7638 (JWK thumbprints).
_PUBLIC_KEY_MEMBERS = ("kty", "crv", "x", "y", "n", "e")


class SecretsError(Exception):
    """A secret file that is missing, unreadable or inconsistent; the message names the
    config key it comes from."""


@dataclass(frozen=True)
class SecretFile:
    config_key: str  # e.g. "auth.jwt.jwks_file"
    path: Path
    given: bool  # named in the config (the user's), or a default under var/secrets (ours)


@dataclass(frozen=True)
class AuthSecretFiles:
    jwks: SecretFile
    # None: an outside issuer signs tokens (a JWKS is given and no signing key).
    signing_key: SecretFile | None
    digest_secret: SecretFile

    def all(self) -> list[SecretFile]:
        return [f for f in (self.jwks, self.signing_key, self.digest_secret) if f is not None]


@dataclass(frozen=True)
class EnsuredSecrets:
    files: AuthSecretFiles
    created: tuple[Path, ...]  # files that did not exist
    updated: tuple[Path, ...]  # our JWKS, when it gained the signing key's public key


def secrets_dir(var_dir: Path) -> Path:
    return Path(var_dir) / SECRETS_DIR_NAME


def resolve_secret_files(
    config: OmniccConfig, config_path: str | Path, var_dir: str | Path
) -> AuthSecretFiles:
    """Where each secret is: a configured path (relative to the config file's directory),
    or its default under ``<var>/secrets/``."""
    config_dir = Path(config_path).resolve().parent
    defaults = secrets_dir(Path(var_dir).resolve())

    def resolve(config_key: str, configured: str | None, default_name: str) -> SecretFile:
        if configured is None:
            return SecretFile(config_key, defaults / default_name, given=False)
        return SecretFile(config_key, config_dir / Path(configured).expanduser(), given=True)

    jwt_auth, digest_auth = config.auth.jwt, config.auth.digest
    jwks = resolve(JWKS_KEY, jwt_auth.jwks_file, DEFAULT_JWKS_NAME)
    signing_key: SecretFile | None = resolve(SIGNING_KEY_KEY, jwt_auth.signing_key_file,
                                             DEFAULT_SIGNING_KEY_NAME)
    if jwks.given and jwt_auth.signing_key_file is None:
        signing_key = None
    digest_secret = resolve(DIGEST_SECRET_KEY, digest_auth.ephemeral_secret_file,
                            DEFAULT_DIGEST_SECRET_NAME)
    return AuthSecretFiles(jwks=jwks, signing_key=signing_key, digest_secret=digest_secret)


def ensure_local_secrets(
    config: OmniccConfig, config_path: str | Path, var_dir: str | Path
) -> EnsuredSecrets:
    """Checks the given secret files exist and creates the missing default ones.

    Idempotent: a second call creates and changes nothing. A default JWKS that lacks the
    signing key's kid gains it (keeping the keys it has, so tokens of an older kid still
    verify: rotating is removing signing-key.pem and changing ``auth.jwt.signing_kid``)."""
    files = resolve_secret_files(config, config_path, var_dir)
    missing = [f"{f.config_key}: {f.path} does not exist"
               for f in files.all() if f.given and not f.path.is_file()]
    if missing:
        raise SecretsError("\n".join(missing))

    created: list[Path] = []
    updated: list[Path] = []
    if any(not f.given for f in files.all()):
        _make_private_dir(secrets_dir(Path(var_dir).resolve()))

    if not files.digest_secret.given:
        # Printable, so the same secret can also be given to Kamailio's auth_ephemeral or
        # a TURN server as a modparam string.
        text = secrets.token_urlsafe(32) + "\n"
        if _create_exclusively(files.digest_secret.path, text.encode("ascii")):
            created.append(files.digest_secret.path)

    signing_key = files.signing_key
    if signing_key is not None and not signing_key.given and not signing_key.path.exists():
        pem = generate_signing_key(config.auth.jwt.algorithm)
        if _create_exclusively(signing_key.path, pem):
            created.append(signing_key.path)

    if not files.jwks.given and signing_key is not None:
        jwk = signing_public_jwk(config, files)
        changed = _add_to_own_jwks(files.jwks, jwk)
        if changed == "created":
            created.append(files.jwks.path)
        elif changed == "updated":
            updated.append(files.jwks.path)
    return EnsuredSecrets(files, tuple(created), tuple(updated))


def read_signing_key(files: AuthSecretFiles) -> bytes:
    """The PEM that ``omnicc token agent`` signs with."""
    if files.signing_key is None:
        raise SecretsError(
            f"{SIGNING_KEY_KEY} is not set and {JWKS_KEY} names the keys of an outside "
            f"issuer ({files.jwks.path}): omnicc cannot sign tokens that verify under them; "
            f"set {SIGNING_KEY_KEY} to the key of one of its kids"
        )
    return _read(files.signing_key)


def signing_public_jwk(config: OmniccConfig, files: AuthSecretFiles) -> dict[str, Any]:
    """The public JWK of the signing key, under ``auth.jwt.signing_kid``."""
    pem = read_signing_key(files)
    try:
        return public_jwk(pem, config.auth.jwt.signing_kid, config.auth.jwt.algorithm)
    except SigningKeyError as exc:
        where = files.signing_key.path if files.signing_key else "?"
        raise SecretsError(f"{SIGNING_KEY_KEY}: {where}: {exc} "
                           f"(auth.jwt.algorithm is {config.auth.jwt.algorithm})") from None


def read_digest_secret(files: AuthSecretFiles) -> bytes:
    """The shared digest secret: the file's content without surrounding whitespace."""
    secret_file = files.digest_secret
    secret = _read(secret_file).strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretsError(f"{secret_file.config_key}: {secret_file.path} holds fewer than "
                           f"{MIN_SECRET_BYTES} bytes; a short secret can be guessed")
    return secret


# Kamailio's auth module makes its digest nonces under a secret; nodes that share it accept
# each other's nonces (a phone whose next request lands on another node is not refused).
_NONCE_SECRET_LABEL = b"omnicc kamailio digest nonce secret\x00"


def nonce_secret(files: AuthSecretFiles) -> str:
    """The secret every Kamailio node makes its digest nonces under: derived from the
    shared digest secret (so every node that can check ephemeral credentials has it), hex
    text for ``modparam("auth", "secret", ...)``."""
    return hmac.new(read_digest_secret(files), _NONCE_SECRET_LABEL, hashlib.sha256).hexdigest()


def _read(secret_file: SecretFile) -> bytes:
    try:
        return secret_file.path.read_bytes()
    except FileNotFoundError:
        hint = "" if secret_file.given else " (`omnicc token init` creates it)"
        raise SecretsError(f"{secret_file.config_key}: {secret_file.path} does not exist"
                           f"{hint}") from None
    except OSError as exc:
        raise SecretsError(f"{secret_file.config_key}: cannot read {secret_file.path}: "
                           f"{exc.strerror or exc}") from None


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask, and the directory may predate us.
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)


def _create_exclusively(path: Path, content: bytes) -> bool:
    """Writes ``path`` (mode 0600) unless it exists; True when this call created it.

    Written under a temporary name and hard-linked into place: the link appears with the
    whole content or not at all, and fails if the path appeared meanwhile (another
    `omnicc token init`), so nothing is ever overwritten."""
    if path.exists():
        return False
    temporary = _write_temporary(path, content)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    return True


def _write_temporary(beside: Path, content: bytes) -> Path:
    temporary = beside.with_name(f".{beside.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return temporary


def _add_to_own_jwks(jwks_file: SecretFile, jwk: dict[str, Any]) -> str | None:
    """Puts ``jwk`` into omnicc's own JWKS file: "created", "updated", or None when it was
    there already. A different key under the same kid is an error, never overwritten:
    tokens signed with it would stop verifying."""
    content = _jwks_bytes(jwks_document([jwk]))
    if _create_exclusively(jwks_file.path, content):
        return "created"
    try:
        document = json.loads(_read(jwks_file))
        keys = document["keys"]
        if not isinstance(keys, list):
            raise TypeError("keys is not a list")
    except (ValueError, TypeError, KeyError) as exc:
        raise SecretsError(f"{jwks_file.config_key}: {jwks_file.path} is not a JWKS "
                           f"({exc}); move it away and run `omnicc token init`") from None
    for existing in keys:
        if isinstance(existing, dict) and existing.get("kid") == jwk["kid"]:
            if _same_public_key(existing, jwk):
                return None
            raise SecretsError(
                f"{jwks_file.config_key}: {jwks_file.path} holds another key under kid "
                f"{jwk['kid']!r} than the signing key; to rotate, set auth.jwt.signing_kid "
                "to a new kid"
            )
    temporary = _write_temporary(jwks_file.path, _jwks_bytes({**document, "keys": [*keys, jwk]}))
    os.replace(temporary, jwks_file.path)
    return "updated"


def _same_public_key(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(member) == b.get(member) for member in (*_PUBLIC_KEY_MEMBERS, "alg"))


def _jwks_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")

