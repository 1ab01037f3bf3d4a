"""Every dialplan function and application dialplan/omnicc.conf uses is loaded by the
stack's modules.conf (autoload = no). A missing one is no start-up error: Asterisk logs
"Function CUT not registered" on each call and the expression is silently empty."""

from __future__ import annotations

import re

from omnicc.render import DIALPLAN_FILE, REPO_ROOT

# Where each name lives; "core" is built into Asterisk itself (pbx.c, pbx_builtins.c).
FUNCTION_MODULES = {
    "CHANNEL": "func_channel.so",
    "CUT": "func_cut.so",
    "FILTER": "func_strings.so",
    "IF": "func_logic.so",
    "IMPORT": "func_logic.so",
    "PJSIP_HEADER": "res_pjsip_header_funcs.so",
    "URIENCODE": "func_uri.so",
}
APPLICATION_MODULES = {
    "AGI": "res_agi.so",
    "Answer": "core",
    "Dial": "app_dial.so",
    "Goto": "core",
    "GotoIf": "core",
    "Hangup": "core",
    "MixMonitor": "app_mixmonitor.so",
    "StopMixMonitor": "app_mixmonitor.so",
    "Playback": "app_playback.so",
    "Read": "app_read.so",
    "Progress": "core",
    "Return": "app_stack.so",
    "SayNumber": "core",
    "Set": "core",
    "StartMusicOnHold": "res_musiconhold.so",
    "StopMusicOnHold": "res_musiconhold.so",
}


def _dialplan_lines() -> list[str]:
    lines = []
    for line in DIALPLAN_FILE.read_text().splitlines():
        code = line.split(";", 1)[0]  # comments may name functions in prose
        if code.strip():
            lines.append(code)
    return lines


def used_functions() -> set[str]:
    found = set()
    for line in _dialplan_lines():
        found |= set(re.findall(r"\$\{([A-Z_]+)\(", line))
        found |= set(re.findall(r"Set\(([A-Z_]+)\(", line))  # Set(CHANNEL(x)=...)
    return found


def used_applications() -> set[str]:
    apps = set()
    for line in _dialplan_lines():
        match = re.match(r"\s*(?:exten\s*=>\s*[^,]+,\s*[^,]+|same\s*=>\s*[^,(]+(?:\([^)]*\))?)"
                         r",\s*([A-Za-z]+)\(", line)
        if match:
            apps.add(match.group(1))
    return apps


def loaded_modules() -> set[str]:
    text = (REPO_ROOT / "modules.conf.j2").read_text()
    return set(re.findall(r"^load\s*=\s*(\S+)", text, re.MULTILINE))


def test_the_dialplan_parser_finds_what_it_should() -> None:
    assert {"URIENCODE", "CUT", "FILTER", "CHANNEL"} <= used_functions()
    assert {"AGI", "Dial", "Set", "Hangup", "GotoIf"} <= used_applications()


def test_every_dialplan_function_is_loaded() -> None:
    unknown = used_functions() - set(FUNCTION_MODULES)
    assert not unknown, f"add {sorted(unknown)} to FUNCTION_MODULES with the module they need"
    missing = {name: FUNCTION_MODULES[name] for name in used_functions()
               if FUNCTION_MODULES[name] not in loaded_modules()}
    assert not missing, f"modules.conf.j2 does not load {missing}"


def test_every_dialplan_application_is_loaded() -> None:
    unknown = used_applications() - set(APPLICATION_MODULES)
    assert not unknown, f"add {sorted(unknown)} to APPLICATION_MODULES with their module"
    missing = {name: APPLICATION_MODULES[name] for name in used_applications()
               if APPLICATION_MODULES[name] != "core"
               and APPLICATION_MODULES[name] not in loaded_modules()}
    assert not missing, f"modules.conf.j2 does not load {missing}"
