"""kemi/omnicc_kemi.py driven through a fake KSR module: every route, and what it must not do.

The script runs with the example config: tenant `default` (domain default.omnicc.test,
agents 1001 and 1002), the local Asterisk at 127.0.0.1:5080 and the trunk demo-carrier
at 127.0.0.3.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from omnicc.sip_policy import UNKNOWN_USER_PASSWORD
from tests.unit.ksr_stub import Credentials, FakeKSR, SipRequest, bind, kemi_script_loaded

REPO_ROOT = Path(__file__).resolve().parents[2]
KEMI_SCRIPT = REPO_ROOT / "kemi" / "omnicc_kemi.py"
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "omnicc.yaml"

DOMAIN = "default.omnicc.test"
ASTERISK_IP, ASTERISK_PORT = "127.0.0.1", 5080
TRUNK_IP = "127.0.0.3"
STRANGER_IP = "198.51.100.20"
AGENT, AGENT_PASSWORD = "1001", "demo-pass-1001"
FAILURE_ROUTE = "ksr_failure_next_asterisk"


# ---------------------------------------------------------------------------- requests


def good_credentials(user: str = AGENT) -> Credentials:
    return Credentials(username=user, password=AGENT_PASSWORD, realm=DOMAIN)


def register(user: str = AGENT, domain: str = DOMAIN, credentials: Credentials | None = None,
             **changes: Any) -> SipRequest:
    request = SipRequest(
        method="REGISTER", source_ip=STRANGER_IP, source_port=40000, ruri_user=None,
        from_user=user, from_domain=domain, to_user=user, to_domain=domain,
        credentials=credentials,
    )
    return replace(request, **changes)


def invite_from_trunk(did: str = "5550100", **changes: Any) -> SipRequest:
    request = SipRequest(
        method="INVITE", source_ip=TRUNK_IP, source_port=5060, ruri_user=did,
        from_user="5551234", from_domain="carrier.example", to_user=did, to_domain=DOMAIN,
    )
    return replace(request, **changes)


def invite_from_asterisk(agent: str = AGENT, **changes: Any) -> SipRequest:
    request = SipRequest(
        method="INVITE", source_ip=ASTERISK_IP, source_port=ASTERISK_PORT, ruri_user=agent,
        from_user="5551234", from_domain=DOMAIN, to_user=agent, to_domain=DOMAIN,
    )
    return replace(request, **changes)


def invite_from_agent(**changes: Any) -> SipRequest:
    request = SipRequest(
        method="INVITE", source_ip=STRANGER_IP, source_port=40000, ruri_user="5559999",
        from_user=AGENT, from_domain=DOMAIN, to_user="5559999", to_domain=DOMAIN,
    )
    return replace(request, **changes)


def in_dialog(method: str, **changes: Any) -> SipRequest:
    request = SipRequest(
        method=method, source_ip=TRUNK_IP, ruri_user=AGENT, from_user="5551234",
        from_domain="carrier.example", to_user="5550100", to_domain=DOMAIN, to_tag="as-1234",
        headers=[("Route", f"<sip:{ASTERISK_IP};lr>")],
    )
    return replace(request, **changes)


# ---------------------------------------------------------------------------- the worker


@pytest.fixture(scope="module")
def kemi() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    with kemi_script_loaded(KEMI_SCRIPT) as loaded:
        yield loaded


@dataclass
class Worker:
    """One Kamailio worker process: the script's object after child_init."""

    handler: Any
    ksr: types.ModuleType
    seen: list[FakeKSR] = field(default_factory=list)

    def fake(self, request: SipRequest, **options: Any) -> FakeKSR:
        fake = FakeKSR(request, **options)
        bind(self.ksr, fake)
        self.seen.append(fake)
        return fake

    def route(self, request: SipRequest, **options: Any) -> FakeKSR:
        """Run the request route; it must always return 1 (the worker carries on)."""
        fake = self.fake(request, **options)
        assert self.handler.ksr_request_route(None) == 1
        return fake

    def failure_route(self, request: SipRequest, **options: Any) -> FakeKSR:
        fake = self.fake(request, **options)
        assert getattr(self.handler, FAILURE_ROUTE)(None) == 1
        return fake


def start_worker(kemi: tuple[types.ModuleType, types.ModuleType]) -> Worker:
    script, ksr = kemi
    worker = Worker(handler=script.mod_init(), ksr=ksr)
    startup = worker.fake(SipRequest())
    assert worker.handler.child_init(1) == 0, startup.calls
    return worker


@pytest.fixture
def worker(
    kemi: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Worker]:
    monkeypatch.setenv("OMNICC_CONFIG", str(EXAMPLE_CONFIG))
    worker = start_worker(kemi)
    yield worker
    for fake in worker.seen:
        assert fake.unmodelled == [], "the script called KSR functions the stub does not model"


def assert_nothing_sent(fake: FakeKSR) -> None:
    assert fake.replies == []
    assert not fake.relayed
    assert "auth.auth_challenge" not in fake.names()
    assert "sl.sl_reply_error" not in fake.names()


# ---------------------------------------------------------------------------- start-up


def test_child_init_loads_the_config_named_by_omnicc_config(worker: Worker) -> None:
    assert worker.handler.config.node == "demo-1"
    assert worker.handler.policy is not None


def test_child_init_with_a_bad_config_fails_the_worker_and_logs_why(
    kemi: tuple[types.ModuleType, types.ModuleType], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OMNICC_CONFIG", str(tmp_path / "missing.yaml"))
    script, ksr = kemi
    handler = script.mod_init()
    fake = FakeKSR(SipRequest())
    bind(ksr, fake)
    assert handler.child_init(1) == -1
    (logged,) = fake.calls_to("err")
    assert "missing.yaml" in logged[0] and "no such config file" in logged[0]


def test_a_worker_without_config_still_answers_every_request(
    kemi: tuple[types.ModuleType, types.ModuleType],
) -> None:
    script, ksr = kemi
    handler = script.mod_init()  # child_init never ran, or failed
    fake = FakeKSR(invite_from_trunk())
    bind(ksr, fake)
    assert handler.ksr_request_route(None) == 1
    assert fake.replies == [(500, "Server Internal Error")]


# ---------------------------------------------------------------------------- sanity first


def test_options_keepalive_to_the_proxy_is_answered_200(worker: Worker) -> None:
    fake = worker.route(SipRequest(method="OPTIONS", source_ip=STRANGER_IP, ruri_user=None))
    assert fake.replies == [(200, "Keepalive")]
    assert not fake.relayed
    assert "auth.pv_auth_check" not in fake.names()


def test_options_for_a_user_is_not_a_keepalive(worker: Worker) -> None:
    fake = worker.route(replace(invite_from_agent(), method="OPTIONS", ruri_user="1002"))
    assert (200, "Keepalive") not in fake.replies
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]


def test_options_for_another_host_is_not_a_keepalive(worker: Worker) -> None:
    fake = worker.route(SipRequest(method="OPTIONS", source_ip=STRANGER_IP, ruri_user=None,
                                   ruri_is_myself=False, from_domain=DOMAIN))
    assert (200, "Keepalive") not in fake.replies


def test_too_many_hops_is_483(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(), results={"maxfwd.process_maxfwd": -1})
    assert fake.replies == [(483, "Too Many Hops")]
    assert not fake.relayed


def test_malformed_request_is_left_to_sanity_and_logged(worker: Worker) -> None:
    # sanity_check() sends its own 400 reply; the script only logs and stops.
    fake = worker.route(invite_from_trunk(), results={"sanity.sanity_check": -1})
    assert_nothing_sent(fake)
    (logged,) = fake.calls_to("err")
    assert TRUNK_IP in logged[0]
    assert "dispatcher.ds_select_dst" not in fake.names()


# ---------------------------------------------------------------------------- REGISTER


def test_register_without_credentials_is_challenged_with_the_tenant_realm(
    worker: Worker,
) -> None:
    fake = worker.route(register())
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]
    assert fake.replies == []
    assert "registrar.save" not in fake.names()


@pytest.mark.parametrize("credentials", [
    Credentials(AGENT, "wrong-password", DOMAIN),
    Credentials(AGENT, AGENT_PASSWORD, "other.realm"),
    Credentials("1002", AGENT_PASSWORD, DOMAIN),  # someone else's digest user
], ids=["wrong-password", "wrong-realm", "other-user"])
def test_register_with_failed_credentials_is_challenged_again(
    worker: Worker, credentials: Credentials
) -> None:
    fake = worker.route(register(credentials=credentials))
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]
    assert "registrar.save" not in fake.names()
    assert "auth.consume_credentials" not in fake.names()


def test_register_with_good_credentials_is_saved(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()))
    assert fake.calls_to("auth.pv_auth_check") == [(DOMAIN, AGENT_PASSWORD, 0, 1)]
    assert fake.calls_to("registrar.save") == [("location", 0)]
    # Credentials are consumed before the contact is saved (nothing forwards them).
    assert fake.index_of("auth.consume_credentials") < fake.index_of("registrar.save")
    assert fake.replies == []  # save() sends the 200 itself
    assert "auth.auth_challenge" not in fake.names()


def test_register_that_cannot_be_saved_gets_the_registrar_error(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials()),
                        results={"registrar.save": -1})
    assert fake.calls_to("sl.sl_reply_error") == [()]


def without_password(calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """The call log with the password given to pv_auth_check blanked out."""
    return [(name, (args[0], "<password>", *args[2:]) if name == "auth.pv_auth_check" else args)
            for name, args in calls]


@pytest.mark.parametrize("attempt", [None, Credentials("1009", "", DOMAIN),
                                     Credentials("1009", "guess", DOMAIN)],
                         ids=["no-credentials", "empty-password", "guessed-password"])
def test_unknown_user_is_challenged_exactly_like_a_known_one(
    worker: Worker, attempt: Credentials | None
) -> None:
    # Anti-enumeration: nothing in the replies may tell which extensions exist.
    known_attempt = attempt and replace(attempt, username=AGENT)
    known = worker.route(register(user=AGENT, credentials=known_attempt))
    unknown = worker.route(register(user="1009", credentials=attempt))
    assert without_password(unknown.calls) == without_password(known.calls)
    assert unknown.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]
    assert unknown.replies == []  # in particular, no 404
    (check,) = unknown.calls_to("auth.pv_auth_check")
    assert check[1] == UNKNOWN_USER_PASSWORD
    assert check[1] not in ("", "guess", AGENT_PASSWORD)


def test_register_to_an_unknown_domain_is_403(worker: Worker) -> None:
    fake = worker.route(register(domain="evil.example", credentials=good_credentials()))
    assert fake.replies == [(403, "Forbidden")]
    assert "auth.auth_challenge" not in fake.names()
    assert "auth.pv_auth_check" not in fake.names()
    assert "registrar.save" not in fake.names()


def test_register_from_a_trunk_address_still_needs_credentials(worker: Worker) -> None:
    fake = worker.route(register(source_ip=TRUNK_IP, source_port=5060))
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]
    assert "registrar.save" not in fake.names()


# ---------------------------------------------------------------------------- Asterisk -> agent


def test_invite_from_asterisk_is_delivered_to_the_agents_contact(worker: Worker) -> None:
    fake = worker.route(invite_from_asterisk())
    routing = [n for n in fake.names() if n.split(".")[0] in ("rr", "registrar", "tm")]
    assert routing == ["tm.t_check_trans", "rr.record_route", "registrar.lookup", "tm.t_relay"]
    assert fake.calls_to("registrar.lookup") == [("location",)]
    assert fake.replies == []
    assert "auth.pv_auth_check" not in fake.names()
    assert "dispatcher.ds_select_dst" not in fake.names()


@pytest.mark.parametrize(("lookup", "reply"), [
    (-1, (480, "Temporarily Unavailable")),  # agent not registered
    (-3, (480, "Temporarily Unavailable")),  # usrloc internal error
    (-2, (405, "Method Not Allowed")),       # contacts found, method not allowed
])
def test_invite_from_asterisk_to_an_unreachable_agent_is_refused(
    worker: Worker, lookup: int, reply: tuple[int, str]
) -> None:
    fake = worker.route(invite_from_asterisk(), results={"registrar.lookup": lookup})
    assert fake.replies == [reply]
    assert not fake.relayed


def test_relay_failure_gets_the_tm_error_reply(worker: Worker) -> None:
    fake = worker.route(invite_from_asterisk(), results={"tm.t_relay": -1})
    assert fake.calls_to("sl.sl_reply_error") == [()]


def test_asterisk_address_on_another_port_is_treated_as_a_stranger(worker: Worker) -> None:
    fake = worker.route(invite_from_asterisk(source_port=ASTERISK_PORT + 1))
    assert "registrar.lookup" not in fake.names()
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]
    assert not fake.relayed


def test_asterisks_own_internal_headers_are_kept(worker: Worker) -> None:
    headers = [("X-Omnicc-Tenant", "default")]
    fake = worker.route(invite_from_asterisk(headers=headers))
    assert ("X-Omnicc-Tenant",) not in fake.calls_to("hdr.remove")
    assert ("X-Omnicc-Tenant", "default") in fake.outgoing_headers


# ---------------------------------------------------------------------------- trunk -> Asterisk


def test_invite_from_a_trunk_goes_to_an_asterisk_node_tagged_with_tenant_and_trunk(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_trunk())
    significant = [(name, args) for name, args in fake.calls
                   if name.split(".")[0] in ("dispatcher", "rr", "tm") or name == "hdr.append"]
    assert significant == [
        ("tm.t_check_trans", ()),
        ("dispatcher.ds_select_dst", (1, 4)),  # set 1, round robin
        ("hdr.append", ("X-Omnicc-Tenant: default\r\n",)),
        ("hdr.append", ("X-Omnicc-Trunk: demo-carrier\r\n",)),
        ("rr.record_route", ()),
        ("tm.t_on_failure", (FAILURE_ROUTE,)),
        ("tm.t_relay", ()),
    ]
    assert fake.replies == []
    assert "auth.pv_auth_check" not in fake.names()  # trunks are admitted by address


def test_the_failure_route_named_for_a_trunk_call_exists(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk())
    ((route_name,),) = fake.calls_to("tm.t_on_failure")
    assert callable(getattr(worker.handler, route_name))


def test_trunk_call_with_no_asterisk_node_available_is_503(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(), results={"dispatcher.ds_select_dst": -1})
    assert fake.replies == [(503, "No Asterisk Node Available")]
    assert not fake.relayed
    assert fake.appended_headers == []


def test_non_invite_from_a_trunk_is_405(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(method="MESSAGE"))
    assert fake.replies == [(405, "Method Not Allowed")]
    assert "dispatcher.ds_select_dst" not in fake.names()


def test_trunk_from_any_source_port_is_admitted(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(source_port=39999))
    assert fake.relayed
    assert "X-Omnicc-Trunk: demo-carrier\r\n" in fake.appended_headers


SPOOFED = [("X-Omnicc-Tenant", "victim"), ("x-omnicc-trunk", "victim-carrier")]


def test_spoofed_internal_headers_from_a_trunk_are_removed_before_anything_else(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_trunk(headers=list(SPOOFED)))
    removed_tenant = fake.index_of("hdr.remove", "X-Omnicc-Tenant")
    removed_trunk = fake.index_of("hdr.remove", "X-Omnicc-Trunk")
    first_decision = min(fake.index_of("dispatcher.ds_select_dst"), fake.index_of("hdr.append"))
    assert max(removed_tenant, removed_trunk) < first_decision
    # Only omnicc's own values reach Asterisk.
    internal = [h for h in fake.outgoing_headers if h[0].lower().startswith("x-omnicc-")]
    assert internal == [("X-Omnicc-Tenant", "default"), ("X-Omnicc-Trunk", "demo-carrier")]


def test_spoofed_internal_headers_from_a_stranger_are_removed_before_authentication(
    worker: Worker,
) -> None:
    fake = worker.route(invite_from_agent(headers=list(SPOOFED)))
    assert fake.index_of("hdr.remove", "X-Omnicc-Tenant") < fake.index_of("auth.pv_auth_check")
    assert fake.index_of("hdr.remove", "X-Omnicc-Trunk") < fake.index_of("auth.pv_auth_check")
    assert not any(h[0].lower().startswith("x-omnicc-") for h in fake.outgoing_headers)


def test_spoofed_headers_on_a_register_are_removed(worker: Worker) -> None:
    fake = worker.route(register(credentials=good_credentials(), headers=list(SPOOFED)))
    assert fake.index_of("hdr.remove", "X-Omnicc-Tenant") < fake.index_of("registrar.save")


@pytest.mark.parametrize("make_request", [invite_from_trunk, invite_from_asterisk, register],
                         ids=["trunk", "asterisk", "register"])
def test_an_initial_requests_route_headers_are_removed(
    worker: Worker, make_request: Any
) -> None:
    preloaded = [("Route", "<sip:10.66.66.66;lr>"), ("Route", "<sip:evil.example;lr>")]
    fake = worker.route(make_request(headers=preloaded))
    remove_route = fake.index_of("hdr.remove", "Route")
    if fake.relayed:
        assert remove_route < fake.index_of("tm.t_relay")
    assert not any(name.lower() == "route" for name, _ in fake.outgoing_headers)


def test_a_retransmission_absorbed_by_tm_is_not_routed_again(worker: Worker) -> None:
    # t_check_trans() == 0: tm has resent the last reply; routing it again would select
    # another Asterisk node and append the internal headers a second time.
    fake = worker.route(invite_from_trunk(), results={"tm.t_check_trans": 0})
    assert_nothing_sent(fake)
    assert "dispatcher.ds_select_dst" not in fake.names()
    assert fake.appended_headers == []


def test_a_retransmitted_register_is_not_authenticated_again(worker: Worker) -> None:
    fake = worker.route(register(), results={"tm.t_check_trans": 0})
    assert_nothing_sent(fake)
    assert "auth.pv_auth_check" not in fake.names()


# ---------------------------------------------------------------------------- agents' calls


def test_an_agents_call_is_authenticated_with_the_from_domain_realm(worker: Worker) -> None:
    fake = worker.route(invite_from_agent())
    assert fake.calls_to("auth.auth_challenge") == [(DOMAIN, 0)]
    assert not fake.relayed


def test_an_authenticated_agents_call_is_refused_for_now(worker: Worker) -> None:
    fake = worker.route(invite_from_agent(credentials=good_credentials()))
    assert fake.calls_to("auth.consume_credentials") == [()]
    assert fake.replies == [(403, "Calls From Agents Not Enabled")]
    assert not fake.relayed


def test_a_call_from_an_unknown_domain_is_403(worker: Worker) -> None:
    fake = worker.route(invite_from_agent(from_domain="evil.example"))
    assert fake.replies == [(403, "Forbidden")]
    assert "auth.auth_challenge" not in fake.names()


# ---------------------------------------------------------------------------- in dialog


def test_in_dialog_request_with_our_route_is_relayed(worker: Worker) -> None:
    fake = worker.route(in_dialog("BYE"), results={"rr.loose_route": 1})
    assert fake.relayed
    assert fake.replies == []
    # The Route header is what routes it: an in-dialog request keeps it.
    assert ("Route",) not in fake.calls_to("hdr.remove")
    assert "auth.pv_auth_check" not in fake.names()


def test_in_dialog_request_without_our_route_is_404(worker: Worker) -> None:
    fake = worker.route(in_dialog("BYE"))  # loose_route() fails by default
    assert fake.replies == [(404, "Not here")]
    assert not fake.relayed


def test_in_dialog_ack_matching_a_transaction_is_relayed(worker: Worker) -> None:
    fake = worker.route(in_dialog("ACK"), results={"tm.t_check_trans": 1})
    assert fake.relayed
    assert fake.replies == []


def test_in_dialog_ack_matching_nothing_is_dropped_silently(worker: Worker) -> None:
    fake = worker.route(in_dialog("ACK"))
    assert_nothing_sent(fake)


# ---------------------------------------------------------------------------- CANCEL


def test_cancel_of_a_pending_invite_is_relayed(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(method="CANCEL"), results={"tm.t_check_trans": 1})
    assert fake.relayed
    assert fake.replies == []
    assert "dispatcher.ds_select_dst" not in fake.names()


def test_cancel_matching_nothing_is_dropped(worker: Worker) -> None:
    fake = worker.route(invite_from_trunk(method="CANCEL"))
    assert_nothing_sent(fake)


# ---------------------------------------------------------------------------- exceptions


def test_an_exception_in_a_ksr_call_is_answered_500_and_the_worker_keeps_serving(
    worker: Worker,
) -> None:
    failing = worker.route(invite_from_asterisk(),
                           raises={"registrar.lookup": RuntimeError("usrloc exploded")})
    assert failing.replies == [(500, "Server Internal Error")]
    assert not failing.relayed
    (logged,) = failing.calls_to("err")
    assert "usrloc exploded" in logged[0]
    assert "\n" not in logged[0].rstrip("\n")  # one log line, the traceback joined with " | "

    # The same worker routes the next request normally.
    after = worker.route(invite_from_asterisk())
    assert after.relayed and after.replies == []


def test_an_exception_in_auth_is_answered_500(worker: Worker) -> None:
    fake = worker.route(register(), raises={"auth.pv_auth_check": ValueError("bad nonce")})
    assert fake.replies == [(500, "Server Internal Error")]


def test_an_ack_that_raises_gets_no_reply(worker: Worker) -> None:
    # A reply to an ACK is not allowed: log only.
    fake = worker.route(in_dialog("ACK"), raises={"rr.loose_route": RuntimeError("boom")})
    assert fake.replies == []
    assert len(fake.calls_to("err")) == 1


# ---------------------------------------------------------------------------- failure route


def test_failure_route_tries_the_next_asterisk_node_after_a_5xx(worker: Worker) -> None:
    fake = worker.failure_route(invite_from_trunk(),
                                results={"tm.t_check_status": 1, "dispatcher.ds_next_dst": 1})
    assert fake.calls_to("tm.t_check_status") == [("5[0-9][0-9]",)]
    assert fake.calls_to("tm.t_on_failure") == [(FAILURE_ROUTE,)]
    assert fake.relayed


def test_failure_route_tries_the_next_node_after_a_silent_timeout(worker: Worker) -> None:
    fake = worker.failure_route(
        invite_from_trunk(),
        results={"tm.t_branch_timeout": 1, "tm.t_any_replied": -1, "dispatcher.ds_next_dst": 1},
    )
    assert fake.relayed


def test_failure_route_gives_up_when_no_node_is_left(worker: Worker) -> None:
    fake = worker.failure_route(invite_from_trunk(), results={"tm.t_check_status": 1})
    assert not fake.relayed


def test_failure_route_does_nothing_for_a_cancelled_call(worker: Worker) -> None:
    fake = worker.failure_route(
        invite_from_trunk(),
        results={"tm.t_is_canceled": 1, "tm.t_check_status": 1, "dispatcher.ds_next_dst": 1},
    )
    assert not fake.relayed
    assert "dispatcher.ds_next_dst" not in fake.names()


def test_failure_route_keeps_a_4xx_from_asterisk(worker: Worker) -> None:
    # A 404 for an unknown DID is Asterisk's answer, not a node failure.
    fake = worker.failure_route(invite_from_trunk(), results={"dispatcher.ds_next_dst": 1})
    assert not fake.relayed


def test_failure_route_survives_an_exception(worker: Worker) -> None:
    fake = worker.failure_route(invite_from_trunk(),
                                raises={"tm.t_is_canceled": RuntimeError("boom")})
    assert len(fake.calls_to("err")) == 1


def test_reply_and_onsend_routes_let_everything_through(worker: Worker) -> None:
    assert worker.handler.ksr_reply_route(None) == 1
    assert worker.handler.ksr_onsend_route(None) == 1
