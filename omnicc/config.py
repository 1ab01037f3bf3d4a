"""The one omnicc configuration file: its model, and loading with errors that name key and line.

Everything a node needs — where each service listens, the Asterisk nodes behind Kamailio,
and per tenant its agents, trunks and inbound routes — comes from one YAML file. A mistake
in it is reported as ``omnicc.yaml:12: tenants[0].agents[1].extension: ...`` so a PBX admin
can go straight to the line.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from omnicc import dialpatterns
from omnicc.dialpatterns import DialPattern, PatternTable
from omnicc.outbound import (
    MAX_DIALLED_LENGTH,
    OutboundPlan,
    OutboundRefused,
    OutboundRoute,
    OutboundRouter,
    check_dialled_number,
)
from omnicc.timeconditions import DateSpec, TimeGroup, TimeRule, load_zone

EXTENSION_RE = re.compile(r"^[0-9]{2,12}$")
DID_RE = re.compile(r"^\+?[0-9]{1,20}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# An announcement plays while no AGI session renews the call's lease (config Queue).
MIN_LEASE_WITH_ANNOUNCEMENTS = 10
# Bounds the ACD scripts accept (omnicc/acd_lua.py MAX_PENALTY, MAX_PRIORITY).
MAX_QUEUE_PENALTY = 500
MAX_QUEUE_PRIORITY = 99
# A feature code an agent dials: '*' and 1 to 6 digits. Pause reasons are picked by digits.
FEATURE_CODE_RE = re.compile(r"^\*[0-9]{1,6}$")
PAUSE_REASON_DIGITS_RE = re.compile(r"^[0-9]{1,3}$")
# A custom dialplan context of the admin's (destination `context:NAME[,EXTEN]`) and the
# extension entered in it: only names the tenant declares in dialplan_contexts.
CONTEXT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONTEXT_EXTEN_RE = re.compile(r"^(s|\+?[0-9*#]{1,32})$")
# An Asterisk sound name as Playback()/Read() take it: no extension, no absolute path, no
# '..', no '&' (which would chain files) nor ',' (which would end the argument). One
# optional sub-directory of the sounds directory (acme/main-menu).
SOUND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_-]{0,63})?$")
# IVR option keys: digits and '*' ('#' ends an entry in Read()).
IVR_OPTION_RE = re.compile(r"^[0-9*]{1,10}$")


class ConfigError(Exception):
    """A configuration file that cannot be used; ``str()`` lists every problem, one a line."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


# (where below the model that raised, message): a path like ("agents", 1, "extension").
Problem = tuple[tuple[Any, ...], str]


class _Problems(ValueError):
    """Raised by a model validator that checks several fields at once (duplicates,
    references): each problem keeps the path of the field at fault, so the error names
    that field and its line rather than the line of the whole model."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise _Problems(problems)


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is a misconfigured node.
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]


class ServicePort(_Strict):
    port: Port


class Services(_Strict):
    """Where the services of the local stack listen (``omnicc up``)."""

    listen: str = "127.0.0.1"
    kamailio: ServicePort = ServicePort(port=5060)
    asterisk: ServicePort = ServicePort(port=5080)
    agi: ServicePort = ServicePort(port=4573)
    redis: ServicePort = ServicePort(port=16379)
    postgres: ServicePort = ServicePort(port=15432)

    @field_validator("listen")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Services:
        seen: dict[int, str] = {}
        problems: list[Problem] = []
        for name in ("kamailio", "asterisk", "agi", "redis", "postgres"):
            port = getattr(self, name).port
            if port in seen:
                problems.append(((name, "port"), f"{name} and {seen[port]} both use port {port}"))
            seen[port] = name
        _raise_problems(problems)
        return self


class AsteriskNode(_Strict):
    """An Asterisk node Kamailio relays calls to (a dispatcher destination)."""

    host: str
    port: Port = 5080  # the same default as services.asterisk.port

    @field_validator("host")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"


class KamailioNode(_Strict):
    """A Kamailio node of the cluster: the nodes replicate registrations and bans to one
    another over DMQ (KDMQ requests, accepted only from these addresses and ports)."""

    host: str
    port: Port = 5060  # its SIP port (the same default as services.kamailio.port)

    @field_validator("host")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"


TrunkKind = Literal["carrier", "pbx"]


def _number_text(value: Any) -> Any:
    # An unquoted 911 reads as an int; numbers and patterns are text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _checked_number(value: str, what: str) -> str:
    try:
        return check_dialled_number(value)
    except OutboundRefused as exc:
        raise ValueError(f"{what}: {exc}") from None


def _optional_number(value: str) -> str:
    if not value:
        return value
    try:  # the error's place (tenants[0].queues[1].caller_id) already names the key
        return check_dialled_number(value)
    except OutboundRefused as exc:
        raise ValueError(str(exc)) from None


# A phone number the file may leave out ("" when it does), checked as a dialled number when
# given (an unquoted 5550100 is read as text too).
OptionalNumber = Annotated[str, BeforeValidator(_number_text), AfterValidator(_optional_number)]


class TrunkCallerId(_Strict):
    """A trunk's caller-ID policy (docs/routing.md "Caller ID"): the number it presents
    when nothing more specific does, whether a forwarded outside caller's own number is
    passed through (default: on a PBX) or replaced (default: on a carrier, which may refuse
    a From it did not assign), and which identity headers Asterisk sends (PJSIP send_pai,
    send_rpid, trust_id_outbound)."""

    number: OptionalNumber = ""
    forwarded: Literal["pass", "replace"] | None = None  # None: by the trunk's kind
    send_pai: bool = False
    send_rpid: bool = False
    trust_id_outbound: bool = False


def _named(value: str, what: str) -> str:
    """A name omnicc uses in keys, file names and dialplan: refused unless plain."""
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} is lower-case letters, digits, '-' and '_'")
    return value


def _extension_value(value: Any) -> str:
    value = str(value) if isinstance(value, int) else value
    if not isinstance(value, str) or not EXTENSION_RE.fullmatch(value):
        raise ValueError("an extension is 2 to 12 digits, written as a quoted string")
    return value


class Agent(_Strict):
    extension: str
    name: str = ""
    password: str = Field(min_length=8)
    # After-call work of this agent, overriding the wrapup_seconds of every queue it takes
    # a call from. None: the queue's.
    wrapup_seconds: int | None = Field(default=None, ge=0, le=3600)

    @field_validator("extension", mode="before")
    @classmethod
    def _extension(cls, value: Any) -> str:
        return _extension_value(value)


# Codecs a trunk may offer: those the Asterisk of the local stack can transcode, each
# with its codec_*.so loaded by modules.conf.j2 (tests/unit/test_trunk_registration.py
# checks the two agree). Asterisk's own names, as pjsip.conf's allow= takes them.
KNOWN_CODECS = ("ulaw", "alaw", "gsm")
DEFAULT_TRUNK_CODECS = ("ulaw", "alaw")
# Written into pjsip.conf as they are: a SIP user name, and a password without the
# characters that end or comment a pjsip.conf value (';', line breaks) or spaces.
# A SIP URI's user part written as it goes on the wire (RFC 3261 25.1 unreserved and
# user-unreserved characters that are safe in pjsip.conf; '#' would need escaping).
SIP_USER_RE = re.compile(r"^[A-Za-z0-9._+*!~-]{1,64}$")
SIP_PASSWORD_RE = re.compile(r"^[\x21-\x3a\x3c-\x7e]{1,128}$")


def _sip_user(value: str | None) -> str | None:
    if value is not None and not SIP_USER_RE.fullmatch(value):
        raise ValueError("a SIP user name is 1 to 64 letters, digits and . _ + * ! ~ -")
    return value


SipUser = Annotated[str, AfterValidator(_sip_user)]


class TrunkCredentials(_Strict):
    """What Asterisk answers a carrier's digest challenge with (401 to a REGISTER, 401 or
    407 to an INVITE): pjsip.conf's type=auth, in the file only Asterisk may read."""

    username: SipUser
    password: str
    # The digest user name when the carrier's differs from the account (From/To) user.
    auth_username: SipUser | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _password_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError("a password is text: quote it (an unquoted 12345678 reads as a "
                             "number)")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        if not SIP_PASSWORD_RE.fullmatch(value):
            raise ValueError("a trunk password is 1 to 128 printable ASCII characters without "
                             "spaces or ';'")
        return value


class TrunkRegistration(_Strict):
    """Asterisk registers to the carrier (pjsip.conf type=registration, line=yes); the
    carrier sends calls to the registered contact, straight to Asterisk."""

    # The registrar; None: the trunk's dial_host (and dial_port).
    server: str | None = None
    port: Port | None = None
    expiration: int = Field(default=3600, ge=60, le=86400)
    retry_interval: int = Field(default=60, ge=5, le=3600)
    # The user part of the contact Asterisk registers; None: the credentials' username.
    contact_user: SipUser | None = None
    # Where a call to the contact carries the DID: carriers put the contact user in the
    # Request-URI and the number called in the To header.
    did_from: Literal["to", "request_uri"] = "to"

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        return value if value is None else _host(value, "server")


def _host(value: str, key: str) -> str:
    """An IP address or a host name (it is written into pjsip.conf)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOST_NAME_RE.fullmatch(value):
        raise ValueError(f"{key} is an IP address or a host name") from None
    return value


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Trunk(_Strict):
    """A carrier, SBC or PBX admitted by source address (IP or CIDR subnet), or, with a
    registration, reached at the contact Asterisk registers."""

    name: str
    # None only with a registration: such a carrier's calls come to the registered
    # contact, and Kamailio admits nothing for the trunk (many cannot name their sources).
    address: str | None = None
    port: Port | None = None  # None: any source port from that address
    # A carrier (or SBC) or the company's PBX (destinations pbx:EXT dial its extensions).
    kind: TrunkKind = "carrier"
    caller_id: TrunkCallerId = TrunkCallerId()
    # Outbound: where Asterisk sends this trunk's calls (an IP address or a host name) and
    # on which port; None: the trunk only brings calls in. Asterisk sends them directly
    # (a PJSIP endpoint per trunk, pjsip.conf.j2), not through Kamailio.
    dial_host: str | None = None
    dial_port: Port = 5060
    # Outbound calls up at once on this trunk, counted across all Asterisk nodes in Redis
    # (omnicc/channel_limit.py); None: no limit, nothing counted.
    max_channels: int | None = Field(default=None, ge=1, le=100_000)
    # Digest credentials for calls to dial_host (and the registration), a registration,
    # and the codecs offered to and accepted from the carrier, in preference order.
    credentials: TrunkCredentials | None = None
    registration: TrunkRegistration | None = None
    codecs: list[str] = list(DEFAULT_TRUNK_CODECS)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "a trunk name")

    @field_validator("codecs")
    @classmethod
    def _codecs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"at least one codec (known: {', '.join(KNOWN_CODECS)})")
        for name in value:
            if name not in KNOWN_CODECS:
                raise ValueError(f"unknown codec {name!r} (known: {', '.join(KNOWN_CODECS)})")
        if len(set(value)) != len(value):
            raise ValueError("a codec is listed twice")
        return value

    @model_validator(mode="after")
    def _outbound_side(self) -> Trunk:
        problems: list[Problem] = []
        if self.dial_host is None:
            # Credentials and a registration belong to the endpoint dial_host makes.
            for key in ("credentials", "registration"):
                if getattr(self, key) is not None:
                    problems.append(((key,), f"a trunk with {key} needs a dial_host (the "
                                             "carrier Asterisk sends calls to)"))
        if self.registration is not None and self.credentials is None:
            problems.append((("registration",), "a registration needs credentials "
                                                "(username and password)"))
        if self.address is None:
            if self.registration is None:
                problems.append((("address",), "Field required: the source Kamailio admits "
                                               "this trunk's calls from (only a trunk with a "
                                               "registration may leave it out)"))
            elif self.port is not None:
                problems.append((("port",), "a port needs an address (the source it is a "
                                            "port of)"))
        _raise_problems(problems)
        return self

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not an IP address or subnet: {exc}") from None
        return value

    @field_validator("dial_host")
    @classmethod
    def _dial_host(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        # It is written into pjsip.conf: a host name and nothing else.
        return _host(value, "dial_host")

    @property
    def dial_uri(self) -> str:
        """Where Asterisk sends this trunk's calls ("" without dial_host)."""
        if self.dial_host is None:
            return ""
        host = f"[{self.dial_host}]" if ":" in self.dial_host else self.dial_host
        return f"sip:{host}:{self.dial_port}"

    @property
    def registrar_uri(self) -> str:
        """Where Asterisk sends this trunk's REGISTER ("" without a registration)."""
        reg = self.registration
        if reg is None or self.dial_host is None:
            return ""
        host = reg.server or self.dial_host
        port = reg.port or (self.dial_port if reg.server is None else 5060)
        return f"sip:{_uri_host(host)}:{port}"

    @property
    def registered_aor(self) -> str:
        """The address of record Asterisk registers (To/From of the REGISTER)."""
        reg, cred = self.registration, self.credentials
        if reg is None or cred is None or self.dial_host is None:
            return ""
        return f"sip:{cred.username}@{_uri_host(reg.server or self.dial_host)}"

    @property
    def contact_user(self) -> str:
        if self.registration is None or self.credentials is None:
            return ""
        return self.registration.contact_user or self.credentials.username

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The addresses admitted; None for a registration trunk without an address."""
        return None if self.address is None else ipaddress.ip_network(self.address)

    @property
    def source(self) -> str | None:
        """The sources this trunk admits, normalised: 10.0.0.1 and 10.0.0.1/32 are one;
        None when it admits none (a registration trunk without an address)."""
        if self.network is None:
            return None
        return str(self.network) if self.port is None else f"{self.network} port {self.port}"


DestinationKind = Literal["agent", "queue", "hangup", "busy", "ivr", "time_condition",
                         "context", "external", "pbx"]


class Destination(_Strict):
    """Where a call goes, as the file writes it: ``agent:1001``, ``queue:sales``,
    ``ivr:main``, ``time_condition:office``, ``context:NAME[,EXTEN]``, ``hangup`` (403),
    ``busy`` (486), or out again: ``external:NUMBER`` (by the outbound routes) and
    ``pbx:EXT`` / ``pbx:EXT@TRUNK`` (an extension of the tenant's PBX trunk)."""

    kind: DestinationKind
    target: str = ""
    exten: str = ""  # context destinations: the extension entered ("s" when not given)
    trunk: str = ""  # pbx destinations: the PBX trunk named ("" : the tenant's only one)

    def __str__(self) -> str:
        if self.kind == "context":
            return f"context:{self.target},{self.exten}"
        if self.kind == "pbx" and self.trunk:
            return f"pbx:{self.target}@{self.trunk}"
        return f"{self.kind}:{self.target}" if self.target else self.kind

    @classmethod
    def parse(cls, text: str) -> Destination:
        kind, _, target = text.partition(":")
        if kind == "agent":
            if not EXTENSION_RE.fullmatch(target):
                raise ValueError(f"'agent:' needs an agent extension, got {text!r}")
            return cls(kind="agent", target=target)
        if kind in ("queue", "ivr", "time_condition"):
            if not NAME_RE.fullmatch(target):
                raise ValueError(f"'{kind}:' needs a {kind.replace('_', ' ')} name "
                                 f"(lower-case letters, digits, '-' and '_'), got {text!r}")
            return cls(kind=kind, target=target)
        if kind == "context":
            name, _, exten = target.partition(",")
            exten = exten or "s"
            if not CONTEXT_RE.fullmatch(name) or name.startswith("omnicc"):
                raise ValueError(f"'context:' needs a dialplan context name (letters, digits, "
                                 f"'-' and '_', not omnicc's own), got {text!r}")
            if not CONTEXT_EXTEN_RE.fullmatch(exten):
                raise ValueError(f"context extension {exten!r} in {text!r}: 's' or up to 32 "
                                 "digits, '*', '#'")
            return cls(kind="context", target=name, exten=exten)
        if kind in ("hangup", "busy") and not target:
            return cls(kind=kind)
        if kind == "external":
            # The same check as a dialled number: only digits, a leading '+', '*', '#'.
            return cls(kind="external", target=_checked_number(target, "'external:'"))
        if kind == "pbx":
            exten, at, trunk = target.partition("@")
            exten = _checked_number(exten, "'pbx:' extension")
            if at and not NAME_RE.fullmatch(trunk):
                raise ValueError(f"'pbx:EXT@TRUNK' needs a trunk name (lower-case letters, "
                                 f"digits, '-' and '_'), got {text!r}")
            return cls(kind="pbx", target=exten, trunk=trunk)
        raise ValueError(
            f"unknown destination {text!r} (expected 'agent:EXT', 'queue:NAME', 'ivr:NAME', "
            "'time_condition:NAME', 'context:NAME[,EXTEN]', 'external:NUMBER', "
            "'pbx:EXT[@TRUNK]', 'hangup' or 'busy')")


def _destination_value(value: Any) -> Any:
    return Destination.parse(value) if isinstance(value, str) else value


QueueStrategy = Literal["longest-idle", "fewest-calls", "round-robin", "round-robin-memory",
                        "random", "linear", "ringall", "skills-weighted"]


class QueueMember(_Strict):
    agent: str
    penalty: int = Field(default=0, ge=0, le=MAX_QUEUE_PENALTY)  # lower is offered first
    # Higher is offered first by skills-weighted (omnicc/acd_lua.py MAX_SKILL, DEFAULT_SKILL).
    skill: int = Field(default=50, ge=0, le=100)

    @field_validator("agent", mode="before")
    @classmethod
    def _agent(cls, value: Any) -> str:
        return _extension_value(value)


# Whether calls are recorded. YAML's true/false (the first form of `record`) still mean
# always/never. on_demand (queues): the agent starts and stops it from the phone (*3).
RecordPolicy = Literal["always", "never"]
QueueRecordPolicy = Literal["always", "never", "on_demand"]


def _record_policy(value: Any) -> Any:
    if isinstance(value, bool):
        return "always" if value else "never"
    return value


class Queue(_Strict):
    """An ACD queue (an inbound campaign). Seconds here; the ACD keeps milliseconds."""

    name: str
    strategy: QueueStrategy = "longest-idle"
    members: list[QueueMember] = []
    ring_timeout_seconds: int = Field(default=20, ge=1, le=600)
    max_wait_seconds: int = Field(default=300, ge=1, le=86400)
    failover: Destination = Destination(kind="hangup")  # after max_wait_seconds
    max_length: int = Field(default=0, ge=0)  # calls waiting; 0: no limit
    # Where a call goes that finds the queue full, or (overflow_when_no_agents) no member
    # logged in. None: the failover destination.
    overflow: Destination | None = None
    overflow_when_no_agents: bool = True
    wrapup_seconds: int = Field(default=0, ge=0, le=3600)
    service_level_seconds: int = Field(default=20, ge=0, le=86400)
    auto_pause_reason: str = Field(default="", max_length=200)  # pause who does not answer
    # How long a waiting call stays queued without its FastAGI session renewing it.
    call_lease_seconds: int = Field(default=30, ge=3, le=3600)
    # The caller's waiting experience. moh_class: an Asterisk music-on-hold class (None:
    # Asterisk's default class). Announcements interrupt the music every
    # announce_frequency_seconds; the expected wait comes from the queue's statistics.
    moh_class: str | None = None
    announce_position: bool = False
    announce_expected_wait: bool = False
    announce_frequency_seconds: int = Field(default=30, ge=5, le=3600)
    # always: MixMonitor the answered call into {tenant}/{queue}/{date}/{call}.wav;
    # on_demand: the same file, when the agent presses the recording code.
    record: QueueRecordPolicy = "never"
    # The caller ID of this queue's calls when they go out again (an overflow or failover
    # to external:/pbx:, a transfer); "" : the route's, the trunk's (docs/routing.md).
    caller_id: OptionalNumber = ""

    @field_validator("record", mode="before")
    @classmethod
    def _record(cls, value: Any) -> Any:
        return _record_policy(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "a queue name")

    @field_validator("failover", "overflow", mode="before")
    @classmethod
    def _destination(cls, value: Any) -> Any:
        return _destination_value(value)

    @field_validator("auto_pause_reason")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n\0"):
            raise ValueError("a pause reason is one line")
        return value

    @field_validator("moh_class")
    @classmethod
    def _moh_class(cls, value: str | None) -> str | None:
        if value is not None and not NAME_RE.fullmatch(value):
            raise ValueError("a music-on-hold class is lower-case letters, digits, '-' and '_'")
        return value

    @model_validator(mode="after")
    def _announcements_fit_the_lease(self) -> Queue:
        # An announcement plays between two AGI sessions: nobody renews the call's lease
        # meanwhile, so the lease must outlast a whole announcement.
        if self.announces and self.call_lease_seconds < MIN_LEASE_WITH_ANNOUNCEMENTS:
            raise _Problems([(("call_lease_seconds",),
                              f"a queue with announcements needs call_lease_seconds of at "
                              f"least {MIN_LEASE_WITH_ANNOUNCEMENTS}")])
        return self

    @property
    def announces(self) -> bool:
        return self.announce_position or self.announce_expected_wait

    @property
    def overflow_destination(self) -> Destination:
        return self.overflow if self.overflow is not None else self.failover


class CustomerLookup(_Strict):
    """Customer identification by an HTTP lookup of the caller's number (omnicc/
    customer_lookup.py): GET url with ?caller=NUMBER, within timeout_ms; the answer names
    the customer and may name the destination; on any failure the call goes to fallback."""

    url: str
    timeout_ms: int = Field(default=500, ge=50, le=10000)
    fallback: Destination

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from omnicc.customer_lookup import LookupUrlError, parse_lookup_url

        try:
            parse_lookup_url(value)
        except LookupUrlError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("fallback", mode="before")
    @classmethod
    def _destination(cls, value: Any) -> Any:
        return _destination_value(value)


class AccountEntry(_Strict):
    """Customer identification by DTMF: `prompt` plays while the caller keys an account
    number (digits only, up to max_digits, timeout_seconds after the prompt)."""

    prompt: str
    max_digits: int = Field(default=8, ge=1, le=20)
    timeout_seconds: int = Field(default=5, ge=1, le=30)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _sound(value)


class InboundRoute(_Strict):
    """A DID (exact: ``did``) or an Asterisk dial pattern of DIDs (``pattern: _55501XX``)
    and its destination. An exact DID beats every pattern; among patterns the most
    specific wins, as in Asterisk (omnicc/dialpatterns.py)."""

    did: str | None = None
    pattern: str | None = None
    destination: Destination
    # For a queue destination: higher is served first (VIP numbers), 0 to 99.
    priority: int = Field(default=0, ge=0, le=MAX_QUEUE_PRIORITY)
    # always: MixMonitor the call's bridged parts into {tenant}/route-{did}/{date}/{uniqueid}.wav.
    record: RecordPolicy = "never"
    # Ask an HTTP service who the caller is (and maybe where the call goes) first.
    lookup: CustomerLookup | None = None
    # Ask the caller for an account number (DTMF) before the call goes on.
    account_entry: AccountEntry | None = None

    @field_validator("record", mode="before")
    @classmethod
    def _record(cls, value: Any) -> Any:
        return _record_policy(value)

    @field_validator("did", mode="before")
    @classmethod
    def _did(cls, value: Any) -> str:
        value = str(value) if isinstance(value, int) else value
        if not isinstance(value, str) or not DID_RE.fullmatch(value):
            raise ValueError("a DID is digits with an optional leading '+', as a quoted string")
        return value

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith("_"):
            raise ValueError("a pattern starts with '_' (_55501XX); an exact number is a did")
        DialPattern.compile(value)  # a PatternError (ValueError) names the character
        return value

    @field_validator("destination", mode="before")
    @classmethod
    def _destination(cls, value: Any) -> Any:
        return _destination_value(value)

    @model_validator(mode="after")
    def _priority_for_queues(self) -> InboundRoute:
        if (self.did is None) == (self.pattern is None):
            raise _Problems([((), "an inbound route has either a did or a pattern")])
        if self.priority and self.destination.kind != "queue":
            raise _Problems([(("priority",), "a priority only applies to a queue destination")])
        return self

    @property
    def match(self) -> str:
        """What the route matches, as the file writes it."""
        return self.did if self.did is not None else str(self.pattern)


class TimeRuleConfig(_Strict):
    """A rule of a time group (omnicc/timeconditions.py): every part given must match."""

    weekdays: str | None = None  # mon-fri, sat, mon-wed,fri
    times: str | None = None     # 09:00-18:00; 22:00-06:00 goes past midnight
    dates: list[str] = []        # 12-25, 2026-11-26, 12-24..12-31

    @field_validator("dates", mode="before")
    @classmethod
    def _dates(cls, value: Any) -> Any:
        return _date_texts(value)

    @model_validator(mode="after")
    def _parses(self) -> TimeRuleConfig:
        self.rule  # noqa: B018 - a TimeConditionError (ValueError) names the part at fault
        return self

    @functools.cached_property
    def rule(self) -> TimeRule:
        return TimeRule.from_dict({k: v for k, v in (
            ("weekdays", self.weekdays), ("times", self.times), ("dates", self.dates))
            if v not in (None, [])})


class TimeGroupConfig(_Strict):
    """Opening hours and holidays, in a timezone (an IANA name)."""

    name: str
    timezone: str
    rules: list[TimeRuleConfig] = Field(min_length=1)
    except_dates: list[str] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "a time group name")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        load_zone(value)
        return value

    @field_validator("except_dates", mode="before")
    @classmethod
    def _except_dates(cls, value: Any) -> Any:
        value = _date_texts(value)
        if isinstance(value, list):
            for text in value:
                if isinstance(text, str):
                    DateSpec.parse(text)
        return value

    @functools.cached_property
    def group(self) -> TimeGroup:
        return TimeGroup(name=self.name, timezone=self.timezone,
                         rules=tuple(r.rule for r in self.rules),
                         except_dates=tuple(DateSpec.parse(d) for d in self.except_dates))


def _date_texts(value: Any) -> Any:
    # YAML reads an unquoted 2026-11-26 as a date: take it back as written.
    if isinstance(value, date | str):
        value = [value]
    if isinstance(value, list):
        return [v.isoformat() if isinstance(v, date) else v for v in value]
    return value


class TimeConditionConfig(_Strict):
    """A time group and two destinations: `matched` while the group's clock is in it,
    `unmatched` otherwise."""

    name: str
    time_group: str
    matched: Destination
    unmatched: Destination

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "a time condition name")

    @field_validator("matched", "unmatched", mode="before")
    @classmethod
    def _destination(cls, value: Any) -> Any:
        return _destination_value(value)


def _sound(value: str) -> str:
    if not SOUND_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an Asterisk sound name (letters, digits, '-' and "
                         "'_', one optional sub-directory as in acme/main-menu; no extension, "
                         "no absolute path, no '..', no '&')")
    return value


class Ivr(_Strict):
    """A voice menu: `prompt` plays while the caller may key an option (up to max_digits
    digits, timeout_seconds after the prompt); no entry or an entry that is no option
    plays the prompt again (after invalid_prompt), `retries` times, then `default`."""

    name: str
    prompt: str
    options: dict[str, Destination] = Field(min_length=1)
    max_digits: int = Field(default=1, ge=1, le=10)
    timeout_seconds: int = Field(default=5, ge=1, le=60)
    retries: int = Field(default=2, ge=0, le=9)
    invalid_prompt: str = "pm-invalid-option"
    default: Destination = Destination(kind="hangup")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "an IVR name")

    @field_validator("prompt", "invalid_prompt")
    @classmethod
    def _prompts(cls, value: str) -> str:
        return _sound(value)

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: _destination_value(v) for k, v in value.items()}

    @field_validator("default", mode="before")
    @classmethod
    def _default(cls, value: Any) -> Any:
        return _destination_value(value)

    @model_validator(mode="after")
    def _option_keys(self) -> Ivr:
        problems: list[Problem] = []
        for key in self.options:
            if not IVR_OPTION_RE.fullmatch(key):
                problems.append((("options", key), f"option {key!r}: digits and '*' only "
                                                   "(quote it: \"1\")"))
            elif len(key) > self.max_digits:
                problems.append((("options", key), f"option {key!r} is longer than "
                                                   f"max_digits {self.max_digits}"))
        _raise_problems(problems)
        return self


class BlacklistConfig(_Strict):
    """Where a caller on the tenant's blacklist goes (the numbers are in Redis:
    ``omnicc blacklist import``). Default: hung up with 403."""

    destination: Destination = Destination(kind="hangup")

    @field_validator("destination", mode="before")
    @classmethod
    def _destination(cls, value: Any) -> Any:
        return _destination_value(value)


HOST_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class OutboundRouteConfig(_Strict):
    """An outbound route (omnicc/outbound.py): a number matching one of `patterns` (the
    best match across all routes wins, as in Asterisk) loses `strip` leading characters,
    gets `prepend` in front and is dialled on `trunks` in turn until one carries it."""

    name: str
    patterns: list[str] = Field(min_length=1)
    strip: int = Field(default=0, ge=0, le=MAX_DIALLED_LENGTH)
    prepend: str = ""
    trunks: list[str] = Field(min_length=1)
    caller_id: OptionalNumber = ""  # replaces the agent's number towards the carrier

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "a route name")

    @field_validator("patterns", mode="before")
    @classmethod
    def _pattern_texts(cls, value: Any) -> Any:
        return [_number_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("prepend", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return _number_text(value)

    @field_validator("prepend")
    @classmethod
    def _prepend(cls, value: str) -> str:
        if value not in ("", "+"):  # a lone '+' makes a national number E.164
            _checked_number(value, "prepend")
        return value

    @model_validator(mode="after")
    def _route(self) -> OutboundRouteConfig:
        problems: list[Problem] = []
        for index, pattern in enumerate(self.patterns):
            try:
                compiled = dialpatterns.DialPattern.compile(pattern)
            except dialpatterns.PatternError as exc:
                problems.append((("patterns", index), str(exc)))
                continue
            if self.strip >= compiled.min_length:
                problems.append((("strip",), f"strip {self.strip} removes every character of "
                                             f"a number matching {pattern} (at least "
                                             f"{compiled.min_length} long)"))
        problems.extend(_duplicates(self.patterns, "pattern", lambda i: ("patterns", i)))
        for index, trunk in enumerate(self.trunks):
            if not NAME_RE.fullmatch(trunk):
                problems.append((("trunks", index), f"{trunk!r} is not a trunk name"))
        problems.extend(_duplicates(self.trunks, "trunk", lambda i: ("trunks", i)))
        _raise_problems(problems)
        return self


class FeatureCodes(_Strict):
    """What an agent dials from its phone to change its own ACD state. The pause code may
    be followed by the digits of one of `pause_reasons`; alone it pauses with
    `default_pause_reason`."""

    login: str = "*11"
    logout: str = "*12"
    pause: str = "*21"
    unpause: str = "*22"
    pause_reasons: dict[str, str] = {"1": "break", "2": "lunch", "3": "training"}
    default_pause_reason: str = "break"

    @field_validator("login", "logout", "pause", "unpause", mode="before")
    @classmethod
    def _code(cls, value: Any) -> Any:
        if not isinstance(value, str) or not FEATURE_CODE_RE.fullmatch(value):
            raise ValueError("a feature code is '*' and 1 to 6 digits, as a quoted string")
        return value

    @field_validator("pause_reasons")
    @classmethod
    def _reasons(cls, value: dict[str, str]) -> dict[str, str]:
        for digits, reason in value.items():
            if not PAUSE_REASON_DIGITS_RE.fullmatch(digits):
                raise ValueError(f"pause reason code {digits!r}: 1 to 3 digits")
            _pause_reason(reason)
        return value

    @field_validator("default_pause_reason")
    @classmethod
    def _default_reason(cls, value: str) -> str:
        return _pause_reason(value)

    @model_validator(mode="after")
    def _unambiguous(self) -> FeatureCodes:
        # The pause code takes trailing digits, so no code may begin another one.
        names = ("login", "logout", "pause", "unpause")
        problems: list[Problem] = []
        for name in names:
            for other in names:
                mine, theirs = getattr(self, name), getattr(self, other)
                if name == other or not theirs.startswith(mine):
                    continue
                if mine != theirs:
                    problems.append(((name,), f"feature code {mine} of {name} is the start "
                                              f"of {other}'s {theirs}"))
                elif names.index(other) < names.index(name):  # told once, at the second
                    problems.append(((name,), f"feature code {mine} of {name} is "
                                              f"{other}'s too"))
        _raise_problems(problems)
        return self


def _pause_reason(value: str) -> str:
    if not value or len(value) > 200 or any(ch in value for ch in "\r\n\0"):
        raise ValueError("a pause reason is one line of 1 to 200 characters")
    return value


class Tenant(_Strict):
    name: str
    domain: str
    agents: list[Agent] = []
    trunks: list[Trunk] = []
    # Outbound: what an agent dials that is not an agent's extension (docs/routing.md).
    outbound_routes: list[OutboundRouteConfig] = []
    # Never refused by do-not-call nor by channel limits; each must match a route.
    emergency_numbers: list[str] = []
    inbound_routes: list[InboundRoute] = []
    queues: list[Queue] = []
    feature_codes: FeatureCodes = FeatureCodes()
    time_groups: list[TimeGroupConfig] = []
    time_conditions: list[TimeConditionConfig] = []
    ivrs: list[Ivr] = []
    blacklist: BlacklistConfig = BlacklistConfig()
    # The admin's own dialplan contexts a `context:` destination may name.
    dialplan_contexts: list[str] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _named(value, "a tenant name")

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", value):
            raise ValueError("a SIP domain is a lower-case host name")
        return value

    @model_validator(mode="after")
    def _references(self) -> Tenant:
        problems = [
            *_duplicates([a.extension for a in self.agents], "agent extension",
                         lambda i: ("agents", i, "extension")),
            *_duplicates([t.name for t in self.trunks], "trunk name",
                         lambda i: ("trunks", i, "name")),
            *_duplicates([r.did for r in self.inbound_routes if r.did is not None],
                         "inbound route DID", lambda i: ("inbound_routes", i, "did")),
            *_duplicates([q.name for q in self.queues], "queue name",
                         lambda i: ("queues", i, "name")),
            *_duplicates([g.name for g in self.time_groups], "time group name",
                         lambda i: ("time_groups", i, "name")),
            *_duplicates([c.name for c in self.time_conditions], "time condition name",
                         lambda i: ("time_conditions", i, "name")),
            *_duplicates([v.name for v in self.ivrs], "IVR name",
                         lambda i: ("ivrs", i, "name")),
        ]
        # Patterns compared as written: _55501XX twice is a mistake; _5550XXX beside it not.
        patterns = [(i, r.pattern) for i, r in enumerate(self.inbound_routes) if r.pattern]
        problems.extend(_duplicates([p for _, p in patterns], "inbound route pattern",
                                    lambda i: ("inbound_routes", patterns[i][0], "pattern")))
        for index, context in enumerate(self.dialplan_contexts):
            if not CONTEXT_RE.fullmatch(context) or context.startswith("omnicc"):
                problems.append((("dialplan_contexts", index),
                                 f"{context!r} is not a dialplan context name (letters, digits, "
                                 "'-' and '_', not omnicc's own)"))
        extensions = {a.extension for a in self.agents}
        queues = {q.name for q in self.queues}
        named = {"ivr": {v.name for v in self.ivrs},
                 "time_condition": {c.name for c in self.time_conditions},
                 "context": set(self.dialplan_contexts)}
        what_named = {"ivr": "IVRs", "time_condition": "time conditions",
                      "context": "dialplan_contexts"}

        def check(dest: Destination | None, where: tuple[Any, ...], what: str) -> None:
            if dest is None:
                return
            if dest.kind == "agent" and dest.target not in extensions:
                problems.append((where, f"{what} goes to agent {dest.target}, "
                                        "which is not among this tenant's agents"))
            if dest.kind == "queue" and dest.target not in queues:
                problems.append((where, f"{what} goes to queue {dest.target}, "
                                        "which is not among this tenant's queues"))
            if dest.kind in named and dest.target not in named[dest.kind]:
                problems.append((where, f"{what} goes to {dest.kind.replace('_', ' ')} "
                                        f"{dest.target}, which is not among this tenant's "
                                        f"{what_named[dest.kind]}"))

        for where, what, dest in self.destinations():
            check(dest, where, what)
        groups = {g.name for g in self.time_groups}
        for index, condition in enumerate(self.time_conditions):
            if condition.time_group not in groups:
                problems.append((("time_conditions", index, "time_group"),
                                 f"time condition {condition.name} uses time group "
                                 f"{condition.time_group}, which is not among this tenant's "
                                 "time groups"))
        for index, queue in enumerate(self.queues):
            for key in ("failover", "overflow"):
                dest = getattr(queue, key)
                if dest is not None and dest.kind == "queue" and dest.target == queue.name:
                    problems.append((("queues", index, key),
                                     f"queue {queue.name} cannot {key} to itself"))
            problems.extend(_duplicates(
                [m.agent for m in queue.members], "member",
                _member_path(index)))
            if _leads_back(self.queues, queue.name):
                problems.append((("queues", index, "name"),
                                 f"the failover and overflow destinations of queue "
                                 f"{queue.name} lead back to it through other queues"))
            for m_index, member in enumerate(queue.members):
                if member.agent not in extensions:
                    problems.append((
                        ("queues", index, "members", m_index, "agent"),
                        f"queue {queue.name} member {member.agent} is not among this "
                        "tenant's agents"))
        if not problems:  # a cycle among names that are not there means nothing
            problems.extend(_cycles_without_input(self))
        _raise_problems(problems)
        return self

    @field_validator("emergency_numbers", mode="before")
    @classmethod
    def _emergency_texts(cls, value: Any) -> Any:
        return [_number_text(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _outbound(self) -> Tenant:
        problems = _duplicates([r.name for r in self.outbound_routes], "outbound route name",
                               lambda i: ("outbound_routes", i, "name"))
        trunks = {t.name: t for t in self.trunks}
        for index, route in enumerate(self.outbound_routes):
            for t_index, name in enumerate(route.trunks):
                trunk = trunks.get(name)
                where = ("outbound_routes", index, "trunks", t_index)
                if trunk is None:
                    problems.append((where, f"outbound route {route.name} uses trunk {name}, "
                                            "which is not among this tenant's trunks"))
                elif trunk.dial_host is None:
                    problems.append((where, f"outbound route {route.name} uses trunk {name}, "
                                            "which has no dial_host to send calls to"))
        for index, number in enumerate(self.emergency_numbers):
            try:
                check_dialled_number(number)
            except OutboundRefused as exc:
                problems.append((("emergency_numbers", index), str(exc)))
        problems.extend(_duplicates(self.emergency_numbers, "emergency number",
                                    lambda i: ("emergency_numbers", i)))
        if not problems:  # an emergency number must find a route when dialled
            router = OutboundRouter(self._outbound_routes_by_pattern)
            problems = [(("emergency_numbers", index),
                         f"emergency number {number} matches no outbound route")
                        for index, number in enumerate(self.emergency_numbers)
                        if router.route_for(number) is None]
        _raise_problems(problems)
        return self

    @model_validator(mode="after")
    def _forwards(self) -> Tenant:
        """external:NUMBER must find an outbound route now, not when a caller reaches it;
        pbx:EXT must name (or find) one PBX trunk that dials."""
        problems: list[Problem] = []
        for where, what, dest in self.destinations():
            try:
                if dest.kind == "external":
                    self.plan_outbound(dest.target)
                elif dest.kind == "pbx":
                    self.pbx_trunk(dest.trunk)
            except (OutboundRefused, ValueError) as exc:
                problems.append((where, f"{what} goes to {dest}: {exc}"))
        _raise_problems(problems)
        return self

    def destinations(self) -> list[tuple[tuple[Any, ...], str, Destination]]:
        """Every destination the tenant writes: (key path, what it is, the destination)."""
        found: list[tuple[tuple[Any, ...], str, Destination | None]] = []
        for index, route in enumerate(self.inbound_routes):
            found.append((("inbound_routes", index, "destination"),
                          f"inbound route {route.match}", route.destination))
            if route.lookup is not None:
                found.append((("inbound_routes", index, "lookup", "fallback"),
                              f"the lookup fallback of inbound route {route.match}",
                              route.lookup.fallback))
        found.append((("blacklist", "destination"), "the blacklist destination",
                      self.blacklist.destination))
        for index, condition in enumerate(self.time_conditions):
            for key in ("matched", "unmatched"):
                found.append((("time_conditions", index, key), f"the {key} destination of "
                              f"time condition {condition.name}", getattr(condition, key)))
        for index, ivr in enumerate(self.ivrs):
            for key, dest in ivr.options.items():
                found.append((("ivrs", index, "options", key),
                              f"option {key} of IVR {ivr.name}", dest))
            found.append((("ivrs", index, "default"), f"the default of IVR {ivr.name}",
                          ivr.default))
        for index, queue in enumerate(self.queues):
            for key in ("failover", "overflow"):
                found.append((("queues", index, key), f"the {key} of queue {queue.name}",
                              getattr(queue, key)))
        return [(where, what, dest) for where, what, dest in found if dest is not None]

    def pbx_trunk(self, name: str = "") -> Trunk:
        """The trunk a pbx: destination dials: the PBX trunk `name`, or without a name the
        tenant's only PBX trunk with a dial_host; ValueError saying why there is none."""
        if name:
            trunk = self.trunk(name)
            if trunk is None:
                raise ValueError(f"trunk {name} is not among this tenant's trunks")
            if trunk.kind != "pbx":
                raise ValueError(f"trunk {name} is not a PBX trunk (kind: pbx)")
            if trunk.dial_host is None:
                raise ValueError(f"PBX trunk {name} has no dial_host to send calls to")
            return trunk
        pbxs = [t for t in self.trunks if t.kind == "pbx" and t.dial_host is not None]
        if not pbxs:
            raise ValueError("this tenant has no PBX trunk (kind: pbx) with a dial_host")
        if len(pbxs) > 1:
            raise ValueError(f"this tenant has {len(pbxs)} PBX trunks "
                             f"({', '.join(t.name for t in pbxs)}): name one, as "
                             "pbx:EXT@TRUNK")
        return pbxs[0]

    def forward_destination(self, dest: Destination) -> Destination:
        """An external: or pbx: destination as the call path names it: a pbx: one with its
        trunk filled in (pbx:2001 -> pbx:2001@hq)."""
        if dest.kind == "pbx" and not dest.trunk:
            return dest.model_copy(update={"trunk": self.pbx_trunk().name})
        return dest

    @functools.cached_property
    def forward_destinations(self) -> frozenset[str]:
        """Every external: and pbx: destination of the tenant, as forward_destination()
        names it: the only ones a call is ever sent out to without an agent."""
        return frozenset(str(self.forward_destination(dest))
                         for _, _, dest in self.destinations()
                         if dest.kind in ("external", "pbx"))

    @functools.cached_property
    def _outbound_routes_by_pattern(self) -> list[OutboundRoute]:
        # One pure route per pattern, named by its place (p0, p1, ...): a route's name is
        # unique in omnicc.outbound, so outbound_route_name() maps back to the file's.
        routes = [(route, pattern) for route in self.outbound_routes
                  for pattern in route.patterns]
        return [OutboundRoute(name=f"p{index}", pattern=pattern, trunks=tuple(route.trunks),
                              strip=route.strip, prepend=route.prepend,
                              caller_id=route.caller_id)
                for index, (route, pattern) in enumerate(routes)]

    @functools.cached_property
    def _outbound_route_names(self) -> dict[str, str]:
        patterns = [route.name for route in self.outbound_routes for _ in route.patterns]
        return {f"p{index}": name for index, name in enumerate(patterns)}

    @functools.cached_property
    def outbound_router(self) -> OutboundRouter:
        return OutboundRouter(self._outbound_routes_by_pattern, self.emergency_numbers)

    def plan_outbound(self, dialled: object,
                      do_not_call: Callable[[str], bool] | None = None) -> OutboundPlan:
        """What to dial for `dialled` (omnicc.outbound.OutboundRouter.plan), naming the
        route as the file does; OutboundRefused when it is not dialled."""
        plan = self.outbound_router.plan(dialled, do_not_call)
        return dataclasses.replace(plan, route=self._outbound_route_names[plan.route])

    def trunk(self, name: str) -> Trunk | None:
        return next((t for t in self.trunks if t.name == name), None)

    @functools.cached_property
    def _agents_by_extension(self) -> dict[str, Agent]:
        return {a.extension: a for a in self.agents}

    def agent(self, extension: str) -> Agent | None:
        # A dict: the KEMI script asks on every authenticated request.
        return self._agents_by_extension.get(extension)

    @functools.cached_property
    def _routes_by_did(self) -> dict[str, InboundRoute]:
        return {r.did: r for r in self.inbound_routes if r.did is not None}

    @functools.cached_property
    def _route_patterns(self) -> PatternTable[InboundRoute]:
        return PatternTable((r.pattern, r) for r in self.inbound_routes if r.pattern)

    def inbound_route(self, did: str) -> InboundRoute | None:
        """The route of `did`: its exact route, else the best pattern's (Asterisk's order)."""
        exact = self._routes_by_did.get(did)
        if exact is not None:
            return exact
        found = self._route_patterns.lookup(did)
        return found[1] if found else None

    def time_condition(self, name: str) -> TimeConditionConfig | None:
        return next((c for c in self.time_conditions if c.name == name), None)

    def time_group(self, name: str) -> TimeGroupConfig | None:
        return next((g for g in self.time_groups if g.name == name), None)

    def ivr(self, name: str) -> Ivr | None:
        return next((v for v in self.ivrs if v.name == name), None)

    def queue(self, name: str) -> Queue | None:
        return next((q for q in self.queues if q.name == name), None)


class JwtAuth(_Strict):
    """Agent bearer tokens (RFC 8898). `aud` of a token is its tenant's SIP domain."""

    issuer: str = "omnicc"
    # Verification keys (a JWKS document), so an outside identity provider can issue
    # tokens; relative paths are relative to the config file. None: var/secrets/jwks.json,
    # made by the local stack with its own signing key.
    jwks_file: str | None = None
    # The key `omnicc token agent` signs with (PEM) and its key id.
    signing_key_file: str | None = None
    signing_kid: str = "omnicc-1"
    algorithm: Literal["EdDSA", "ES256", "RS256"] = "EdDSA"
    token_ttl_seconds: int = Field(default=8 * 3600, ge=60, le=31 * 24 * 3600)


class DigestAuth(_Strict):
    """Time-limited digest credentials for hard phones (as Kamailio's auth_ephemeral):
    username `EXPIRY:EXT`, password base64(HMAC-SHA256(secret, username))."""

    # The shared secret (a file holding it); None: var/secrets/digest.secret.
    ephemeral_secret_file: str | None = None
    credential_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=366 * 24 * 3600)
    # Static passwords from tenants[].agents[].password still work when true.
    allow_static_passwords: bool = True
    # A digest answer without qop=auth is refused: it has no nonce count, so a captured
    # answer could be replayed while its nonce lives. False admits RFC 2069-style phones.
    require_qop: bool = True
    # The digest hash (RFC 8760): SHA-256 for phones that have it; MD5 for all the others.
    # One per node: Kamailio's challenge names only this one.
    algorithm: Literal["MD5", "SHA-256"] = "MD5"


class Security(_Strict):
    """What Kamailio does to sources that misbehave. Trusted peers (trunks, the PBX,
    Asterisk nodes) are exempt from all of it."""

    # Flood: more than flood_requests requests within flood_window_seconds from one IP.
    flood_requests: int = Field(default=200, ge=1)
    flood_window_seconds: int = Field(default=2, ge=1, le=3600)
    # Repeated authentication failures (wrong password, bad token) from one IP.
    auth_failures: int = Field(default=10, ge=1)
    auth_failure_window_seconds: int = Field(default=60, ge=1, le=86400)
    ban_seconds: int = Field(default=900, ge=1, le=30 * 86400)
    max_message_bytes: int = Field(default=16384, ge=1024, le=65535)
    # Requests whose User-Agent contains one of these (case-insensitive) are dropped and
    # their source banned.
    scanner_user_agents: list[str] = [
        "friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipsak", "iwar",
        "sundayddr", "vaxsipuseragent", "pplsip", "smap", "nmap", "sipscan",
    ]


class Auth(_Strict):
    jwt: JwtAuth = JwtAuth()
    digest: DigestAuth = DigestAuth()


class OmniccConfig(_Strict):
    node: str = "omnicc-1"
    services: Services = Services()
    auth: Auth = Auth()
    security: Security = Security()
    # Asterisk nodes behind Kamailio's dispatcher; empty means the local stack's Asterisk.
    asterisk_nodes: list[AsteriskNode] = []
    # Every Kamailio node of the cluster (this one may be listed too). Empty: one node.
    kamailio_nodes: list[KamailioNode] = []
    tenants: list[Tenant] = Field(min_length=1)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        return _named(value, "a node name")

    @model_validator(mode="after")
    def _cross_tenant(self) -> OmniccConfig:
        trunk_places = [
            (tenant_index, trunk_index, trunk)
            for tenant_index, tenant in enumerate(self.tenants)
            for trunk_index, trunk in enumerate(tenant.trunks)
            if trunk.source is not None  # a trunk without an address admits no source
        ]
        problems = [
            *_duplicates([t.name for t in self.tenants], "tenant name",
                         lambda i: ("tenants", i, "name")),
            *_duplicates([t.domain for t in self.tenants], "tenant domain",
                         lambda i: ("tenants", i, "domain")),
            # A source address must identify one tenant, or a trunk could reach another's
            # routes. Compared as networks: 10.0.0.1 and 10.0.0.1/32 are the same source.
            *_duplicates(
                [trunk.source for _, _, trunk in trunk_places], "trunk address",
                lambda i: ("tenants", trunk_places[i][0], "trunks", trunk_places[i][1], "address"),
            ),
        ]
        _raise_problems(problems)
        return self

    @property
    def dispatcher_nodes(self) -> list[AsteriskNode]:
        if self.asterisk_nodes:
            return list(self.asterisk_nodes)
        return [AsteriskNode(host=self.services.listen, port=self.services.asterisk.port)]

    @property
    def kamailio_peers(self) -> list[KamailioNode]:
        """The other Kamailio nodes of the cluster (DMQ peers of this one)."""
        me = (ipaddress.ip_address(self.services.listen), self.services.kamailio.port)
        return [n for n in self.kamailio_nodes
                if (ipaddress.ip_address(n.host), n.port) != me]

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    @functools.cached_property
    def _tenants_by_domain(self) -> dict[str, Tenant]:
        return {t.domain: t for t in self.tenants}

    def tenant_by_domain(self, domain: str) -> Tenant | None:
        # A dict: the KEMI script asks on every request.
        return self._tenants_by_domain.get(domain)


def _leads_back(queues: list[Queue], start: str) -> bool:
    """Whether failover/overflow destinations lead from queue `start` through at least one
    other queue back to it: a call would loop between them for ever."""
    by_name = {q.name: q for q in queues}

    def next_queues(name: str) -> set[str]:
        queue = by_name.get(name)
        if queue is None:
            return set()
        return {d.target for d in (queue.failover, queue.overflow)
                if d is not None and d.kind == "queue" and d.target != name}

    seen: set[str] = set()
    todo = list(next_queues(start))
    while todo:
        name = todo.pop()
        if name == start:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(next_queues(name))
    return False


def _cycles_without_input(tenant: Tenant) -> list[Problem]:
    """A problem for every time condition or IVR from which destinations that need no
    caller input (a time condition's two, an IVR's default, a queue's failover and
    overflow) lead back to it: the call would go round for ever. Through an IVR option
    (the caller keyed it) a loop is a menu, and fine."""
    queues = {q.name: q for q in tenant.queues}
    conditions = {c.name: c for c in tenant.time_conditions}
    ivrs = {v.name: v for v in tenant.ivrs}

    def onward(node: tuple[str, str]) -> list[Destination]:
        kind, name = node
        if kind == "time_condition" and name in conditions:
            return [conditions[name].matched, conditions[name].unmatched]
        if kind == "ivr" and name in ivrs:
            return [ivrs[name].default]
        if kind == "queue" and name in queues:
            return [d for d in (queues[name].failover, queues[name].overflow) if d is not None]
        return []

    def path_back(start: tuple[str, str]) -> list[tuple[str, str]] | None:
        todo = [(start, [start])]
        seen = set()
        while todo:
            node, path = todo.pop()
            for dest in onward(node):
                nxt = (dest.kind, dest.target)
                if nxt == start:
                    return path + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, path + [nxt]))
        return None

    problems: list[Problem] = []
    for key, kind, items in (("time_conditions", "time_condition", tenant.time_conditions),
                             ("ivrs", "ivr", tenant.ivrs)):
        for index, item in enumerate(items):
            path = path_back((kind, item.name))
            if path is not None:
                shown = " -> ".join(f"{k}:{n}" for k, n in path)
                problems.append(((key, index, "name"), f"{shown} loops without the caller "
                                                       "keying anything"))
    return problems


def _member_path(queue_index: int) -> Callable[[int], tuple[Any, ...]]:
    return lambda i: ("queues", queue_index, "members", i, "agent")


def _duplicates(
    values: list[Any], what: str, where: Callable[[int], tuple[Any, ...]]
) -> list[Problem]:
    """A problem for every value seen before, at the path ``where(index)`` of the repeat."""
    seen = set()
    problems: list[Problem] = []
    for index, value in enumerate(values):
        if value in seen:
            problems.append((where(index), f"duplicate {what} {value!r}"))
        seen.add(value)
    return problems


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Located:
    data: Any
    lines: dict[tuple[Any, ...], int]  # path of keys/indices -> 1-based line


# YAML 1.1 reads a plain 0100 as octal 64, +1555 as 1555 and 1_000 as 1000: an extension or
# DID written without quotes would silently become another number. A plain integer is
# only taken as a number when written the ordinary way; otherwise it stays as written and
# the field decides (ports still parse "05060", extensions keep their leading zero).
_ORDINARY_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_YAML_INT_TAG = "tag:yaml.org,2002:int"


def _yaml_problem(path: str, text: str, exc: yaml.YAMLError) -> str:
    """One line naming the file line of a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line = f":{mark.line + 1}"
    elif isinstance(exc, yaml.reader.ReaderError):
        # A bad character has no mark, only an offset into the text.
        line_number = text.count("\n", 0, exc.position) + 1
        line = f":{line_number}"
    else:
        line = ""
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        problem = f"character {shown} is not allowed"
    else:
        problem = getattr(exc, "problem", None) or str(exc)
    return f"{path}{line}: not valid YAML: {_one_line(problem)}"


def _one_line(text: str) -> str:
    # ConfigError promises one problem a line; library messages may hold line breaks.
    return " ".join(str(text).split())


def _compose_with_lines(text: str, path: str) -> _Located:
    """Parse YAML keeping the line of every key and list item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(path, text, exc)]) from None
    except RecursionError:
        raise ConfigError(path, [f"{path}: nested too deeply"]) from None
    lines: dict[tuple[Any, ...], int] = {}
    # One loader per parse: a loader remembers every node it constructed.
    scalars = yaml.SafeLoader("")

    def fail(n: yaml.Node, where: tuple[Any, ...], message: str) -> ConfigError:
        return ConfigError(path, [f"{path}:{n.start_mark.line + 1}: {_dotted(where)}: {message}"])

    def walk(n: yaml.Node | None, where: tuple[Any, ...], enclosing: frozenset[int]) -> Any:
        if n is None:
            return None
        if id(n) in enclosing:
            raise fail(n, where, "an alias refers to a node that contains it")
        lines[where] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            inside = enclosing | {id(n)}
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise fail(key_node, where, "a key must be a plain name, not a list or mapping")
                key = key_node.value
                if key in out:
                    raise fail(key_node, where + (key,), "key given twice")
                out[key] = walk(value_node, where + (key,), inside)
                lines[where + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            inside = enclosing | {id(n)}
            return [walk(item, where + (i,), inside) for i, item in enumerate(n.value)]
        if n.tag == _YAML_INT_TAG and n.style is None and not _ORDINARY_INT.fullmatch(n.value):
            return n.value
        try:
            return scalars.construct_object(n, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, IndexError) as exc:  # PyYAML quirks
            # Bad tags (!!python/object, !foo) and impossible values (!!int abc, 2001-13-45).
            problem = getattr(exc, "problem", None) or str(exc)
            raise fail(n, where, f"cannot read {n.value!r}: {_one_line(problem)}") from None

    try:
        return _Located(walk(node, (), frozenset()), lines)
    except RecursionError:
        raise ConfigError(path, [f"{path}: nested too deeply"]) from None


def _dotted(where: tuple[Any, ...]) -> str:
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # A key that is not a plain word (a typo with a space or a line break in it) is
        # quoted, so the message stays one readable line.
        name = str(part) if re.fullmatch(r"[A-Za-z0-9_-]+", str(part)) else repr(str(part))
        out += f".{name}" if out else name
    return out or "(top level)"


def _line_for(lines: dict[tuple[Any, ...], int], where: tuple[Any, ...]) -> int | None:
    while True:
        if where in lines:
            return lines[where]
        if not where:
            return None
        where = where[:-1]


def parse_config(text: str, path: str = "omnicc.yaml") -> OmniccConfig:
    located = _compose_with_lines(text, path)
    if not isinstance(located.data, dict):
        raise ConfigError(path, [f"{path}:1: the file must be a mapping of keys (see examples/)"])
    try:
        return OmniccConfig.model_validate(located.data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = tuple(err["loc"])
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, _Problems):
                # A check over several fields: report each at the field at fault.
                located_problems = [(where + below, message) for below, message in cause.problems]
            elif err["type"] == "extra_forbidden":
                located_problems = [(where, "unknown key")]
            else:
                located_problems = [(where, err["msg"].removeprefix("Value error, "))]
            for at, message in located_problems:
                line = _line_for(located.lines, at)
                problems.append(f"{path}:{line or 1}: {_dotted(at)}: {_one_line(message)}")
        raise ConfigError(path, problems) from None


def load_config(path: str | Path) -> OmniccConfig:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{path}: no such config file"]) from None
    except OSError as exc:
        # A directory, no permission, an I/O error: still a config error, not a traceback.
        raise ConfigError(str(path), [f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(path), [f"{path}:{line}: not UTF-8 text ({exc.reason})"]) from None
    return parse_config(text, str(path))
