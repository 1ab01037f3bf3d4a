"""Render the Kamailio and Asterisk configuration files from the templates at the top of
the checkout (kamailio.cfg.j2, extensions.conf.j2, pjsip.conf.j2, ...).

Two uses: the local stack (`omnicc up` renders into var/etc with its own directories), and
`omnicc render --out DIR` for users who deploy into their own Kamailio and Asterisk.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

from omnicc.config import OmniccConfig
from omnicc.sip_security import htable_definitions

REPO_ROOT = Path(__file__).resolve().parent.parent
KEMI_SCRIPT = REPO_ROOT / "kemi" / "omnicc_kemi.py"
DIALPLAN_FILE = REPO_ROOT / "dialplan" / "omnicc.conf"


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPO_ROOT)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if mode is None:
        tmp.write_text(text, encoding="utf-8")
    else:  # created with its mode: the text is never readable by others, not even briefly
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    tmp.replace(path)
    return path


# kamailio.cfg imports it (import_file: a missing file is not an error, Kamailio then makes
# a random nonce secret of its own, which a node alone can live with).
SECRETS_CFG_NAME = "kamailio-secrets.cfg"
NONCE_SECRET_RE = re.compile(r"[0-9a-f]{32,128}")


# The trunks' credentials (pjsip type=auth), apart from pjsip.conf: written with mode 0600.
TRUNK_AUTH_NAME = "pjsip_trunk_auth.conf"


# Small files a stand-alone Asterisk wants so that it neither complains nor runs features
# omnicc does not use (AMI, CDR files: the event stream is the call record).
STACK_ASTERISK_FILES = {
    "cdr.conf": "[general]\nenable = no\n",
    "cel.conf": "[general]\nenable = no\n",
    "manager.conf": "[general]\nenabled = no\n",
    # The agent's on-demand recording code (dialplan omnicc-record-toggle): a channel has
    # it only when its DYNAMIC_FEATURES names it (an answered call of an on_demand queue).
    "features.conf": ("[general]\n\n[applicationmap]\n"
                      "omnicc-record => *3,self,Gosub(omnicc-record-toggle,s,1)\n"),
    "acl.conf": "",
    "udptl.conf": "[general]\n",
    "pjproject.conf": "",
    "indications.conf": (
        "[general]\ncountry = us\n\n[us]\ndescription = United States\n"
        "ringcadence = 2000,4000\ndial = 350+440\nbusy = 480+620/500,0/500\n"
        "ring = 440+480/2000,0/4000\ncongestion = 480+620/250,0/250\n"
    ),
}


@dataclass(frozen=True)
class AsteriskDirs:
    """Directories of an Asterisk the stack runs (as seen from inside its root)."""

    etc: str
    mod: str
    varlib: str
    data: str
    db: str
    spool: str
    run: str
    log: str


def render_kamailio(
    config: OmniccConfig,
    out_dir: Path,
    *,
    kemi_script: Path = KEMI_SCRIPT,
    dispatcher_list: Path | None = None,
    rundir: Path | None = None,
    log_stderr: bool = False,
    children: int = 4,
    nonce_secret: str | None = None,
    secrets_cfg: Path | None = None,
) -> list[Path]:
    """Write kamailio.cfg and dispatcher.list into out_dir, and with a nonce_secret
    kamailio-secrets.cfg (mode 0600), which kamailio.cfg imports from `secrets_cfg`
    (default: beside it in out_dir)."""
    dispatcher_list = dispatcher_list or out_dir / "dispatcher.list"
    secrets_cfg = secrets_cfg or out_dir / SECRETS_CFG_NAME
    cfg = _env().get_template("kamailio.cfg.j2").render(
        config=config,
        sip_port=config.services.kamailio.port,
        kemi_script=str(kemi_script),
        dispatcher_list=str(dispatcher_list),
        rundir=str(rundir) if rundir else "",
        log_stderr=log_stderr,
        children=children,
        tcp_children=max(2, children // 2),
        htables=htable_definitions(config.security, clustered=bool(config.kamailio_peers)),
        dmq_peers=config.kamailio_peers,
        secrets_cfg=str(secrets_cfg),
    )
    lines = ["# dispatcher.list — the Asterisk nodes (set 1), rendered by omnicc",
             "# setid destination flags priority attributes"]
    for node in config.dispatcher_nodes:
        lines.append(f"1 {node.uri} 0 0 duid={node.host}:{node.port}")
    # The list is always written beside kamailio.cfg; `dispatcher_list` is where the
    # deployed kamailio.cfg will look for it.
    written = [
        _write(out_dir / "kamailio.cfg", cfg),
        _write(out_dir / "dispatcher.list", "\n".join(lines) + "\n"),
    ]
    if nonce_secret is not None:
        if not NONCE_SECRET_RE.fullmatch(nonce_secret):
            raise ValueError("the nonce secret is hex text")
        written.append(_write(out_dir / SECRETS_CFG_NAME,
                              "# Secrets of kamailio.cfg, rendered by omnicc; keep this file "
                              "0600.\n"
                              f'modparam("auth", "secret", "{nonce_secret}")\n', mode=0o600))
    return written


def render_asterisk(
    config: OmniccConfig,
    out_dir: Path,
    *,
    dirs: AsteriskDirs | None = None,
    rtp_ports: tuple[int, int] = (10000, 20000),
) -> list[Path]:
    """Write the Asterisk configs; with `dirs`, also those only a whole stack needs."""
    services = config.services
    context = {
        "config": config,
        "ast": dirs,
        "agi_url": f"agi://{services.listen}:{services.agi.port}",
        "kamailio_host": services.listen,
        "kamailio_uri": f"sip:{services.listen}:{services.kamailio.port}",
        "asterisk_bind": f"{services.listen}:{services.asterisk.port}",
        "dialplan_file": "omnicc.conf",
        "rtp_start": rtp_ports[0],
        "rtp_end": rtp_ports[1],
        "moh_classes": sorted({q.moh_class for t in config.tenants for q in t.queues
                               if q.moh_class and q.moh_class != "default"}),
    }
    context["trunk_auth_file"] = TRUNK_AUTH_NAME
    env = _env()
    names = ["extensions.conf", "pjsip.conf"]
    if dirs is not None:
        names += ["asterisk.conf", "modules.conf", "logger.conf", "rtp.conf",
                  "musiconhold.conf"]
    written = [
        _write(out_dir / name, env.get_template(name + ".j2").render(**context)) for name in names
    ]
    # The trunks' passwords: readable by Asterisk's user only (pjsip.conf includes it).
    written.append(_write(out_dir / TRUNK_AUTH_NAME,
                          env.get_template(TRUNK_AUTH_NAME + ".j2").render(**context),
                          mode=0o600))
    if dirs is not None:
        written += [_write(out_dir / name, text) for name, text in STACK_ASTERISK_FILES.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DIALPLAN_FILE, out_dir / "omnicc.conf")
    written.append(out_dir / "omnicc.conf")
    return written
