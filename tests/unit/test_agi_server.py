"""FastAGIServer against a fake Asterisk: good calls, bad calls, and isolation between them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import pytest

from agi.protocol import AGIProtocolError, AGISession, AGITimeout
from agi.server import FastAGIServer, Handler
from agi.testing import FakeAsterisk, FakeCallRecord, run_async, run_fake_call, wait_until

HOST = "127.0.0.1"


async def good_handler(session: AGISession) -> None:
    request = session.request
    await session.answer()
    await session.set_variable("SEEN_ARGS", "|".join(request.args))
    params = "&".join(f"{key}={value}" for key, value in sorted(request.params.items()))
    await session.set_variable("SEEN_PARAMS", params)
    await session.set_variable("OMNICC_STATUS", "OK")


async def answering_handler(session: AGISession) -> None:
    await session.answer()
    await session.set_variable("OMNICC_STATUS", "OK")


async def failing_handler(session: AGISession) -> None:
    await session.answer()
    raise RuntimeError("boom in handler")


ROUTES: dict[str, Handler] = {
    "good": good_handler,
    "answer": answering_handler,
    "fail": failing_handler,
}


@asynccontextmanager
async def running_server(routes: Mapping[str, Handler] = ROUTES) -> AsyncIterator[FastAGIServer]:
    server = FastAGIServer(routes, host=HOST, port=0, header_timeout=0.3, command_timeout=0.3)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
    assert server.active_sessions == 0


async def good_call(server: FastAGIServer) -> FakeCallRecord:
    record = await run_fake_call(
        HOST, server.port, "good", args=("a1", "a 2"), params={"tenant": "acme", "q": "x y"}
    )
    assert record.variables == {
        "SEEN_ARGS": "a1|a 2",
        "SEEN_PARAMS": "q=x y&tenant=acme",
        "OMNICC_STATUS": "OK",
    }
    assert record.closed_by_server
    return record


# -- bad sessions: each runs between (and sometimes during) good ones -------------
# A scenario returns how many good calls it completed while its bad session hung.

Scenario = Callable[[FastAGIServer], Awaitable[int]]


async def disconnect_mid_headers(server: FastAGIServer) -> int:
    fake = FakeAsterisk(HOST, server.port, "good")
    await fake.connect()
    await fake.send_environment(lines=5, finish=False)
    await fake.close()
    await wait_until(lambda: server.sessions_failed == 1)
    return 0


async def garbage_headers(server: FastAGIServer) -> int:
    fake = FakeAsterisk(HOST, server.port, "good")
    await fake.connect()
    await fake.send_raw(b"agi_network: yes\n\x00\xff<garbage>\n\n")
    assert await fake.read_until_closed() == b""
    return 0


async def never_ending_headers(server: FastAGIServer) -> int:
    fake = FakeAsterisk(HOST, server.port, "good")
    await fake.connect()
    await fake.send_environment(finish=False)
    await good_call(server)  # served while the bad header block is still open
    assert await fake.read_until_closed() == b""  # then cut at header_timeout
    return 1


async def hangup_line_before_result(server: FastAGIServer) -> int:
    record = await run_fake_call(
        HOST,
        server.port,
        "answer",
        responder=lambda words: "HANGUP\n200 result=-1" if words[0] == "ANSWER" else None,
    )
    assert record.commands == [("ANSWER",)]
    assert record.variables == {}  # a hang-up is a normal end: no ERROR status
    return 0


async def dead_channel_result(server: FastAGIServer) -> int:
    dead = "511 Command Not Permitted on a dead channel or intercept routine"
    await run_fake_call(
        HOST,
        server.port,
        "answer",
        responder=lambda words: dead if words[0] == "ANSWER" else None,
    )
    return 0


async def unparseable_result(server: FastAGIServer) -> int:
    record = await run_fake_call(
        HOST,
        server.port,
        "answer",
        responder=lambda words: "not a result at all" if words[0] == "ANSWER" else None,
    )
    assert record.variables["OMNICC_STATUS"] == "ERROR"
    return 0


async def unknown_script(server: FastAGIServer) -> int:
    record = await run_fake_call(HOST, server.port, "nosuch")
    assert record.variables == {"OMNICC_STATUS": "ERROR", "OMNICC_ERROR": "unknown script nosuch"}
    return 0


async def handler_raises(server: FastAGIServer) -> int:
    record = await run_fake_call(HOST, server.port, "fail")
    assert record.variables == {
        "OMNICC_STATUS": "ERROR",
        "OMNICC_ERROR": "handler failed: RuntimeError",
    }
    return 0


async def silent_peer(server: FastAGIServer) -> int:
    fake = FakeAsterisk(HOST, server.port, "answer", responder=lambda words: "")
    call = asyncio.create_task(fake.run())
    await wait_until(lambda: bool(fake.commands))  # the handler now waits for a reply
    await good_call(server)
    record = await call
    # After a timeout the stream is out of step, so the server sends nothing more.
    assert record.commands == [("ANSWER",)]
    return 1


BAD_SESSIONS = [
    # scenario, ends normally?, log level, text in the log message, exception logged
    (disconnect_mid_headers, False, logging.WARNING, "peer closed in the middle", None),
    (garbage_headers, False, logging.WARNING, "not an AGI environment line", None),
    (never_ending_headers, False, logging.WARNING, "not complete within 0.3 s", None),
    (hangup_line_before_result, True, logging.INFO, "ended by hang-up", None),
    (dead_channel_result, True, logging.INFO, "511 Command Not Permitted", None),
    (unparseable_result, False, logging.ERROR, "'answer'", AGIProtocolError),
    (unknown_script, False, logging.WARNING, "unknown AGI script 'nosuch'", None),
    (handler_raises, False, logging.ERROR, "'fail'", RuntimeError),
    (silent_peer, False, logging.ERROR, "'answer'", AGITimeout),
]


@pytest.mark.parametrize(
    ("scenario", "ends_normally", "level", "text", "exc_type"),
    [pytest.param(*case, id=case[0].__name__) for case in BAD_SESSIONS],
)
def test_bad_session_is_logged_and_other_sessions_are_still_served(
    caplog: pytest.LogCaptureFixture,
    scenario: Scenario,
    ends_normally: bool,
    level: int,
    text: str,
    exc_type: type[BaseException] | None,
) -> None:
    caplog.set_level(logging.INFO, logger="agi.server")

    async def main() -> tuple[int, int]:
        async with running_server() as server:
            await good_call(server)
            good_during = await scenario(server)
            await good_call(server)
            await wait_until(lambda: server.active_sessions == 0)
            expected_served = 2 + good_during + (1 if ends_normally else 0)
            assert server.sessions_served == expected_served
            return server.sessions_served, server.sessions_failed

    _, failed = run_async(main())
    assert failed == (0 if ends_normally else 1)
    logged = [r for r in caplog.records if r.levelno == level and text in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    if exc_type is not None:  # logged with its traceback
        assert logged[0].exc_info is not None
        assert logged[0].exc_info[0] is exc_type


def test_fifty_concurrent_sessions_all_complete() -> None:
    async def main() -> None:
        # Every handler waits until all 50 are in flight: a server that ran sessions
        # one after another would never get past the barrier.
        barrier = asyncio.Barrier(50)

        async def together(session: AGISession) -> None:
            await session.answer()
            await barrier.wait()
            await session.set_variable("OMNICC_STATUS", "OK")
            await session.set_variable("N", session.request.args[0])

        async with running_server({"together": together}) as server:
            calls = [
                run_fake_call(HOST, server.port, "together", args=(str(n),)) for n in range(50)
            ]
            records = await asyncio.gather(*calls)
            assert [r.variables["N"] for r in records] == [str(n) for n in range(50)]
            await wait_until(lambda: server.sessions_served == 50)
            assert server.sessions_failed == 0

    run_async(main())


def test_close_cancels_in_flight_sessions_and_leaves_no_task() -> None:
    async def main() -> None:
        started: list[str] = []
        cancelled: list[str] = []

        async def blocking(session: AGISession) -> None:
            started.append(session.request.args[0])
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(session.request.args[0])
                raise

        server = FastAGIServer({"block": blocking}, host=HOST, port=0)
        await server.start()
        port = server.port
        calls = [
            asyncio.create_task(run_fake_call(HOST, port, "block", args=(str(n),)))
            for n in range(3)
        ]
        await wait_until(lambda: len(started) == 3)
        assert server.active_sessions == 3

        await server.close()

        assert server.active_sessions == 0
        assert sorted(cancelled) == ["0", "1", "2"]
        assert all(record.closed_by_server for record in await asyncio.gather(*calls))
        assert (server.sessions_served, server.sessions_failed) == (0, 0)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, port)

    run_async(main())


def test_serve_forever_serves_until_cancelled() -> None:
    async def main() -> None:
        server = FastAGIServer(ROUTES, host=HOST, port=0)
        await server.start()
        serving = asyncio.create_task(server.serve_forever())
        await good_call(server)
        serving.cancel()
        await asyncio.wait({serving})
        await server.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run_async(main())
