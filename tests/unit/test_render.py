"""omnicc/render.py: Kamailio and Asterisk configs rendered from the example config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnicc.config import OmniccConfig, load_config, parse_config
from omnicc.render import (
    DIALPLAN_FILE,
    KEMI_SCRIPT,
    STACK_ASTERISK_FILES,
    AsteriskDirs,
    render_asterisk,
    render_kamailio,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PATH = REPO_ROOT / "examples" / "omnicc.yaml"

STACK_DIRS = AsteriskDirs(
    etc="/stack/etc/asterisk", mod="/usr/lib/asterisk/modules", varlib="/var/lib/asterisk",
    data="/usr/share/asterisk", db="/stack/data/asterisk", spool="/stack/data/asterisk/spool",
    run="/stack/run/asterisk", log="/stack/log/asterisk",
)

# Two tenants and two explicit Asterisk nodes: what a carrier deployment looks like.
MULTI_TENANT = """
node: edge-2
services: {listen: 10.1.2.3, kamailio: {port: 5070}, asterisk: {port: 5090}, agi: {port: 4600}}
asterisk_nodes:
  - {host: 10.1.2.10, port: 5080}
  - {host: 10.1.2.11}
tenants:
  - {name: acme, domain: acme.example}
  - {name: globex, domain: globex.example}
"""


@pytest.fixture(scope="module")
def example() -> OmniccConfig:
    return load_config(EXAMPLE_PATH)


def read(directory: Path, name: str) -> str:
    return (directory / name).read_text(encoding="utf-8")


def settings_of(text: str) -> list[str]:
    """The non-comment lines of a config file, stripped."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith((";", "#!", "# "))]


def assert_fully_rendered(paths: list[Path]) -> None:
    for path in paths:
        text = path.read_text(encoding="utf-8")
        # StrictUndefined already raises on a missing variable; this also catches a
        # template tag that was escaped or mistyped and copied through verbatim.
        for leftover in ("{{", "}}", "{%", "%}", "{#"):
            assert leftover not in text, f"{path.name} holds {leftover!r}"


# ---------------------------------------------------------------------------- Kamailio


def test_kamailio_cfg_listens_and_loads_the_kemi_script(
    example: OmniccConfig, tmp_path: Path
) -> None:
    written = render_kamailio(example, tmp_path)
    assert written == [tmp_path / "kamailio.cfg", tmp_path / "dispatcher.list"]
    assert_fully_rendered(written)
    cfg = read(tmp_path, "kamailio.cfg")
    assert cfg.startswith("#!KAMAILIO\n")
    lines = settings_of(cfg)
    assert "listen=udp:127.0.0.1:5060" in lines
    assert "listen=tcp:127.0.0.1:5060" in lines
    assert f'modparam("app_python3", "load", "{KEMI_SCRIPT}")' in lines
    assert 'cfgengine "python"' in lines
    assert f'modparam("dispatcher", "list_file", "{tmp_path / "dispatcher.list"}")' in lines
    # Registrar functions called from KEMI need the location table declared at start-up.
    assert 'modparam("usrloc", "preload", "location")' in lines


def test_kamailio_cfg_has_an_alias_per_tenant_domain(tmp_path: Path) -> None:
    render_kamailio(parse_config(MULTI_TENANT), tmp_path)
    lines = settings_of(read(tmp_path, "kamailio.cfg"))
    assert [line for line in lines if line.startswith("alias=")] == [
        'alias="acme.example"', 'alias="globex.example"',
    ]
    assert "listen=udp:10.1.2.3:5070" in lines


def test_dispatcher_list_holds_each_asterisk_node(tmp_path: Path) -> None:
    render_kamailio(parse_config(MULTI_TENANT), tmp_path)
    entries = settings_of(read(tmp_path, "dispatcher.list"))
    assert entries == [
        "1 sip:10.1.2.10:5080 0 0 duid=10.1.2.10:5080",
        "1 sip:10.1.2.11:5080 0 0 duid=10.1.2.11:5080",  # the default port
    ]


def test_dispatcher_list_defaults_to_the_local_asterisk(
    example: OmniccConfig, tmp_path: Path
) -> None:
    render_kamailio(example, tmp_path)
    assert settings_of(read(tmp_path, "dispatcher.list")) == [
        "1 sip:127.0.0.1:5080 0 0 duid=127.0.0.1:5080",
    ]


def test_kamailio_options_reach_the_cfg(example: OmniccConfig, tmp_path: Path) -> None:
    deployed_list = Path("/etc/kamailio/omnicc-dispatcher.list")
    render_kamailio(
        example, tmp_path, kemi_script=Path("/opt/omnicc/kemi/omnicc_kemi.py"),
        dispatcher_list=deployed_list, rundir=Path("/run/omnicc"), log_stderr=True, children=8,
    )
    lines = settings_of(read(tmp_path, "kamailio.cfg"))
    assert 'modparam("app_python3", "load", "/opt/omnicc/kemi/omnicc_kemi.py")' in lines
    assert f'modparam("dispatcher", "list_file", "{deployed_list}")' in lines
    assert 'modparam("jsonrpcs", "fifo_name", "/run/omnicc/kamailio_rpc.fifo")' in lines
    assert {"log_stderror=yes", "children=8", "tcp_children=4"} <= set(lines)
    # The list itself is still written beside kamailio.cfg, for the deployer to copy.
    assert (tmp_path / "dispatcher.list").exists()


def test_rendering_twice_gives_the_same_files_and_leaves_no_temporaries(
    example: OmniccConfig, tmp_path: Path
) -> None:
    first = [p.read_bytes() for p in render_kamailio(example, tmp_path)]
    second = [p.read_bytes() for p in render_kamailio(example, tmp_path)]
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dispatcher.list", "kamailio.cfg"]


# ---------------------------------------------------------------------------- Asterisk


def test_pjsip_binds_the_asterisk_port_and_identifies_kamailio(
    example: OmniccConfig, tmp_path: Path
) -> None:
    render_asterisk(example, tmp_path)
    pjsip = read(tmp_path, "pjsip.conf")
    lines = settings_of(pjsip)
    assert "bind = 127.0.0.1:5080" in lines
    identify = pjsip.split("type = identify", 1)[1]
    assert re.search(r"^match = 127\.0\.0\.1$", identify, re.MULTILINE)
    assert "outbound_proxy = sip:127.0.0.1:5060\\;lr" in lines
    assert "contact = sip:127.0.0.1:5060" in lines


def test_extensions_conf_points_at_the_agi_server_and_includes_the_dialplan(
    example: OmniccConfig, tmp_path: Path
) -> None:
    written = render_asterisk(example, tmp_path)
    lines = settings_of(read(tmp_path, "extensions.conf"))
    assert "OMNICC_AGI = agi://127.0.0.1:4573" in lines
    assert "OMNICC_NODE = demo-1" in lines
    assert '#include "omnicc.conf"' in lines
    # The included dialplan is copied beside it, unchanged.
    assert tmp_path / "omnicc.conf" in written
    assert read(tmp_path, "omnicc.conf") == DIALPLAN_FILE.read_text(encoding="utf-8")


def test_asterisk_ports_follow_the_config(tmp_path: Path) -> None:
    render_asterisk(parse_config(MULTI_TENANT), tmp_path)
    assert "bind = 10.1.2.3:5090" in settings_of(read(tmp_path, "pjsip.conf"))
    assert "OMNICC_AGI = agi://10.1.2.3:4600" in settings_of(read(tmp_path, "extensions.conf"))


def test_without_stack_dirs_only_the_deployable_files_are_written(
    example: OmniccConfig, tmp_path: Path
) -> None:
    written = render_asterisk(example, tmp_path)
    assert_fully_rendered(written)
    deployable = ["extensions.conf", "omnicc.conf", "pjsip.conf", "pjsip_trunk_auth.conf"]
    assert sorted(p.name for p in written) == deployable
    assert sorted(p.name for p in tmp_path.iterdir()) == deployable


def test_with_stack_dirs_asterisk_conf_and_modules_conf_are_written(
    example: OmniccConfig, tmp_path: Path
) -> None:
    out = tmp_path / "etc" / "asterisk"  # render creates missing directories
    written = render_asterisk(example, out, dirs=STACK_DIRS, rtp_ports=(30000, 30100))
    assert_fully_rendered(written)
    names = {p.name for p in written}
    assert {"asterisk.conf", "modules.conf", "logger.conf", "rtp.conf"} <= names
    assert set(STACK_ASTERISK_FILES) <= names
    assert {p.name for p in out.iterdir()} == names

    asterisk_conf = settings_of(read(out, "asterisk.conf"))
    assert "astetcdir => /stack/etc/asterisk" in asterisk_conf
    assert "astmoddir => /usr/lib/asterisk/modules" in asterisk_conf
    assert "astrundir => /stack/run/asterisk" in asterisk_conf
    assert "astlogdir => /stack/log/asterisk" in asterisk_conf

    modules = settings_of(read(out, "modules.conf"))
    assert "autoload = no" in modules
    assert {"load = res_agi.so", "load = chan_pjsip.so", "load = app_dial.so"} <= set(modules)

    assert {"rtpstart = 30000", "rtpend = 30100", "icesupport = no"} <= set(
        settings_of(read(out, "rtp.conf"))
    )


# ---------------------------------------------------------------------------- cluster


CLUSTER = """
node: edge-1
services: {listen: 10.1.2.3, kamailio: {port: 5060}}
kamailio_nodes:
  - {host: 10.1.2.3}
  - {host: 10.1.2.4}
  - {host: 10.1.2.5, port: 5070}
tenants:
  - {name: acme, domain: acme.example}
"""


def test_a_single_node_keeps_its_registrar_and_bans_in_memory_without_dmq(
    example: OmniccConfig, tmp_path: Path
) -> None:
    render_kamailio(example, tmp_path)
    lines = settings_of(read(tmp_path, "kamailio.cfg"))
    assert 'modparam("usrloc", "db_mode", 0)' in lines
    assert 'modparam("usrloc", "preload", "location")' in lines
    assert 'loadmodule "path.so"' not in lines
    assert not any(line.startswith(('loadmodule "dmq', 'modparam("dmq'))
                   or "db_redis" in line or "db_url" in line for line in lines)
    security = example.security
    assert lines.count('loadmodule "htable.so"') == 1
    assert (f'modparam("htable", "htable", "bans=>size=10;autoexpire={security.ban_seconds};'
            'dmqreplicate=0")') in lines
    assert (f'modparam("htable", "htable", "flood=>size=12;'
            f'autoexpire={security.flood_window_seconds};updateexpire=0;initval=0")') in lines
    window = security.auth_failure_window_seconds
    assert (f'modparam("htable", "htable", "authfail=>size=10;'
            f'autoexpire={window};updateexpire=0;initval=0")') in lines
    assert 'modparam("htable", "htable", "withdrawn=>size=8;autoexpire=5;dmqreplicate=0")' in lines
    assert 'modparam("htable", "htable", "unwritten=>size=10;autoexpire=3600")' in lines


def test_a_cluster_node_replicates_registrations_and_bans_to_its_peers(tmp_path: Path) -> None:
    paths = render_kamailio(parse_config(CLUSTER), tmp_path)
    assert_fully_rendered(paths)
    lines = settings_of(read(tmp_path, "kamailio.cfg"))
    for module in ("dmq.so", "dmq_usrloc.so", "path.so"):
        assert f'loadmodule "{module}"' in lines
    assert 'modparam("dmq", "server_address", "sip:10.1.2.3:5060")' in lines
    # Its peers, not itself.
    assert [line for line in lines if "notification_address" in line] == [
        'modparam("dmq", "notification_address", "sip:10.1.2.4:5060")',
        'modparam("dmq", "notification_address", "sip:10.1.2.5:5070")',
    ]
    assert 'modparam("dmq_usrloc", "enable", 1)' in lines
    for setting in ('modparam("registrar", "use_path", 1)',
                    'modparam("registrar", "path_check_local", 1)',
                    'modparam("path", "use_received", 1)'):
        assert setting in lines
    # Not the registrar's own use of received: that would skip the Path's node.
    assert not any("path_use_received" in line for line in lines)
    for table in ("bans", "withdrawn"):
        assert any(line.startswith(f'modparam("htable", "htable", "{table}=>')
                   and "dmqreplicate=1" in line for line in lines)
    # What this node's flusher could not write concerns this node's workers only.
    assert 'modparam("htable", "htable", "unwritten=>size=10;autoexpire=3600")' in lines
    # dmq is loaded before the modules that replicate through it.
    assert lines.index('loadmodule "dmq.so"') < lines.index('loadmodule "dmq_usrloc.so"')
    assert lines.index('loadmodule "dmq.so"') < lines.index('loadmodule "usrloc.so"')
    assert lines.index('loadmodule "dmq.so"') < lines.index('loadmodule "htable.so"')
    assert 'modparam("htable", "enable_dmq", 1)' in lines


def test_the_nonce_secret_is_in_a_file_only_its_owner_reads(
    example: OmniccConfig, tmp_path: Path
) -> None:
    secret = "ab" * 32
    written = render_kamailio(example, tmp_path, nonce_secret=secret)
    secrets_cfg = tmp_path / "kamailio-secrets.cfg"
    assert secrets_cfg in written
    assert secrets_cfg.stat().st_mode & 0o777 == 0o600
    assert f'modparam("auth", "secret", "{secret}")' in settings_of(secrets_cfg.read_text())
    cfg = read(tmp_path, "kamailio.cfg")
    assert f'import_file "{secrets_cfg}"' in settings_of(cfg)
    assert secret not in cfg  # kamailio.cfg itself stays readable by anyone


def test_a_deployed_kamailio_imports_its_secrets_from_its_own_directory(
    example: OmniccConfig, tmp_path: Path
) -> None:
    render_kamailio(example, tmp_path, nonce_secret="cd" * 32,
                    secrets_cfg=Path("/etc/kamailio/kamailio-secrets.cfg"))
    assert 'import_file "/etc/kamailio/kamailio-secrets.cfg"' in settings_of(
        read(tmp_path, "kamailio.cfg"))


def test_a_nonce_secret_that_is_not_hex_is_refused(
    example: OmniccConfig, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="hex"):
        render_kamailio(example, tmp_path, nonce_secret='x")\nmodparam("evil')


def test_render_cli_writes_the_nonce_secret_of_the_shared_digest_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from omnicc import cli
    from omnicc.auth_secrets import nonce_secret, resolve_secret_files

    config_path = tmp_path / "omnicc.yaml"
    config_path.write_text(CLUSTER)
    var = tmp_path / "var"
    base = ["-c", str(config_path), "--var", str(var)]
    # A cluster node without the digest secret would make nonces no other node takes.
    assert cli.main([*base, "render", "--out", str(tmp_path / "out")]) == 1
    assert "shared nonce secret" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli.main([*base, "token", "init"]) == 0
    assert cli.main([*base, "render", "--out", str(tmp_path / "out"),
                     "--kamailio-dir", "/etc/kamailio"]) == 0
    expected = nonce_secret(resolve_secret_files(parse_config(CLUSTER), config_path, var))
    written = (tmp_path / "out" / "kamailio" / "kamailio-secrets.cfg").read_text()
    assert f'modparam("auth", "secret", "{expected}")' in written
    assert 'import_file "/etc/kamailio/kamailio-secrets.cfg"' in (
        tmp_path / "out" / "kamailio" / "kamailio.cfg").read_text()


def test_sha256_digest_is_asked_of_kamailio_only_when_configured(tmp_path: Path) -> None:
    md5 = tmp_path / "md5"
    render_kamailio(parse_config(CLUSTER), md5)
    assert not any('"algorithm"' in line for line in settings_of(read(md5, "kamailio.cfg")))
    sha = tmp_path / "sha"
    render_kamailio(parse_config(CLUSTER + "auth: {digest: {algorithm: SHA-256}}\n"), sha)
    assert 'modparam("auth", "algorithm", "SHA-256")' in settings_of(read(sha, "kamailio.cfg"))
    with pytest.raises(Exception, match="MD5"):
        parse_config(CLUSTER + "auth: {digest: {algorithm: SHA-1}}\n")
