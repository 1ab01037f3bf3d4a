"""The do-not-call list: omnicc/do_not_call.py (the shared number-list CSV and store, the
one-HMGET look-up) and its place on an agent's outbound call (OutboundCalls over the fake
Asterisk): a listed number is refused with 403 and nothing dialled, as dialled or as sent;
emergency numbers always go out, even listed and with Redis down; a Redis error refuses
any other call with 503."""

from __future__ import annotations

from typing import cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agi.handlers.agent_call import AgentCall
from agi.handlers.outbound_call import OutboundCalls
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc import keys
from omnicc.blacklist import BlacklistError, BlacklistStore, parse_blacklist_csv
from omnicc.config import OmniccConfig, parse_config
from omnicc.do_not_call import (
    DoNotCallError,
    DoNotCallStore,
    decode_csv,
    listed_numbers,
    parse_do_not_call_csv,
)
from omnicc.events import EventLog
from tests.unit.fake_redis import FakeRedis
from tests.unit.test_outbound_call import CONFIG, MemoryEventLog

# ---------------------------------------------------------------------------- the list


def test_the_csv_format_is_the_blacklists_and_errors_name_the_list() -> None:
    imported = parse_do_not_call_csv("number,reason\n+34 555 12 34,asked twice\n5550100\n")
    assert imported.as_mapping() == {"+345551234": "asked twice", "5550100": ""}
    with pytest.raises(DoNotCallError) as caught:
        parse_do_not_call_csv("5550100\n555-CALL\n1,2,3\n")
    assert str(caught.value).startswith("do-not-call list not imported, 2 bad rows:\n")
    assert "line 2: '555-CALL' is not a phone number" in str(caught.value)
    with pytest.raises(DoNotCallError, match="line 2: not UTF-8 text"):
        decode_csv(b"5550100\n555\xff\n")
    # The blacklist keeps its own name on the same parser.
    with pytest.raises(BlacklistError, match="^blacklist not imported, 1 bad row:"):
        parse_blacklist_csv("x\n")


def test_the_list_is_its_own_hash_beside_the_blacklist() -> None:
    fake = FakeRedis()
    dnc, blacklist = DoNotCallStore(fake), BlacklistStore(fake)
    assert dnc.import_entries("acme", parse_do_not_call_csv("+345551234,asked\n")) == 1
    assert keys.do_not_call("acme") == "{t:acme}:dnc"
    assert dnc.reason("acme", "+34 555 12 34") == "asked"
    assert blacklist.reason("acme", "+345551234") is None
    assert dnc.reason("other", "+345551234") is None  # another tenant's list is its own


def test_one_number_is_added_and_removed() -> None:
    dnc = DoNotCallStore(FakeRedis())
    assert dnc.add("acme", "555-0100", "court order")
    assert not dnc.add("acme", "5550100", "again")  # listed already: the reason changes
    assert dnc.reason("acme", "5550100") == "again"
    assert dnc.size("acme") == 1
    with pytest.raises(ValueError, match="is not a phone number"):
        dnc.add("acme", "555&PJSIP/x")
    with pytest.raises(ValueError, match="one line"):
        dnc.add("acme", "5550101", "two\nlines")
    assert dnc.size("acme") == 1
    assert dnc.remove("acme", "555 0100")
    assert not dnc.remove("acme", "5550100")
    assert dnc.size("acme") == 0


class AsyncHashes:
    """The one command listed_numbers sends, counted, over FakeRedis's hashes."""

    def __init__(self, fake: FakeRedis, fail: bool = False):
        self.fake = fake
        self.fail = fail
        self.calls: list[tuple[str, list[str]]] = []

    async def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        self.calls.append((key, list(fields)))
        if self.fail:
            raise RedisConnectionError("Connection refused")
        return [self.fake.hget(key, field) for field in fields]


def test_the_check_is_one_hmget_of_the_numbers_that_are_numbers() -> None:
    fake = FakeRedis()
    DoNotCallStore(fake).import_entries("acme", parse_do_not_call_csv("+345551234\n"))
    redis = AsyncHashes(fake)
    listed = run_async(listed_numbers(redis, "acme", ("95551234", "+345551234")))
    assert listed == {"+345551234"}
    assert redis.calls == [("{t:acme}:dnc", ["95551234", "+345551234"])]
    # Not numbers (a feature code) are on no list and not asked about.
    assert run_async(listed_numbers(redis, "acme", ("*21#",))) == frozenset()
    assert len(redis.calls) == 1
    with pytest.raises(RedisConnectionError):
        run_async(listed_numbers(AsyncHashes(fake, fail=True), "acme", ("5550100",)))


# ---------------------------------------------------------------------------- on the call


class Lists:
    """What OutboundCalls asks: which numbers are listed; or Redis down."""

    def __init__(self, numbers: set[str], down: bool = False):
        self.numbers = numbers
        self.down = down
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    async def __call__(self, tenant: str, numbers: tuple[str, ...]) -> frozenset[str]:
        self.asked.append((tenant, numbers))
        if self.down:
            raise RedisConnectionError("Connection refused")
        return frozenset(n for n in numbers if n in self.numbers)


@pytest.fixture(scope="module")
def config() -> OmniccConfig:
    return parse_config(CONFIG)


def dial(config: OmniccConfig, lists: Lists, dialled: str) -> tuple[FakeCallRecord,
                                                                     MemoryEventLog]:
    events = MemoryEventLog()
    calls = OutboundCalls(config, cast(EventLog, events), None, lists)
    handler = AgentCall(config, cast(EventLog, events), calls)
    record = run_async(drive_session(handler, script="agent_call", params={
        "tenant": "acme", "agent": "1001", "dialled": dialled}, variables={},
        command_timeout=0.5))
    return record, events


@pytest.mark.parametrize("listed", ["95551234", "+345551234"])
def test_a_listed_number_is_refused_with_403_and_nothing_dialled(
    config: OmniccConfig, listed: str
) -> None:
    lists = Lists({listed})
    record, events = dial(config, lists, "95551234")
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == (
        "ERROR", "21")  # Asterisk answers 403 Forbidden
    assert "OMNICC_DIAL" not in record.variables and "OMNICC_DEST" not in record.variables
    assert lists.asked == [("acme", ("95551234", "+345551234"))]  # one look-up, both forms
    (refused,) = events.named("outbound_refused")
    assert refused["refusal"] == "do_not_call"
    assert refused["reason"] == f"{listed!r} is on the do-not-call list"
    assert events.names() == ["outbound_refused"]


def test_an_unlisted_number_goes_out(config: OmniccConfig) -> None:
    record, events = dial(config, Lists({"+345559999"}), "95551234")
    assert record.variables["OMNICC_STATUS"] == "OK"
    assert record.variables["OMNICC_DIAL"] == "PJSIP/+345551234@trunk.acme.carrier-a"
    assert events.names() == ["outbound_routed", "outbound_trunk_dialled"]


@pytest.mark.parametrize("down", [False, True])
def test_an_emergency_number_goes_out_listed_or_with_redis_down(
    config: OmniccConfig, down: bool
) -> None:
    lists = Lists({"112"}, down=down)
    record, events = dial(config, lists, "112")
    assert record.variables["OMNICC_DIAL"] == "PJSIP/112@trunk.acme.carrier-a"
    assert lists.asked == []  # never asked: nothing can hold it back
    assert events.named("outbound_routed")[0]["emergency"] == "1"


def test_redis_down_refuses_an_ordinary_call_with_503(config: OmniccConfig) -> None:
    record, events = dial(config, Lists(set(), down=True), "95551234")
    assert (record.variables["OMNICC_STATUS"], record.variables["OMNICC_CAUSE"]) == (
        "ERROR", "34")
    assert "do-not-call" in record.variables["OMNICC_ERROR"]
    assert "OMNICC_DIAL" not in record.variables
    assert [(e, f.get("reason")) for e, f in
            [(n, events.named(n)[0]) for n in events.names()]] == [
        ("outbound_failed", "redis_error")]


def test_invalid_and_unrouted_numbers_are_refused_before_any_look_up(
    config: OmniccConfig,
) -> None:
    lists = Lists(set(), down=True)
    assert dial(config, lists, "1,2")[0].variables["OMNICC_CAUSE"] == "28"
    assert dial(config, lists, "77777")[0].variables["OMNICC_CAUSE"] == "1"
    assert lists.asked == []


