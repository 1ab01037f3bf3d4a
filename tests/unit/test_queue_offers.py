"""agi/handlers/queue_call.py: a queued call dials only its own offers, and the offers
list survives being an argument of Dial's U() subroutine (no comma in it).

Found end to end (tests/integration/test_queue_load_calls.py): an enqueue script that
first settled a wrap-up reserved the freed agent for another waiting call, and the new
call's session dialled that agent too."""

from __future__ import annotations

import asyncio

from agi.handlers.queue_call import (
    OFFERS_SEPARATOR,
    QueueCall,
    format_offers,
    offers_of,
    parse_offers,
)
from agi.testing import FakeCallRecord, drive_session, run_async
from omnicc.acd import AcdResult, Offer

from .test_queue_call import CALL, CONFIG, NODE, FakeStore, offer, params, run

OTHER_CALL = "1700000000.2-backup"


def other_offer(agent: str = "1002") -> Offer:
    return Offer(OTHER_CALL, agent, "backup", NODE, 456)


def test_offers_of_keeps_only_the_calls_own() -> None:
    mixed = (other_offer("1002"), offer("1001", 5), other_offer("1003"))
    assert offers_of(CALL, mixed) == [offer("1001", 5)]
    assert offers_of(CALL, (other_offer(),)) == []


def test_an_enqueue_that_also_reserved_for_another_call_dials_only_its_own_agent() -> None:
    store = FakeStore()
    store.enqueue_result = AcdResult("ok", "RESERVED", (other_offer("1002"), offer("1001", 7)))
    record = run(QueueCall(CONFIG, store), "queue_call", params())
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1001@acme.test"
    assert record.variables["OMNICC_QUEUE_OFFERS"] == "1001:7"


def test_an_enqueue_whose_only_offer_is_another_calls_waits_for_its_own() -> None:
    store = FakeStore()
    store.enqueue_result = AcdResult("ok", "WAITING", (other_offer("1002"),))

    async def main() -> FakeCallRecord:
        store.offers = asyncio.Queue()
        session = asyncio.create_task(drive_session(
            QueueCall(CONFIG, store), script="queue_call", params=params(),
            command_timeout=1.0, timeout=5.0))
        await asyncio.wait_for(store.waiting.wait(), 2)
        store.offers.put_nowait([offer("1001", 9)])
        return await session

    record = run_async(main())
    assert store.op_names() == ["enqueue", "renew", "wait"]
    assert record.variables["OMNICC_DIAL"] == "PJSIP/kamailio/sip:1001@acme.test"
    assert record.variables["OMNICC_QUEUE_OFFERS"] == "1001:9"


def test_the_offers_list_has_no_comma_and_reads_back() -> None:
    text = format_offers([offer("1001", 5), offer("1002", 6)])
    assert "," not in text and text == f"1001:5{OFFERS_SEPARATOR}1002:6"
    assert parse_offers(text) == [("1001", 5), ("1002", 6)]
    # A list written with commas (a call in flight across an upgrade) still reads.
    assert parse_offers("1001:5,1002:6") == [("1001", 5), ("1002", 6)]
