"""A fake ``KSR`` module for unit tests of the KEMI script (no Kamailio).

Inside Kamailio, app_python3 makes a module named ``KSR`` importable; the script calls it
for everything (read pseudo-variables, reply, relay, edit headers, authenticate). This
fake models one SIP request at a time and records every call the script makes, in order,
so a test can check both what was done and in which order.

It models what omnicc's script relies on, with Kamailio's return conventions (negative
is failure, 0 stops the script for ``t_check_trans``, positive is success). Whatever the
script calls that is not modelled is recorded in ``FakeKSR.unmodelled`` (and raises
AttributeError, as a missing KSR export would); tests assert that list stays empty.

Credentials: a request's ``headers`` may carry ``Authorization`` / ``Proxy-Authorization``
as text (bearer tokens, garbage); ``credentials`` are digest credentials, which the fake
writes as a ``Digest`` header (Authorization on REGISTER, Proxy-Authorization otherwise,
as phones do) and ``pv_auth_check`` checks in clear. Pseudo-variables follow Kamailio:
``$hdr(Name)`` is the first such header as received (removing it only edits what is
forwarded), ``$aU`` the whole digest username, ``$ml`` the message length (estimated from
the headers unless the request sets it).

Unit tests only: SIP behaviour against real Kamailio is tested under tests/integration.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

# Kamailio auth module return codes (auth_api.h) the fake produces.
AUTH_OK = 1
AUTH_INVALID_PASSWORD = -2
AUTH_NO_CREDENTIALS = -5
AUTH_USER_MISMATCH = -8

# Sub-modules and functions of KSR that the fake provides, by the name the script uses.
SUBMODULES = ("pv", "sl", "tm", "rr", "hdr", "registrar", "auth", "dispatcher", "maxfwd",
              "sanity", "siputils", "dialog", "nathelper", "htable", "dmq", "textopsx",
              "mqueue")
FUNCTIONS = ("is_INVITE", "is_ACK", "is_BYE", "is_CANCEL", "is_REGISTER", "is_OPTIONS",
             "is_MESSAGE", "is_myself_ruri", "force_rport", "err", "warn", "info", "dbg")


@dataclass(frozen=True)
class Credentials:
    """The digest credentials a request carries (the fake checks them in clear)."""

    username: str
    password: str
    realm: str


# The request line, Via, From, To, Call-ID, CSeq, Contact, Max-Forwards, Content-Length of
# a typical request without body: what $ml counts besides the headers a test gives.
BASE_MESSAGE_BYTES = 420


@dataclass
class SipRequest:
    """The parts of a SIP request the script can see."""

    method: str = "INVITE"
    source_ip: str = "203.0.113.50"
    source_port: int = 5060
    protocol: str = "udp"  # $pr
    ruri_user: str | None = None
    ruri_domain: str | None = None  # None: the To domain, as for most requests here
    ruri_is_myself: bool = True
    from_user: str = ""
    from_domain: str = ""
    to_user: str = ""
    to_domain: str = ""
    to_tag: str = ""  # non-empty: an in-dialog request
    headers: list[tuple[str, str]] = field(default_factory=list)
    credentials: Credentials | None = None  # digest credentials
    user_agent: str | None = None
    from_display: str | None = None
    message_length: int | None = None  # None: BASE_MESSAGE_BYTES plus the headers
    behind_nat: bool = False  # what nat_uac_test() finds
    known_dialog: bool = False  # what is_known_dlg() finds (a dialog this proxy set up)
    reply_code: int | None = None  # $rs, in reply and failure routes
    # The headers of the reply a failure route sees ($T_rpl($hdr(...))).
    reply_headers: list[tuple[str, str]] = field(default_factory=list)
    digest_qop: bool = True  # the digest answer carries qop=auth

    def digest_header(self) -> tuple[str, str] | None:
        """The digest credentials as the header a phone sends them in."""
        if self.credentials is None:
            return None
        name = "Authorization" if self.method == "REGISTER" else "Proxy-Authorization"
        creds = self.credentials
        # As a phone answers omnicc's challenge (qop=auth), unless the request says not.
        qop = ', qop=auth, nc=00000001, cnonce="fake-cnonce"' if self.digest_qop else ""
        return name, (f'Digest username="{creds.username}", realm="{creds.realm}", '
                      f'nonce="fake-nonce", uri="sip:{creds.realm}", response="fake-response"'
                      + qop)

    def all_headers(self) -> list[tuple[str, str]]:
        digest = self.digest_header()
        return [*self.headers, *([digest] if digest else [])]

    def header(self, name: str) -> str | None:
        """$hdr(name): the first header of that name, case-insensitively."""
        return next((value for header_name, value in self.all_headers()
                     if header_name.lower() == name.lower()), None)

    def length(self) -> int:
        if self.message_length is not None:
            return self.message_length
        return BASE_MESSAGE_BYTES + sum(len(name) + len(value) + 4  # ": " and CRLF
                                        for name, value in self.all_headers())


Call = tuple[str, tuple[Any, ...]]


class FakeKSR:
    """The state behind the fake module: one request, its outcomes, and the call log."""

    def __init__(
        self,
        request: SipRequest,
        *,
        results: dict[str, int] | None = None,
        raises: dict[str, Exception] | None = None,
        htables: Any = None,
        mqueues: dict[str, deque[tuple[str, str]]] | None = None,
    ) -> None:
        self.request = request
        # The node's htables (tests/unit/fake_htable.FakeHtables), shared by its workers.
        self.htables = htables
        # The node's memory queues (mqueue), by name, also shared.
        self.mqueues = mqueues if mqueues is not None else {}
        # Return values that override the modelled ones, by call name ("tm.t_relay": -1).
        self.results = dict(results or {})
        # Exceptions to raise when a call of that name is made.
        self.raises = dict(raises or {})
        self.calls: list[Call] = []
        self.unmodelled: list[str] = []
        self.appended_headers: list[str] = []
        self.inserted_headers: list[str] = []  # hdr.insert(): before the first header
        self.removed_headers: list[str] = []
        self.reply_headers: list[str] = []  # append_to_reply(): added to the next reply
        self.pv = FakePv(self)
        self.sl = FakeSl(self)
        self.tm = FakeTm(self)
        self.rr = FakeRr(self)
        self.hdr = FakeHdr(self)
        self.registrar = FakeRegistrar(self)
        self.auth = FakeAuth(self)
        self.dispatcher = FakeDispatcher(self)
        self.maxfwd = FakeMaxfwd(self)
        self.sanity = FakeSanity(self)
        self.siputils = FakeSiputils(self)
        self.dialog = FakeDialog(self)
        self.nathelper = FakeNathelper(self)
        self.htable = FakeHtable(self)
        self.dmq = FakeDmq(self)
        self.textopsx = FakeTextopsx(self)
        self.mqueue = FakeMqueue(self)

    # ------------------------------------------------------------------ recording
    def call(self, name: str, *args: Any, result: Any) -> Any:
        """Record one call; raise or return as the test configured, else `result`."""
        self.calls.append((name, args))
        if name in self.raises:
            raise self.raises[name]
        return self.results.get(name, result)

    def unknown(self, name: str) -> NoReturn:
        self.unmodelled.append(name)
        raise AttributeError(f"KSR stub does not model {name}")

    # ------------------------------------------------------------------ what happened
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def calls_to(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]

    def index_of(self, name: str, *args: Any) -> int:
        """Position of the first call `name(*args)` in the log (args may be omitted)."""
        for position, (called, called_args) in enumerate(self.calls):
            if called == name and (not args or called_args == args):
                return position
        raise AssertionError(f"{name}{args or ''} was not called; calls: {self.names()}")

    @property
    def replies(self) -> list[tuple[int, str]]:
        """(code, reason) of every reply the script sent itself."""
        return [(args[0], args[1]) for name, args in self.calls
                if name in ("sl.sl_send_reply", "sl.send_reply")]

    @property
    def challenges(self) -> list[tuple[Any, ...]]:
        """The realm and flags of every auth_challenge() (Kamailio sends the 401/407)."""
        return self.calls_to("auth.auth_challenge")

    @property
    def relayed(self) -> bool:
        return "tm.t_relay" in self.names()

    @property
    def outgoing_headers(self) -> list[tuple[str, str]]:
        """The request's headers as forwarded: originals not removed, then appended ones."""
        kept = [h for h in self.request.all_headers() if h[0].lower() not in self.removed_headers]
        added = []
        for text in self.appended_headers:
            name, _, value = text.rstrip("\r\n").partition(":")
            added.append((name.strip(), value.strip()))
        return kept + added

    # ------------------------------------------------------------------ KSR.* functions
    def _is(self, method: str) -> bool:
        return self.call(f"is_{method}", result=self.request.method == method)

    def is_INVITE(self) -> bool:
        return self._is("INVITE")

    def is_ACK(self) -> bool:
        return self._is("ACK")

    def is_BYE(self) -> bool:
        return self._is("BYE")

    def is_CANCEL(self) -> bool:
        return self._is("CANCEL")

    def is_REGISTER(self) -> bool:
        return self._is("REGISTER")

    def is_OPTIONS(self) -> bool:
        return self._is("OPTIONS")

    def is_MESSAGE(self) -> bool:
        return self._is("MESSAGE")

    def is_myself_ruri(self) -> bool:
        return self.call("is_myself_ruri", result=self.request.ruri_is_myself)

    def force_rport(self) -> int:
        return self.call("force_rport", result=1)

    def err(self, message: str) -> None:
        self.call("err", message, result=None)

    def warn(self, message: str) -> None:
        self.call("warn", message, result=None)

    def info(self, message: str) -> None:
        self.call("info", message, result=None)

    def dbg(self, message: str) -> None:
        self.call("dbg", message, result=None)


class _Part:
    """One KSR sub-module (KSR.tm, KSR.sl, ...) of a FakeKSR."""

    prefix = ""

    def __init__(self, ksr: FakeKSR) -> None:
        self._ksr = ksr

    def __getattr__(self, name: str) -> NoReturn:
        # Only reached for attributes the class does not define: an unmodelled export.
        if name.startswith("_"):
            raise AttributeError(name)
        self._ksr.unknown(f"{self.prefix}.{name}")

    def _call(self, name: str, *args: Any, result: Any) -> Any:
        return self._ksr.call(f"{self.prefix}.{name}", *args, result=result)


def _contact_uri(contact: str | None) -> str | None:
    if not contact or contact == "*":
        return None
    return contact.split("<", 1)[1].split(">", 1)[0] if "<" in contact else contact.split(";")[0]


def _contact_param(contact: str | None, name: str) -> str | None:
    """A parameter of the Contact header (after the URI's closing '>')."""
    if not contact or ">" not in contact:
        return None
    for part in contact.split(">", 1)[1].split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == name:
            return value
    return None


class FakePv(_Part):
    prefix = "pv"

    def _value(self, name: str) -> str | int | None:
        request = self._ksr.request
        if name.startswith("$hdr(") and name.endswith(")"):
            return request.header(name[len("$hdr("):-1])
        if name.startswith("$T_rpl($hdr(") and name.endswith("))"):
            wanted = name[len("$T_rpl($hdr("):-2].lower()
            return next((value for header, value in request.reply_headers
                         if header.lower() == wanted), None)
        values: dict[str, str | int | None] = {
            "$si": request.source_ip, "$sp": request.source_port, "$rm": request.method,
            "$pr": request.protocol,
            "$rU": request.ruri_user, "$fU": request.from_user, "$fd": request.from_domain,
            "$rd": request.ruri_domain if request.ruri_domain is not None else request.to_domain,
            "$tU": request.to_user, "$td": request.to_domain, "$ua": request.user_agent,
            "$fn": request.from_display,
            "$ct": request.header("Contact"),
            "$(ct{tobody.uri})": _contact_uri(request.header("Contact")),
            "$(ct{tobody.params}{param.value,expires})": _contact_param(
                request.header("Contact"), "expires"),
            "$ml": request.length(),
            "$aU": request.credentials.username if request.credentials else None,
            "$rs": request.reply_code,
        }
        if name not in values:
            self._ksr.unknown(f"pv {name}")
        return values[name]

    def get(self, name: str) -> str | int | None:
        return self._call("get", name, result=self._value(name))

    def geti(self, name: str) -> int:
        value = self._value(name)
        return self._call("geti", name, result=int(value) if value is not None else 0)

    def is_null(self, name: str) -> bool:
        return self._call("is_null", name, result=self._value(name) is None)


class FakeSl(_Part):
    prefix = "sl"

    def sl_send_reply(self, code: int, reason: str) -> int:
        return self._call("sl_send_reply", code, reason, result=1)

    def send_reply(self, code: int, reason: str) -> int:
        return self._call("send_reply", code, reason, result=1)

    def sl_reply_error(self) -> int:
        return self._call("sl_reply_error", result=1)


class FakeTm(_Part):
    prefix = "tm"

    def t_check_trans(self) -> int:
        # -1: no transaction matches, i.e. a new request. Tests set 1 (CANCEL or ACK
        # matched) or 0 (a retransmission tm absorbed).
        return self._call("t_check_trans", result=-1)

    def t_relay(self) -> int:
        return self._call("t_relay", result=1)

    def t_on_failure(self, route: str) -> int:
        return self._call("t_on_failure", route, result=1)

    def t_on_reply(self, route: str) -> int:
        return self._call("t_on_reply", route, result=1)

    def t_set_fr(self, fr_inv_timeout: int, fr_timeout: int) -> int:
        return self._call("t_set_fr", fr_inv_timeout, fr_timeout, result=1)

    def t_is_canceled(self) -> int:
        return self._call("t_is_canceled", result=-1)

    def t_check_status(self, pattern: str) -> int:
        return self._call("t_check_status", pattern, result=-1)

    def t_branch_timeout(self) -> int:
        return self._call("t_branch_timeout", result=-1)

    def t_any_replied(self) -> int:
        return self._call("t_any_replied", result=-1)


class FakeRr(_Part):
    prefix = "rr"

    def loose_route(self) -> int:
        return self._call("loose_route", result=-1)

    def record_route(self) -> int:
        return self._call("record_route", result=1)


class FakeHdr(_Part):
    prefix = "hdr"

    def remove(self, name: str) -> int:
        present = any(h[0].lower() == name.lower() for h in self._ksr.request.headers)
        result = self._call("remove", name, result=1 if present else -1)
        self._ksr.removed_headers.append(name.lower())
        return result

    def append(self, text: str) -> int:
        result = self._call("append", text, result=1)
        self._ksr.appended_headers.append(text)
        return result

    def insert(self, text: str) -> int:
        result = self._call("insert", text, result=1)
        self._ksr.inserted_headers.append(text)
        return result

    def append_to_reply(self, text: str) -> int:
        result = self._call("append_to_reply", text, result=1)
        self._ksr.reply_headers.append(text)
        return result


class FakeRegistrar(_Part):
    prefix = "registrar"

    def save(self, table: str, flags: int) -> int:
        return self._call("save", table, flags, result=1)

    def reg_send_reply(self) -> int:
        return self._call("reg_send_reply", result=1)

    def lookup(self, table: str) -> int:
        return self._call("lookup", table, result=1)


class FakeAuth(_Part):
    prefix = "auth"

    def pv_auth_check(self, realm: str, password: str, flags: int, checks: int) -> int:
        request = self._ksr.request
        creds = request.credentials
        if creds is None or creds.realm != realm:
            outcome = AUTH_NO_CREDENTIALS
        elif checks & 1 and creds.username != (
            request.to_user if request.method == "REGISTER" else request.from_user
        ):
            outcome = AUTH_USER_MISMATCH  # checks=1: the digest user must be the SIP user
        elif creds.password != password:
            outcome = AUTH_INVALID_PASSWORD
        else:
            outcome = AUTH_OK
        return self._call("pv_auth_check", realm, password, flags, checks, result=outcome)

    def auth_challenge(self, realm: str, flags: int) -> int:
        return self._call("auth_challenge", realm, flags, result=1)

    def consume_credentials(self) -> int:
        return self._call("consume_credentials", result=1)


class FakeDispatcher(_Part):
    prefix = "dispatcher"

    def ds_select_dst(self, group: int, algorithm: int) -> int:
        return self._call("ds_select_dst", group, algorithm, result=1)

    def ds_next_dst(self) -> int:
        return self._call("ds_next_dst", result=-1)


class FakeMaxfwd(_Part):
    prefix = "maxfwd"

    def process_maxfwd(self, limit: int) -> int:
        return self._call("process_maxfwd", limit, result=1)


class FakeSanity(_Part):
    prefix = "sanity"

    def sanity_check(self, msg_checks: int, uri_checks: int) -> int:
        return self._call("sanity_check", msg_checks, uri_checks, result=1)


class FakeSiputils(_Part):
    prefix = "siputils"

    def has_totag(self) -> int:
        return self._call("has_totag", result=1 if self._ksr.request.to_tag else -1)


class FakeDialog(_Part):
    prefix = "dialog"

    def is_known_dlg(self) -> int:
        return self._call("is_known_dlg", result=1 if self._ksr.request.known_dialog else -1)

    def dlg_manage(self) -> int:
        return self._call("dlg_manage", result=1)


class FakeNathelper(_Part):
    prefix = "nathelper"

    def nat_uac_test(self, flags: int) -> int:
        return self._call("nat_uac_test", flags,
                          result=1 if self._ksr.request.behind_nat else -1)

    def fix_nated_register(self) -> int:
        return self._call("fix_nated_register", result=1)

    def fix_nated_contact(self) -> int:
        return self._call("fix_nated_contact", result=1)

    def set_contact_alias(self) -> int:
        return self._call("set_contact_alias", result=1)


class FakeHtable(_Part):
    """KSR.htable over the node's FakeHtables (sht_get gives None for a missing item)."""

    prefix = "htable"

    def _tables(self) -> Any:
        if self._ksr.htables is None:
            raise AssertionError("this FakeKSR was made without htables")
        return self._ksr.htables

    def sht_get(self, table: str, key: str) -> Any:
        return self._call("sht_get", table, key, result=self._tables().get(table, key))

    def sht_setxs(self, table: str, key: str, value: str, seconds: int) -> int:
        self._tables().set_expiring(table, key, value, seconds)
        return self._call("sht_setxs", table, key, value, seconds, result=1)

    def sht_inc(self, table: str, key: str) -> int:
        return self._call("sht_inc", table, key, result=self._tables().increment(table, key))

    def sht_setex(self, table: str, key: str, seconds: int) -> int:
        self._tables().set_expiry(table, key, seconds)
        return self._call("sht_setex", table, key, seconds, result=1)

    def sht_rm(self, table: str, key: str) -> int:
        self._tables().remove(table, key)
        return self._call("sht_rm", table, key, result=1)


class FakeMqueue(_Part):
    """KSR.mqueue over the node's queues: mq_fetch takes the oldest item (1), -2 when the
    queue is empty; mqk_get/mqv_get read the item fetched last."""

    prefix = "mqueue"

    def __init__(self, ksr: FakeKSR) -> None:
        super().__init__(ksr)
        self._fetched: dict[str, tuple[str, str]] = {}

    def mq_add(self, queue: str, key: str, value: str) -> int:
        self._ksr.mqueues.setdefault(queue, deque()).append((key, value))
        return self._call("mq_add", queue, key, value, result=1)

    def mq_size(self, queue: str) -> int:
        return self._call("mq_size", queue, result=len(self._ksr.mqueues.get(queue, ())))

    def mq_fetch(self, queue: str) -> int:
        items = self._ksr.mqueues.get(queue)
        if not items:
            return self._call("mq_fetch", queue, result=-2)
        self._fetched[queue] = items.popleft()
        return self._call("mq_fetch", queue, result=1)

    def mqk_get(self, queue: str) -> str:
        return self._call("mqk_get", queue, result=self._fetched[queue][0])

    def mqv_get(self, queue: str) -> str:
        return self._call("mqv_get", queue, result=self._fetched[queue][1])


class FakeDmq(_Part):
    prefix = "dmq"

    def handle_message(self) -> int:
        return self._call("handle_message", result=1)


class FakeTextopsx(_Part):
    prefix = "textopsx"

    def msg_apply_changes(self) -> int:
        return self._call("msg_apply_changes", result=1)


# ---------------------------------------------------------------------------- the module


def new_ksr_module() -> types.ModuleType:
    """An empty ``KSR`` module; `bind` points it at a FakeKSR."""
    return types.ModuleType("KSR", "Fake KSR module for unit tests (tests/unit/ksr_stub.py)")


def bind(module: types.ModuleType, fake: FakeKSR) -> None:
    """Make `module` (the one the script imported) serve `fake` from now on."""
    for name in SUBMODULES + FUNCTIONS:
        setattr(module, name, getattr(fake, name))

    def missing(name: str) -> NoReturn:
        if name.startswith("__"):
            # Python's own probing (__file__, __path__ from tracebacks and importers),
            # not a call from the script.
            raise AttributeError(name)
        fake.unknown(name)

    # PEP 562: called for KSR.<name> the module does not hold.
    module.__getattr__ = missing  # type: ignore[method-assign]


@contextmanager
def kemi_script_loaded(script: Path) -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    """Import the KEMI script from its file with the fake ``KSR`` importable, as
    app_python3 does; yields (script module, KSR module) and removes KSR afterwards."""
    ksr = new_ksr_module()
    previous = sys.modules.get("KSR")
    sys.modules["KSR"] = ksr
    try:
        spec = importlib.util.spec_from_file_location("omnicc_kemi_under_test", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module, ksr
    finally:
        if previous is None:
            sys.modules.pop("KSR", None)
        else:
            sys.modules["KSR"] = previous
