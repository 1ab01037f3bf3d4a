"""agi/handlers/queue_call.py: the queue handlers' decisions, against the fake Asterisk
peer and a fake ACD store (no services)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from agi.handlers.queue_call import (
    QueueAnswer,
    QueueCall,
    QueueEnd,
    QueueResult,
    answering_offer,
    no_answer_outcome,
    parse_offers,
)
from agi.protocol import AGISession, read_request
from agi.testing import FakeAsterisk, FakeCallRecord, drive_session, run_async
from omnicc.acd import AcdResult, CallStatus, NoAnswerOutcome, Offer
from omnicc.agent_state import CallState
from omnicc.config import parse_config

CONFIG = parse_config("""\
tenants:
  - name: acme
    domain: acme.test
    agents:
      - {extension: "1001", password: "password-1001"}
      - {extension: "1002", password: "password-1002"}
    queues:
      - name: sales
        members: [{agent: "1001"}, {agent: "1002"}]
        ring_timeout_seconds: 15
        max_wait_seconds: 60
        failover: "agent:1002"
        overflow: "queue:backup"
        call_lease_seconds: 3
      - name: backup
        members: [{agent: "1001"}]
""")
CALL = "1700000000.1-sales"
NODE = "node-a"


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeStore:
    """An ACD store the test steers: the ops are recorded, offers are pushed in."""

    def __init__(self, node: str = NODE) -> None:
        self.node = node
        self.calls: dict[str, CallStatus] = {}
        self.ops: list[tuple[Any, ...]] = []
        self.enqueue_result = AcdResult("ok", "WAITING")
        self.offers: asyncio.Queue[list[Offer]] | None = None
        self.waiting = asyncio.Event()
        self.answer_code = "ok"

    def status(self, call: str = CALL, **fields: Any) -> CallStatus:
        base = CallStatus(call=call, queue="sales", state=CallState.WAITING, priority=0,
                          enqueued_at_ms=now_ms(), caller="", did="", node=self.node,
                          agent="", ringing=(), lease_until_ms=None, position=1)
        self.calls[call] = replace(base, **fields)
        return self.calls[call]

    async def call_status(self, tenant: str, call: str) -> CallStatus | None:
        return self.calls.get(call)

    async def enqueue(self, tenant: str, call: str, queue: str, *, caller: str = "",
                      did: str = "", priority: int = 0) -> AcdResult:
        self.ops.append(("enqueue", tenant, call, queue, caller, did, priority))
        if self.enqueue_result.ok:
            self.status(call, caller=caller, did=did, priority=priority)
        return self.enqueue_result

    async def adopt(self, tenant: str, call: str) -> AcdResult:
        self.ops.append(("adopt", call))
        return AcdResult("ok", "WAITING")

    async def renew_call_lease(self, tenant: str, call: str) -> AcdResult:
        self.ops.append(("renew", call))
        return AcdResult("ok", "WAITING")

    async def wait_for_offer(self, tenant: str, call: str, timeout: float) -> list[Offer]:
        self.ops.append(("wait", call, timeout))
        self.waiting.set()
        if self.offers is None:
            self.offers = asyncio.Queue()
        try:
            return await asyncio.wait_for(self.offers.get(), timeout)
        except TimeoutError:
            return []

    async def current_offers(self, tenant: str, status: CallStatus | None) -> list[Offer]:
        return []

    async def fail_over(self, tenant: str, call: str, reason: str) -> AcdResult:
        self.ops.append(("fail_over", call, reason))
        self.status(call, state=CallState.FAILED_OVER)
        return AcdResult("ok", "FAILED_OVER")

    async def abandon(self, tenant: str, call: str, reason: str = "caller_hangup") -> AcdResult:
        self.ops.append(("abandon", call, reason))
        return AcdResult("ok", "ABANDONED")

    async def answer(self, tenant: str, call: str, extension: str, *,
                     lease_until_ms: int | None = None) -> AcdResult:
        self.ops.append(("answer", call, extension, lease_until_ms))
        return AcdResult(self.answer_code, "CONNECTED")

    async def no_answer(self, tenant: str, call: str, extension: str,
                        outcome: NoAnswerOutcome = NoAnswerOutcome.NO_ANSWER,
                        pause_reason: str = "", *,
                        lease_until_ms: int | None = None) -> AcdResult:
        self.ops.append(("no_answer", call, extension, outcome, lease_until_ms))
        return AcdResult("ok", "READY")

    async def hangup(self, tenant: str, call: str, reason: str = "caller") -> AcdResult:
        self.ops.append(("hangup", call, reason))
        return AcdResult("ok", "WRAPUP")

    def op_names(self) -> list[str]:
        return [op[0] for op in self.ops]


def params(**extra: str) -> dict[str, str]:
    return {"tenant": "acme", "queue": "sales", "call": CALL, "did": "5550100", **extra}


def run(handler: Callable[[AGISession], Any], script: str, p: dict[str, str]) -> FakeCallRecord:
    return run_async(drive_session(handler, script=script, params=p, command_timeout=1.0))


def offer(agent: str = "1001", lease: int = 123) -> Offer:
    return Offer(CALL, agent, "sales", NODE, lease)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


# ---------------------------------------------------------------------------- queue_call


def test_an_agent_free_at_once_is_dialled(store: FakeStore) -> None:
    store.enqueue_result = AcdResult("ok", "RESERVED", (offer(),))
    record = run(QueueCall(CONFIG, store), "queue_call", params(priority="5"))
    assert store.ops == [("enqueue", "acme", CALL, "sales", "5551234", "5550100", 5)]
    assert record.variables == {
        "OMNICC_DEST": "queue_agent", "OMNICC_AGENT": "1001",
        "OMNICC_DIAL": "PJSIP/kamailio/sip:1001@acme.test",
        "OMNICC_QUEUE_OFFERS": "1001:123", "OMNICC_QUEUE_RING": "15",
        "OMNICC_QUEUE_RECORDING": "", "OMNICC_STATUS": "OK"}


def test_ringall_dials_every_reserved_agent(store: FakeStore) -> None:
    store.enqueue_result = AcdResult("ok", "RESERVED", (offer("1001", 5), offer("1002", 6)))
    record = run(QueueCall(CONFIG, store), "queue_call", params())
    assert record.variables["OMNICC_DIAL"] == (
        "PJSIP/kamailio/sip:1001@acme.test&PJSIP/kamailio/sip:1002@acme.test")
    assert record.variables["OMNICC_QUEUE_OFFERS"] == "1001:5/1002:6"


def test_a_waiting_call_renews_its_lease_and_is_woken_by_an_offer(store: FakeStore) -> None:
    async def main() -> FakeCallRecord:
        store.offers = asyncio.Queue()
        session = asyncio.create_task(drive_session(
            QueueCall(CONFIG, store), script="queue_call", params=params(),
            command_timeout=1.0, timeout=5.0))
        await asyncio.wait_for(store.waiting.wait(), 2)
        store.offers.put_nowait([offer("1002", 77)])
        return await session

    record = run_async(main())
    assert store.op_names() == ["enqueue", "renew", "wait"]
    assert store.ops[2][2] == pytest.approx(1.0)  # a third of the 3 s call lease
    assert record.variables["OMNICC_AGENT"] == "1002"
    assert record.variables["OMNICC_QUEUE_OFFERS"] == "1002:77"


def test_the_wait_goes_on_after_a_quiet_lease_period(store: FakeStore) -> None:
    async def main() -> FakeCallRecord:
        store.offers = asyncio.Queue()
        session = asyncio.create_task(drive_session(
            QueueCall(CONFIG, store), script="queue_call", params=params(),
            command_timeout=1.0, timeout=5.0))
        while store.op_names().count("wait") < 2:
            await asyncio.sleep(0.05)
        store.offers.put_nowait([offer()])
        return await session

    record = run_async(main(), timeout=8)
    assert store.op_names() == ["enqueue", "renew", "wait", "renew", "wait"]
    assert record.variables["OMNICC_DEST"] == "queue_agent"


def test_a_caller_hanging_up_while_waiting_abandons_at_once(store: FakeStore) -> None:
    async def main() -> None:
        store.offers = asyncio.Queue()
        done = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
            session = AGISession(reader, writer, await read_request(reader, timeout=1),
                                 command_timeout=1)
            try:
                await QueueCall(CONFIG, store)(session)
                done.set_result(None)
            finally:
                await session.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        fake = FakeAsterisk("127.0.0.1", server.sockets[0].getsockname()[1], "queue_call",
                            params=params())
        await fake.connect()
        await fake.send_environment()
        answering = asyncio.create_task(fake.answer_commands())
        await asyncio.wait_for(store.waiting.wait(), 2)
        started = time.monotonic()
        await fake.send_hangup()
        await asyncio.wait_for(done, 2)
        assert time.monotonic() - started < 0.5  # not at the end of the 1 s wait
        await answering
        await fake.close()
        server.close()
        await server.wait_closed()
        assert fake.variables == {}

    run_async(main())
    assert store.op_names() == ["enqueue", "renew", "wait", "abandon"]
    assert store.ops[-1] == ("abandon", CALL, "caller_hangup")


def test_max_wait_fails_over_to_the_failover_destination(store: FakeStore) -> None:
    store.status(enqueued_at_ms=now_ms() - 61_000)  # already queued past max_wait
    record = run(QueueCall(CONFIG, store), "queue_call", params())
    assert store.op_names() == ["fail_over"]
    assert store.ops[0] == ("fail_over", CALL, "max_wait")
    assert record.variables == {"OMNICC_DEST": "agent", "OMNICC_AGENT": "1002",
                                "OMNICC_DIAL": "PJSIP/kamailio/sip:1002@acme.test",
                                "OMNICC_STATUS": "OK"}


@pytest.mark.parametrize("code", ["queue_full", "no_agents"])
def test_a_full_queue_or_no_agents_overflows(store: FakeStore, code: str) -> None:
    store.enqueue_result = AcdResult(code, "")
    record = run(QueueCall(CONFIG, store), "queue_call", params())
    assert store.op_names() == ["enqueue"]
    assert record.variables == {"OMNICC_DEST": "queue", "OMNICC_QUEUE": "backup",
                                "OMNICC_QUEUE_MOH": "", "OMNICC_STATUS": "OK"}


def test_a_call_back_from_an_unanswered_ring_keeps_its_place(store: FakeStore) -> None:
    store.status()
    store.offers = asyncio.Queue()
    store.offers.put_nowait([offer("1002")])
    record = run(QueueCall(CONFIG, store), "queue_call", params())
    assert store.op_names() == ["renew", "wait"]  # no second enqueue
    assert record.variables["OMNICC_AGENT"] == "1002"


def test_a_call_held_by_another_node_is_adopted(store: FakeStore) -> None:
    store.status(node="node-b")
    store.offers = asyncio.Queue()
    store.offers.put_nowait([offer()])
    run(QueueCall(CONFIG, store), "queue_call", params())
    assert store.op_names()[0] == "adopt"


def test_a_call_already_failed_over_goes_to_failover(store: FakeStore) -> None:
    store.status(state=CallState.FAILED_OVER)
    record = run(QueueCall(CONFIG, store), "queue_call", params())
    assert store.ops == []
    assert record.variables["OMNICC_DEST"] == "agent"


@pytest.mark.parametrize("bad", [{"queue": "nosuch"}, {"tenant": "other"},
                                 {"call": "bad id!"}])
def test_a_bad_request_is_an_error(store: FakeStore, bad: dict[str, str]) -> None:
    record = run(QueueCall(CONFIG, store), "queue_call", params(**bad))
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    assert record.variables["OMNICC_CAUSE"] == "34"
    assert store.ops == []


# ---------------------------------------------------------------------------- the others


def test_answer_confirms_the_reservation_of_the_answering_agent(store: FakeStore) -> None:
    record = run(QueueAnswer(CONFIG, store), "queue_answer",
                 {"tenant": "acme", "call": CALL, "offers": "1001:5,1002:6", "agent": "1002"})
    assert store.ops == [("answer", CALL, "1002", 6)]
    assert record.variables == {"OMNICC_STATUS": "OK"}


def test_a_refused_answer_tells_the_dialplan_to_drop_the_agent(store: FakeStore) -> None:
    store.answer_code = "not_reserved"
    record = run(QueueAnswer(CONFIG, store), "queue_answer",
                 {"tenant": "acme", "call": CALL, "offers": "1001:5", "agent": ""})
    assert store.ops == [("answer", CALL, "1001", 5)]
    assert record.variables == {"OMNICC_STATUS": "REFUSED"}


def test_an_answer_by_an_agent_without_an_offer_is_refused(store: FakeStore) -> None:
    record = run(QueueAnswer(CONFIG, store), "queue_answer",
                 {"tenant": "acme", "call": CALL, "offers": "1001:5,1002:6", "agent": ""})
    assert store.ops == []
    assert record.variables == {"OMNICC_STATUS": "REFUSED"}


@pytest.mark.parametrize(("dialstatus", "outcome"), [
    ("NOANSWER", NoAnswerOutcome.NO_ANSWER), ("BUSY", NoAnswerOutcome.BUSY),
    ("CHANUNAVAIL", NoAnswerOutcome.REJECTED), ("CONGESTION", NoAnswerOutcome.REJECTED)])
def test_an_unanswered_ring_returns_the_call_and_waits_again(
        store: FakeStore, dialstatus: str, outcome: NoAnswerOutcome) -> None:
    store.status(state=CallState.RESERVED)
    record = run(QueueResult(CONFIG, store), "queue_result",
                 {"tenant": "acme", "call": CALL, "offers": "1001:9", "dialstatus": dialstatus})
    assert store.ops == [("no_answer", CALL, "1001", outcome, 9)]
    assert record.variables == {"OMNICC_QUEUE_NEXT": "wait"}


def test_a_connected_call_whose_agent_hung_up_ends(store: FakeStore) -> None:
    store.status(state=CallState.CONNECTED)
    record = run(QueueResult(CONFIG, store), "queue_result",
                 {"tenant": "acme", "call": CALL, "offers": "1001:9", "dialstatus": "ANSWER"})
    assert store.ops == [("hangup", CALL, "agent")]
    assert record.variables == {"OMNICC_QUEUE_NEXT": "end"}


@pytest.mark.parametrize(("state", "op"), [
    (CallState.CONNECTED, ("hangup", CALL, "caller")),
    (CallState.WAITING, ("abandon", CALL, "caller_hangup")),
    (CallState.RESERVED, ("abandon", CALL, "caller_hangup")),
    (CallState.ENDED, None), (CallState.ABANDONED, None), (CallState.FAILED_OVER, None)])
def test_the_hangup_handler_ends_or_abandons(store: FakeStore, state: CallState,
                                             op: tuple[str, ...] | None) -> None:
    store.status(state=state)
    record = run(QueueEnd(CONFIG, store), "queue_end", {"tenant": "acme", "call": CALL})
    assert store.ops == ([op] if op else [])
    assert record.commands == []


def test_offer_parsing_and_outcomes() -> None:
    assert parse_offers("1001:5,x:1,1002:") == [("1001", 5), ("1002", None)]
    assert answering_offer([("1001", 5)], "") == ("1001", 5)
    assert answering_offer([("1001", 5)], "1009") is None
    assert no_answer_outcome("weird") is NoAnswerOutcome.NO_ANSWER


def test_build_routes_adds_the_queue_scripts_with_a_store(store: FakeStore) -> None:
    from agi.app import build_routes
    from omnicc.events import EventLog
    routes = build_routes(CONFIG, EventLog(None, "n"), store)
    assert {"queue_call", "queue_answer", "queue_result", "queue_end"} <= set(routes)
