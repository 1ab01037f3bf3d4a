"""omnicc/config.py: the example loads, and every mistake names its key path and file line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnicc.config import ConfigError, OmniccConfig, load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PATH = REPO_ROOT / "examples" / "omnicc.yaml"
EXAMPLE_TEXT = EXAMPLE_PATH.read_text(encoding="utf-8")
FILE_NAME = "omnicc.yaml"  # parse_config's default name for the text it reads


def example_with(*replacements: tuple[str, str]) -> str:
    """The example config with each (old, new) applied; `old` must occur exactly once so a
    change to the example cannot make a test silently edit the wrong line."""
    text = EXAMPLE_TEXT
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the example"
        text = text.replace(old, new)
    return text


def line_of(text: str, marker: str) -> int:
    """The 1-based line holding `marker`, which must occur on exactly one line."""
    found = [number for number, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(found) == 1, f"{marker!r} is on lines {found}"
    return found[0]


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.path == FILE_NAME
    # str() is the problems one a line: what the CLI prints.
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def assert_well_formed(problems: list[str]) -> None:
    """Every problem is a single line that starts with the file name."""
    assert problems
    for problem in problems:
        assert problem.startswith(FILE_NAME), problem
        assert "\n" not in problem and "\r" not in problem, problem


# ---------------------------------------------------------------------------- the example


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE_PATH)
    assert config.node == "demo-1"
    assert config.services.listen == "127.0.0.1"
    assert config.services.kamailio.port == 5060
    assert config.services.asterisk.port == 5080
    assert config.services.agi.port == 4573
    (tenant,) = config.tenants
    assert tenant.name == "default"
    assert tenant.domain == "default.omnicc.test"
    assert [a.extension for a in tenant.agents] == ["1001", "1002"]
    assert [t.name for t in tenant.trunks] == ["demo-carrier"]
    assert [str(r.destination) for r in tenant.inbound_routes] == [
        "agent:1001", "agent:1002", "hangup", "queue:support",
    ]
    (queue,) = tenant.queues
    assert queue.name == "support"
    assert [(m.agent, m.penalty) for m in queue.members] == [("1001", 0), ("1002", 1)]


def test_without_asterisk_nodes_the_dispatcher_uses_the_local_asterisk() -> None:
    config = parse_config(EXAMPLE_TEXT)
    (node,) = config.dispatcher_nodes
    assert (node.host, node.port, node.uri) == ("127.0.0.1", 5080, "sip:127.0.0.1:5080")


# ---------------------------------------------------------------------------- one mistake each

# (id, replacements, key path, part of the message, text marking the line at fault)
ONE_MISTAKE = [
    ("unknown-key", [("    agents:\n", "    agentz:\n")],
     "tenants[0].agentz", "unknown key", "agentz:"),
    ("unknown-top-level-key", [("node: demo-1\n", "node: demo-1\nnodes: 2\n")],
     "nodes", "unknown key", "nodes: 2"),
    # A missing key has no line of its own: the error points at the mapping that lacks it.
    ("missing-required-key", [("    domain: default.omnicc.test\n", "")],
     "tenants[0].domain", "Field required", "- name: default"),
    ("bad-extension", [('extension: "1002"', 'extension: "10a2"')],
     "tenants[0].agents[1].extension", "2 to 12 digits", '"10a2"'),
    ("short-password", [('password: "demo-pass-1002"', 'password: "short"')],
     "tenants[0].agents[1].password", "at least 8 characters", '"short"'),
    ("bad-did", [('did: "5550101"', 'did: "555-0101"')],
     "tenants[0].inbound_routes[1].did", "a DID is digits", '"555-0101"'),
    ("bad-destination", [('destination: "hangup"', 'destination: "voicemail"')],
     "tenants[0].inbound_routes[2].destination", "unknown destination", "voicemail"),
    ("bad-trunk-address", [("address: 127.0.0.3", "address: 127.0.0.300")],
     "tenants[0].trunks[0].address", "not an IP address or subnet", "127.0.0.300"),
    ("trunk-subnet-with-host-bits", [("address: 127.0.0.3", "address: 127.0.0.3/24")],
     "tenants[0].trunks[0].address", "not an IP address or subnet", "127.0.0.3/24"),
    ("bad-listen-address", [("listen: 127.0.0.1", "listen: localhost")],
     "services.listen", "does not appear to be an IPv4 or IPv6 address", "localhost"),
    ("port-out-of-range", [("redis:    {port: 16379}", "redis:    {port: 70000}")],
     "services.redis.port", "less than or equal to 65535", "70000"),
    ("upper-case-domain", [("domain: default.omnicc.test", "domain: Default.omnicc.test")],
     "tenants[0].domain", "lower-case host name", "Default.omnicc.test"),
    ("duplicate-agent-extension",
     [('extension: "1002"', 'extension: "1001"'), ('"agent:1002"', '"agent:1001"'),
      (', {agent: "1002", penalty: 1}', "")],
     "tenants[0].agents[1].extension", "duplicate agent extension '1001'", "Bob"),
    ("duplicate-did", [('did: "5550199"', 'did: "5550100"')],
     "tenants[0].inbound_routes[2].did", "duplicate inbound route DID '5550100'", "hangup"),
    ("route-to-unknown-agent", [('"agent:1002"', '"agent:1003"')],
     "tenants[0].inbound_routes[1].destination", "goes to agent 1003, which is not among",
     "agent:1003"),
    ("two-services-one-port", [("agi:      {port: 4573}", "agi:      {port: 5080}")],
     "services.agi.port", "agi and asterisk both use port 5080", "agi:"),
    ("duplicate-key", [("node: demo-1\n", "node: demo-1\nnode: demo-2\n")],
     "node", "key given twice", "node: demo-2"),
]


@pytest.mark.parametrize(
    ("replacements", "key_path", "message", "marker"),
    [case[1:] for case in ONE_MISTAKE],
    ids=[case[0] for case in ONE_MISTAKE],
)
def test_a_mistake_names_its_key_path_and_line(
    replacements: list[tuple[str, str]], key_path: str, message: str, marker: str
) -> None:
    text = example_with(*replacements)
    problems = problems_of(text)
    assert len(problems) == 1, problems
    prefix = f"{FILE_NAME}:{line_of(text, marker)}: {key_path}: "
    assert problems[0].startswith(prefix), problems[0]
    assert message in problems[0]


def test_same_trunk_source_in_two_tenants_is_refused_however_it_is_written() -> None:
    # 127.0.0.3 and 127.0.0.3/32 admit the same source: the second tenant could take the
    # first one's calls.
    text = EXAMPLE_TEXT + (
        "  - name: other\n"
        "    domain: other.omnicc.test\n"
        "    trunks:\n"
        "      - {name: other-carrier, address: 127.0.0.3/32}\n"
    )
    (problem,) = problems_of(text)
    line = line_of(text, "other-carrier")
    assert problem.startswith(f"{FILE_NAME}:{line}: tenants[1].trunks[0].address: ")
    assert "duplicate trunk address '127.0.0.3/32'" in problem


def test_same_trunk_address_on_different_ports_is_allowed() -> None:
    text = example_with(
        ("{name: demo-carrier, address: 127.0.0.3}",
         "{name: demo-carrier, address: 127.0.0.3, port: 5060}\n"
         "      - {name: demo-pbx, address: 127.0.0.3, port: 5062}"),
    )
    assert [t.port for t in parse_config(text).tenants[0].trunks] == [5060, 5062]


def test_duplicate_key_deep_in_the_file_names_its_path() -> None:
    text = example_with(('name: Bob,   password:', 'name: Bob,   name: Robert, password:'))
    (problem,) = problems_of(text)
    line = line_of(text, "Robert")
    assert problem == f"{FILE_NAME}:{line}: tenants[0].agents[1].name: key given twice"


def test_invalid_yaml_names_the_line_of_the_syntax_error() -> None:
    text = example_with(("node: demo-1", "node: @demo-1"))
    (problem,) = problems_of(text)
    assert problem.startswith(f"{FILE_NAME}:{line_of(text, '@demo-1')}: not valid YAML: ")
    assert "'@'" in problem


def test_a_bad_character_names_its_line() -> None:
    text = example_with(("name: Alice", "name: Al\x00ice"))
    (problem,) = problems_of(text)
    assert problem.startswith(f"{FILE_NAME}:{line_of(text, 'Al')}: not valid YAML: ")
    assert "U+0000" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "# only a comment\n"])
def test_a_file_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert problems_of(text) == [
        f"{FILE_NAME}:1: the file must be a mapping of keys (see examples/)"
    ]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.problems == [f"{missing}: no such config file"]


def test_a_directory_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{tmp_path}: cannot read: ")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(EXAMPLE_TEXT.replace("Alice", "Al\u00efce").encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:{line_of(EXAMPLE_TEXT, 'Alice')}: not UTF-8 text")


def test_load_config_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    text = example_with(('extension: "1002"', 'extension: "x"'))
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    line = line_of(text, 'extension: "x"')
    assert caught.value.problems[0].startswith(f"{path}:{line}: tenants[0].agents[1].extension: ")


# ---------------------------------------------------------------------------- several at once


def test_several_mistakes_are_all_reported_each_at_its_line() -> None:
    text = example_with(
        ('extension: "1001"', 'extension: "1x"'),
        ('did: "5550199"', 'did: "call-me"'),
        ("node: demo-1\n", "node: demo-1\ncolour: blue\n"),
        ("address: 127.0.0.3", "address: not-an-ip"),
    )
    problems = problems_of(text)
    assert_well_formed(problems)
    expected_starts = {
        f"{FILE_NAME}:{line_of(text, 'colour')}: colour: unknown key",
        f"{FILE_NAME}:{line_of(text, '1x')}: tenants[0].agents[0].extension: ",
        f"{FILE_NAME}:{line_of(text, 'call-me')}: tenants[0].inbound_routes[2].did: ",
        f"{FILE_NAME}:{line_of(text, 'not-an-ip')}: tenants[0].trunks[0].address: ",
    }
    assert len(problems) == len(expected_starts)
    for start in expected_starts:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_several_reference_mistakes_in_one_tenant_are_all_reported() -> None:
    text = example_with(
        ('extension: "1002"', 'extension: "1001"'),  # duplicate; agent 1002 now missing
        ('did: "5550199"', 'did: "5550100"'),  # duplicate DID
        (', {agent: "1002", penalty: 1}', ""),  # (the queue member is another check)
    )
    problems = problems_of(text)
    assert sorted(problems) == sorted([
        f"{FILE_NAME}:{line_of(text, 'Bob')}: tenants[0].agents[1].extension: "
        "duplicate agent extension '1001'",
        f"{FILE_NAME}:{line_of(text, 'hangup')}: tenants[0].inbound_routes[2].did: "
        "duplicate inbound route DID '5550100'",
        f"{FILE_NAME}:{line_of(text, 'agent:1002')}: tenants[0].inbound_routes[1].destination: "
        "inbound route 5550101 goes to agent 1002, which is not among this tenant's agents",
    ])


def test_port_clash_and_tenant_mistake_are_both_reported() -> None:
    text = example_with(
        ("redis:    {port: 16379}", "redis:    {port: 5060}"),
        ('"agent:1002"', '"agent:1009"'),
    )
    problems = problems_of(text)
    assert len(problems) == 2
    assert problems[0].startswith(f"{FILE_NAME}:{line_of(text, 'redis:')}: services.redis.port: ")
    assert "redis and kamailio both use port 5060" in problems[0]
    route_line = line_of(text, "agent:1009")
    assert f":{route_line}: tenants[0].inbound_routes[1].destination" in problems[1]


# ---------------------------------------------------------------------------- YAML 1.1 traps


def test_unquoted_numbers_keep_the_digits_as_written() -> None:
    # YAML 1.1 reads 0102 as octal 66 and drops the '+' of +15550101: an agent or a DID
    # would silently become another number.
    text = example_with(
        ('extension: "1002"', "extension: 0102"),
        ('"agent:1002"', '"agent:0102"'),
        ('agent: "1002"', "agent: 0102"),
        ('did: "5550101"', "did: +15550101"),
        ('did: "5550100"', "did: 5550100"),
    )
    tenant = parse_config(text).tenants[0]
    assert [a.extension for a in tenant.agents] == ["1001", "0102"]
    assert [r.did for r in tenant.inbound_routes] == ["5550100", "+15550101", "5550199",
                                                      "5550102"]
    assert tenant.queues[0].members[1].agent == "0102"


def test_a_number_with_underscores_is_not_silently_a_did() -> None:
    text = example_with(('did: "5550101"', "did: 555_0101"))
    (problem,) = problems_of(text)
    assert problem.startswith(f"{FILE_NAME}:{line_of(text, '555_0101')}: "
                              "tenants[0].inbound_routes[1].did: ")


def test_ports_may_still_be_written_with_a_leading_zero() -> None:
    config = parse_config(example_with(("redis:    {port: 16379}", "redis:    {port: 016379}")))
    assert config.services.redis.port == 16379


# Inputs that once escaped as TypeError, ValueError, RecursionError or a YAML constructor
# error instead of a ConfigError.
ODD_YAML = {
    "mapping-as-key": "{a: 1}: 2\n",
    "list-as-key": "? [a, b]\n: 1\n",
    "alias-inside-itself-list": "tenants: &loop [*loop]\n",
    "alias-inside-itself-map": "services: &loop {agi: *loop}\n",
    "deep-nesting": "tenants: " + "[" * 1000 + "]" * 1000 + "\n",
    "impossible-date": "node: 2001-13-45\n",
    "python-tag": "node: !!python/object/apply:os.system [echo]\n",
    "unknown-tag": "node: !custom x\n",
    "bad-float-tag": "node: !!float abc\n",
    "two-documents": "node: a\n---\nnode: b\n",
}


@pytest.mark.parametrize("text", list(ODD_YAML.values()), ids=list(ODD_YAML))
def test_odd_yaml_is_a_config_error(text: str) -> None:
    assert_well_formed(problems_of(text))


def test_a_recursive_alias_names_its_line() -> None:
    text = "node: demo\ntenants: &loop\n  - *loop\n"
    (problem,) = problems_of(text)
    assert problem == f"{FILE_NAME}:2: tenants[0]: an alias refers to a node that contains it"


# ---------------------------------------------------------------------------- properties

EXTENSIONS = st.from_regex(r"[0-9]{2,12}", fullmatch=True)
DIDS = st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True)


def minimal_config(extension: str, did: str, *, quote: bool) -> str:
    def written(value: str) -> str:
        return f'"{value}"' if quote else value

    return (
        "tenants:\n"
        "  - name: t1\n"
        "    domain: t1.example\n"
        "    agents:\n"
        f"      - extension: {written(extension)}\n"
        "        password: long-enough\n"
        "    inbound_routes:\n"
        f"      - did: {written(did)}\n"
        f"        destination: agent:{extension}\n"
    )


@given(extension=EXTENSIONS, did=DIDS, quote=st.booleans())
def test_valid_extensions_and_dids_round_trip_quoted_or_not(
    extension: str, did: str, quote: bool
) -> None:
    tenant = parse_config(minimal_config(extension, did, quote=quote)).tenants[0]
    assert tenant.agents[0].extension == extension
    assert tenant.inbound_routes[0].did == did
    assert str(tenant.inbound_routes[0].destination) == f"agent:{extension}"


YAML_PIECES = st.sampled_from([
    "tenants", "agents", "trunks", "inbound_routes", "services", "node", "name", "domain",
    "extension", "did", "destination", "address", "port", "asterisk_nodes", "password",
    ":", ": ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "? ", "!!int ",
    "!!str ", "!!binary ", "!x ", "'", '"', "#", "---\n", "~", "0100", "+1", "1_0", "0x1f",
    "2001-02-30", "1.5", "yes", "127.0.0.1", "::1", "10.0.0.0/8", "agent:1001", "hangup",
    "\t", "\x00", "\ufeff", "é", "5060",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(YAML_PIECES, max_size=40).map("".join)))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert_well_formed(exc.problems)
    else:
        assert isinstance(config, OmniccConfig)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_damage_to_the_example_is_a_config_or_a_config_error(data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(EXAMPLE_TEXT)), label="start")
    end = data.draw(st.integers(start, min(len(EXAMPLE_TEXT), start + 40)), label="end")
    insert = data.draw(st.lists(YAML_PIECES, max_size=4).map("".join), label="insert")
    text = EXAMPLE_TEXT[:start] + insert + EXAMPLE_TEXT[end:]
    try:
        parse_config(text)
    except ConfigError as exc:
        assert_well_formed(exc.problems)
