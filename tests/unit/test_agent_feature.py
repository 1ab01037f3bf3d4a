"""Feature codes an agent dials from its phone: the config's codes, what a dialled code
asks for (omnicc/routing.py), and the agent_feature handler over the fake Asterisk peer
and a fake ACD (the real ACD and SIP path: tests/integration/test_queue_features.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agi.handlers.agent_feature import AgentFeature
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.acd import AcdResult
from omnicc.config import ConfigError, parse_config
from omnicc.routing import FeatureAction, FeatureRequest, RoutingError, decide_feature_code

from .test_agi_handlers import MemoryEventLog, as_event_log

BASE = """\
tenants:
  - name: acme
    domain: acme.test
    agents:
      - {extension: "1001", password: "password-1001"}
      - {extension: "1002", password: "password-1002"}
"""
CONFIG = parse_config(BASE)
TENANT = CONFIG.tenants[0]


def with_codes(codes: str) -> str:
    return BASE + "    feature_codes:\n" + "".join(f"      {line}\n" for line in codes.splitlines())


# ---------------------------------------------------------------------------- config


def test_the_default_codes() -> None:
    codes = TENANT.feature_codes
    assert (codes.login, codes.logout, codes.pause, codes.unpause) == ("*11", "*12", "*21", "*22")
    assert codes.pause_reasons == {"1": "break", "2": "lunch", "3": "training"}
    assert codes.default_pause_reason == "break"


def test_codes_and_reasons_from_the_file() -> None:
    config = parse_config(with_codes('login: "*71"\npause: "*73"\n'
                                     'pause_reasons: {"9": coaching, "10": "after call"}'))
    codes = config.tenants[0].feature_codes
    assert (codes.login, codes.logout, codes.pause) == ("*71", "*12", "*73")
    assert codes.pause_reasons == {"9": "coaching", "10": "after call"}


@pytest.mark.parametrize(("codes", "message"), [
    ('login: "11"', "tenants[0].feature_codes.login: a feature code is '*' and 1 to 6 digits"),
    ('login: "*1a"', "a feature code is '*' and 1 to 6 digits"),
    ('login: "*1234567"', "a feature code is '*' and 1 to 6 digits"),
    ("login: 11", "a feature code is '*' and 1 to 6 digits"),
    ('unpause: "*21"', "tenants[0].feature_codes.unpause: feature code *21 of unpause is "
                       "pause's too"),
    ('logout: "*11"', "tenants[0].feature_codes.logout: feature code *11 of logout is "
                      "login's too"),
    ('unpause: "*211"', "tenants[0].feature_codes.pause: feature code *21 of pause is the "
                        "start of unpause's *211"),
    ('pause_reasons: {"1234": x}', "pause reason code '1234': 1 to 3 digits"),
    ('pause_reasons: {"a": x}', "pause reason code 'a': 1 to 3 digits"),
    ('pause_reasons: {"1": ""}', "a pause reason is one line of 1 to 200 characters"),
    ('default_pause_reason: "two\\nlines"', "a pause reason is one line"),
    ("dial_tone: yes", "tenants[0].feature_codes.dial_tone: unknown key"),
])
def test_bad_feature_codes_are_refused_with_their_key(codes: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_codes(codes))
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


# ---------------------------------------------------------------------------- decision


@pytest.mark.parametrize(("dialled", "request_"), [
    ("*11", FeatureRequest(FeatureAction.LOGIN)),
    ("*12", FeatureRequest(FeatureAction.LOGOUT)),
    ("*21", FeatureRequest(FeatureAction.PAUSE, "break")),
    ("*212", FeatureRequest(FeatureAction.PAUSE, "lunch")),
    ("*213", FeatureRequest(FeatureAction.PAUSE, "training")),
    ("*22", FeatureRequest(FeatureAction.UNPAUSE)),
])
def test_what_a_code_asks_for(dialled: str, request_: FeatureRequest) -> None:
    assert decide_feature_code(TENANT, dialled) == request_


@pytest.mark.parametrize("dialled", ["*13", "*219", "*2", "*", "*111001", "1001", "", "*11#"])
def test_anything_else_is_not_a_feature_code(dialled: str) -> None:
    # "*111001" is login followed by another agent's extension: never a login of 1001.
    with pytest.raises(RoutingError):
        decide_feature_code(TENANT, dialled)


# ---------------------------------------------------------------------------- handler


class FakeAgents:
    """The ACD's agent operations, recorded; `refuse` makes every one fail with that code."""

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.refuse = ""

    def _result(self, state: str) -> AcdResult:
        return AcdResult(self.refuse, "ONCALL") if self.refuse else AcdResult("ok", state)

    async def login(self, tenant: str, extension: str) -> AcdResult:
        self.ops.append(("login", tenant, extension))
        return self._result("READY")

    async def logout(self, tenant: str, extension: str, *, force: bool = False) -> AcdResult:
        self.ops.append(("logout", tenant, extension, force))
        return self._result("OFFLINE")

    async def pause(self, tenant: str, extension: str, reason: str) -> AcdResult:
        self.ops.append(("pause", tenant, extension, reason))
        return self._result("PAUSED")

    async def unpause(self, tenant: str, extension: str) -> AcdResult:
        self.ops.append(("unpause", tenant, extension))
        return self._result("READY")


def feature(store: FakeAgents, events: MemoryEventLog, **params: str) -> FakeCallRecord:
    handler = AgentFeature(CONFIG, as_event_log(events), store)
    return run_async(drive_session(handler, script="agent_feature", params=params,
                                   command_timeout=0.5))


@pytest.mark.parametrize(("dialled", "op", "prompt", "state"), [
    ("*11", ("login", "acme", "1002"), "agent-loginok", "READY"),
    ("*12", ("logout", "acme", "1002", False), "agent-loggedoff", "OFFLINE"),
    ("*212", ("pause", "acme", "1002", "lunch"), "do-not-disturb&activated", "PAUSED"),
    ("*22", ("unpause", "acme", "1002"), "do-not-disturb&de-activated", "READY"),
])
def test_a_code_changes_the_state_of_the_calling_agent(
        dialled: str, op: tuple[Any, ...], prompt: str, state: str) -> None:
    store, events = FakeAgents(), MemoryEventLog()
    record = feature(store, events, tenant="acme", agent="1002", dialled=dialled)
    assert store.ops == [op]
    assert record.variables == {"OMNICC_PROMPT": prompt, "OMNICC_AGENT_STATE": state,
                                "OMNICC_STATUS": "OK"}
    assert events.events == []  # the ACD's own script writes the transition's event


def test_a_refusal_of_the_acd_is_403_and_an_event() -> None:
    store, events = FakeAgents(), MemoryEventLog()
    store.refuse = "on_call"
    record = feature(store, events, tenant="acme", agent="1001", dialled="*21")
    assert store.ops == [("pause", "acme", "1001", "break")]
    assert record.variables == {"OMNICC_ERROR": "pause: on_call", "OMNICC_CAUSE": "21",
                                "OMNICC_STATUS": "ERROR"}
    ((tenant, event, fields),) = [(e.tenant, e.event, e.fields) for e in events.events]
    assert (tenant, event) == ("acme", "agent_feature_refused")
    assert fields["reason"] == "on_call" and fields["agent"] == "1001"
    assert fields["action"] == "pause" and fields["dialled"] == "*21"


def test_an_unknown_code_is_404_and_touches_no_agent() -> None:
    store, events = FakeAgents(), MemoryEventLog()
    record = feature(store, events, tenant="acme", agent="1002", dialled="*111001")
    assert store.ops == []
    assert record.variables["OMNICC_CAUSE"] == "1"
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert [(e.event, e.fields["reason"]) for e in events.events] == [
        ("agent_feature_refused", "unknown_code")]


@pytest.mark.parametrize("params", [
    {"tenant": "acme", "agent": "", "dialled": "*11"},         # no authenticated agent
    {"tenant": "acme", "agent": "1009", "dialled": "*11"},     # not an agent of the tenant
    {"tenant": "globex", "agent": "1001", "dialled": "*11"},   # unknown tenant
    {"tenant": "acme", "agent": "1001; DEL x", "dialled": "*11"},
])
def test_a_call_without_a_known_agent_is_refused(params: dict[str, str]) -> None:
    store, events = FakeAgents(), MemoryEventLog()
    record = feature(store, events, **params)
    assert store.ops == []
    assert record.variables["OMNICC_CAUSE"] == "21"
    assert record.variables["OMNICC_STATUS"] == "ERROR"


def test_build_routes_has_agent_feature_with_an_acd() -> None:
    from agi.app import build_routes

    routes = build_routes(CONFIG, as_event_log(MemoryEventLog()), FakeAgents())  # type: ignore[arg-type]
    assert isinstance(routes["agent_feature"], AgentFeature)
    assert "agent_feature" not in build_routes(CONFIG, as_event_log(MemoryEventLog()))
