"""omnicc/ephemeral.py and `omnicc token digest`: auth_ephemeral-style credentials round-trip,
expire, refuse anything that is not EXPIRY:EXTENSION, and do not cross tenants."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnicc.auth_secrets import read_digest_secret, resolve_secret_files
from omnicc.config import parse_config
from omnicc.ephemeral import (
    MAX_LIFETIME_SECONDS,
    EphemeralError,
    check_credentials,
    mint_credentials,
    parse_username,
    password_for,
    passwords_equal,
    tenant_secret,
)
from omnicc.token_cli import add_token_commands

SECRET = b"a shared secret of 32 bytes here"
NOW = 1_800_000_000.0


def reason_of(username: str, now: float = NOW) -> str:
    with pytest.raises(EphemeralError) as caught:
        parse_username(username, now=now)
    return caught.value.reason


def test_round_trip() -> None:
    username, password = mint_credentials(SECRET, "1001", ttl_seconds=3600, now=NOW)
    assert username == f"{int(NOW) + 3600}:1001"
    assert parse_username(username, now=NOW) == "1001"
    assert password == password_for(SECRET, username)
    assert check_credentials(SECRET, username, password, now=NOW) == "1001"


def test_password_is_base64_of_hmac_sha256_as_auth_ephemeral_computes_it() -> None:
    username = "1800003600:1001"
    expected = base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha256).digest())
    assert password_for(SECRET, username) == expected.decode()
    assert len(password_for(SECRET, username)) == 44  # 32 bytes, padded base64


def test_expired_is_refused() -> None:
    username, password = mint_credentials(SECRET, "1001", ttl_seconds=60, now=NOW)
    assert parse_username(username, now=NOW + 59) == "1001"
    assert reason_of(username, now=NOW + 60) == "expired"
    assert reason_of(username, now=NOW + 86400) == "expired"
    with pytest.raises(EphemeralError) as caught:
        check_credentials(SECRET, username, password, now=NOW + 61)
    assert caught.value.reason == "expired"


def test_the_old_non_ietf_order_is_refused() -> None:
    # auth_ephemeral's username_format 0 is "extension:expiry": read in our order, its
    # expiry is the extension, long past.
    assert reason_of("1001:1800003600") == "expired"


def test_expiry_absurdly_far_ahead_is_malformed() -> None:
    assert parse_username(f"{int(NOW) + MAX_LIFETIME_SECONDS}:1001", now=NOW) == "1001"
    assert reason_of(f"{int(NOW) + MAX_LIFETIME_SECONDS + 1}:1001") == "malformed"
    assert reason_of("999999999999:1001") == "malformed"


@pytest.mark.parametrize("username", [
    "", "1001", "1800003600", "1800003600:", ":1001", "1800003600-1001",
    "18OO003600:1001",            # letters in the expiry
    "+1800003600:1001", "1800003600.5:1001", " 1800003600:1001",
    "1800003600:10a1",            # extension not digits
    "1800003600:1",               # extension too short
    "1800003600:1234567890123",   # extension too long
    "1800003600:1001:x", "1800003600:1001\n", "1800003600:1001@default.omnicc.test",
    "\u0661\u0668\u0660\u0660\u0660\u0660\u0663\u0666\u0660\u0660:1001",  # Arabic-Indic digits
    "1800003600:" + "1" * 100,
])
def test_malformed_usernames_are_refused(username: str) -> None:
    assert reason_of(username) == "malformed"


@given(st.text(max_size=80))
def test_any_text_is_an_extension_or_an_ephemeral_error(username: str) -> None:
    try:
        extension = parse_username(username, now=NOW)
    except EphemeralError as exc:
        assert exc.reason in {"malformed", "expired"}
    else:
        assert extension.isdigit() and username.endswith(":" + extension)


def test_wrong_password_does_not_match() -> None:
    username, password = mint_credentials(SECRET, "1001", ttl_seconds=3600, now=NOW)
    other_secret = b"another secret, long enough"
    for wrong in ("", password[:-1], password.lower(), password_for(other_secret, username)):
        assert not passwords_equal(wrong, password)
        with pytest.raises(EphemeralError) as caught:
            check_credentials(SECRET, username, wrong, now=NOW)
        assert caught.value.reason == "bad_password"


def test_a_password_is_for_its_username_only() -> None:
    username, password = mint_credentials(SECRET, "1001", ttl_seconds=3600, now=NOW)
    # Moving the expiry or the extension needs a new password.
    for other in (f"{int(NOW) + 7200}:1001", f"{int(NOW) + 3600}:1002"):
        with pytest.raises(EphemeralError):
            check_credentials(SECRET, other, password, now=NOW)


def test_credentials_of_one_tenant_are_not_credentials_of_another() -> None:
    default_secret = tenant_secret(SECRET, "default")
    acme_secret = tenant_secret(SECRET, "acme")
    assert default_secret != acme_secret
    assert default_secret == tenant_secret(SECRET, "default")  # deterministic
    username, password = mint_credentials(default_secret, "1001", ttl_seconds=3600, now=NOW)
    assert check_credentials(default_secret, username, password, now=NOW) == "1001"
    with pytest.raises(EphemeralError):
        check_credentials(acme_secret, username, password, now=NOW)
    # Printable, so Kamailio's auth_ephemeral could take it as its secret modparam.
    assert default_secret.decode("ascii").isalnum()


def test_minting_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        mint_credentials(SECRET, "10a1", ttl_seconds=60, now=NOW)
    with pytest.raises(ValueError):
        mint_credentials(SECRET, "1001\n", ttl_seconds=60, now=NOW)
    with pytest.raises(ValueError):
        mint_credentials(SECRET, "1001", ttl_seconds=0, now=NOW)
    with pytest.raises(ValueError):
        mint_credentials(SECRET, "1001", ttl_seconds=MAX_LIFETIME_SECONDS + 1, now=NOW)
    with pytest.raises(ValueError):
        mint_credentials(b"short", "1001", ttl_seconds=60, now=NOW)


# ---------------------------------------------------------------------------- CLI

CONFIG_TEXT = """
tenants:
  - name: default
    domain: default.omnicc.test
    agents:
      - {extension: "1001", password: "demo-pass-1001"}
  - name: acme
    domain: acme.omnicc.test
    agents:
      - {extension: "1001", password: "demo-pass-acme"}
"""


def run_cli(tmp_path: Path, *argv: str) -> int:
    config_path = tmp_path / "omnicc.yaml"
    if not config_path.exists():
        config_path.write_text(CONFIG_TEXT)
    parser = argparse.ArgumentParser(prog="omnicc")
    parser.add_argument("-c", "--config")
    parser.add_argument("--var")
    add_token_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["-c", str(config_path), "--var", str(tmp_path / "var"), *argv])
    return args.func(args)


def shared_secret(tmp_path: Path) -> bytes:
    config_path = tmp_path / "omnicc.yaml"
    config = parse_config(config_path.read_text(), str(config_path))
    return read_digest_secret(resolve_secret_files(config, config_path, tmp_path / "var"))


def test_token_digest_prints_username_and_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tmp_path, "token", "digest", "1001", "--ttl", "2h") == 0
    username, password = capsys.readouterr().out.split()
    now = time.time()
    assert parse_username(username, now=now) == "1001"
    assert 7200 - 5 <= int(username.split(":")[0]) - now <= 7200
    secret = tenant_secret(shared_secret(tmp_path), "default")
    assert check_credentials(secret, username, password, now=now) == "1001"


def test_token_digest_json_for_another_tenant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tmp_path, "token", "digest", "1001", "--tenant", "acme", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tenant"] == "acme" and printed["domain"] == "acme.omnicc.test"
    assert printed["extension"] == "1001"
    assert printed["username"] == f"{printed['expires_at']}:1001"
    assert printed["expires_at"] - time.time() > 23 * 3600  # the config's default of 24 h
    acme = tenant_secret(shared_secret(tmp_path), "acme")
    default = tenant_secret(shared_secret(tmp_path), "default")
    assert check_credentials(acme, printed["username"], printed["password"],
                             now=time.time()) == "1001"
    with pytest.raises(EphemeralError):
        check_credentials(default, printed["username"], printed["password"], now=time.time())


def test_token_digest_refuses_an_unknown_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tmp_path, "token", "digest", "1009") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'1009' is not an agent of tenant default" in captured.err


def test_token_digest_refuses_a_short_given_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "omnicc.yaml").write_text(
        CONFIG_TEXT + "auth:\n  digest:\n    ephemeral_secret_file: short.secret\n")
    (tmp_path / "short.secret").write_text("tiny\n")
    assert run_cli(tmp_path, "token", "digest", "1001") == 1
    assert "auth.digest.ephemeral_secret_file" in capsys.readouterr().err
