"""The FastAGI protocol layer: environment, results, quoting, and replies in a session."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agi.protocol import (
    MAX_COMMAND_BYTES,
    AGICommandError,
    AGIHangup,
    AGIProtocolError,
    AGIRequest,
    AGIResult,
    AGISession,
    AGITimeout,
    format_command,
    parse_result_line,
    quote_arg,
    read_request,
)
from agi.testing import (
    DROP_CONNECTION,
    FakeCallRecord,
    default_environment,
    drive_session,
    run_async,
    split_agi_command,
)


def env_bytes(env: dict[str, str], *, finish: bool = True) -> bytes:
    text = "".join(f"{key}: {value}\n" for key, value in env.items())
    return (text + ("\n" if finish else "")).encode()


async def parse(
    data: bytes, *, eof: bool = True, timeout: float = 1.0, **limits: int
) -> AGIRequest:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return await read_request(reader, timeout=timeout, **limits)


def request_from(data: bytes, **limits: int) -> AGIRequest:
    return run_async(parse(data, **limits))


# -- environment ---------------------------------------------------------------


def test_environment_keeps_full_keys_and_exposes_common_fields() -> None:
    env = default_environment("127.0.0.1", 4573, "route")
    request = request_from(env_bytes(env))
    assert dict(request.env) == env
    assert request.script == "route"
    assert request.channel == "PJSIP/kamailio-00000001"
    assert request.uniqueid == "1700000000.1"
    assert request.callerid == "5551234"
    assert request.extension == "8005550100"
    assert request.context == "omnicc-inbound"
    assert request.dnid == "8005550100"
    assert request.language == "en"
    assert request.env["agi_accountcode"] == ""  # "agi_accountcode: " has an empty value


def test_args_are_in_numeric_order() -> None:
    env = default_environment("127.0.0.1", 4573, "route")
    # Insert out of order on purpose: agi_arg_10 must come after agi_arg_9, not after 1.
    for number in (10, 2, 1, 11, 9, 3, 4, 5, 6, 7, 8):
        env[f"agi_arg_{number}"] = f"v{number}"
    request = request_from(env_bytes(env))
    assert request.args == tuple(f"v{n}" for n in range(1, 12))


def test_script_and_query_string_are_split_and_decoded() -> None:
    env = default_environment("127.0.0.1", 4573, "route")
    env["agi_network_script"] = "inbound/route?a=b&c=d%20e&empty="
    env["agi_request"] = "agi://127.0.0.1:4573/inbound/route?a=b&c=d%20e&empty="
    request = request_from(env_bytes(env))
    assert request.script == "inbound/route"
    assert dict(request.params) == {"a": "b", "c": "d e", "empty": ""}


def test_query_string_falls_back_to_agi_request() -> None:
    env = default_environment("127.0.0.1", 4573, "route")
    env["agi_request"] = "agi://127.0.0.1/route?tenant=acme"
    assert dict(request_from(env_bytes(env)).params) == {"tenant": "acme"}


def test_crlf_line_endings_are_accepted() -> None:
    env = default_environment("127.0.0.1", 4573, "route")
    data = env_bytes(env).replace(b"\n", b"\r\n")
    assert request_from(data).script == "route"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"agi_network: yes\nagi_network_script: x\n", "peer closed in the middle"),
        (b"agi_network: yes\nGET / HTTP/1.1\n\n", "not an AGI environment line"),
        (b"agi_network yes\n\n", "not an AGI environment line"),
        (b"network: yes\n\n", "not an AGI environment line"),
        (b"agi_network: yes\n\n", "no agi_network_script"),
        (b"agi_x: 1\nagi_x: 2\n\n", "repeats"),
        (b"agi_x: " + b"y" * 5000 + b"\n\n", "exceeds the limit"),
        (b"".join(b"agi_k%d: v\n" % n for n in range(300)) + b"\n", "longer than 200 lines"),
    ],
    ids=["eof", "http", "no-colon", "no-prefix", "no-script", "repeat", "long-line", "many"],
)
def test_bad_environment_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(AGIProtocolError, match=message):
        request_from(data)


def test_environment_not_finished_in_time_is_a_timeout() -> None:
    env = default_environment("127.0.0.1", 4573, "route")
    with pytest.raises(AGITimeout, match="not complete within 0.2 s"):
        run_async(parse(env_bytes(env, finish=False), eof=False, timeout=0.2))


# -- result lines --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=0", AGIResult(200, "0")),
        ("200 result=1 (some value)", AGIResult(200, "1", "some value")),
        ("200 result=1 ()", AGIResult(200, "1", "")),
        ("200 result=1 (a (nested) value)", AGIResult(200, "1", "a (nested) value")),
        ("200 result=0 endpos=1234", AGIResult(200, "0", None, {"endpos": "1234"})),
        ("200 result=-1 endpos=0", AGIResult(200, "-1", None, {"endpos": "0"})),
        ("200 result=1 (dtmf) endpos=96", AGIResult(200, "1", "dtmf", {"endpos": "96"})),
        ("200 result= (timeout)", AGIResult(200, "", "timeout")),
        ("200 result=49", AGIResult(200, "49")),
    ],
)
def test_result_lines_parse(line: str, expected: AGIResult) -> None:
    assert parse_result_line(line) == expected


@pytest.mark.parametrize(
    "line",
    ["200", "200 ok", "result=1", "HTTP/1.1 200 OK", "2000 result=1", "", "200 result=1 (x"],
)
def test_unparseable_result_lines_are_protocol_errors(line: str) -> None:
    with pytest.raises(AGIProtocolError, match="not an AGI result line"):
        parse_result_line(line)


# -- quoting -------------------------------------------------------------------


def test_quote_arg_escapes_quotes_and_backslashes() -> None:
    assert quote_arg("plain") == '"plain"'
    assert quote_arg("") == '""'
    assert quote_arg('say "hi"') == '"say \\"hi\\""'
    assert quote_arg("C:\\dir") == '"C:\\\\dir"'


@pytest.mark.parametrize("bad", ["a\nANSWER", "a\rb", "a\0b"])
def test_quote_arg_refuses_line_breaks_and_nul(bad: str) -> None:
    with pytest.raises(ValueError):
        quote_arg(bad)


def test_format_command_refuses_bad_names_and_oversized_lines() -> None:
    assert format_command("SET VARIABLE", "X", "1") == b'SET VARIABLE "X" "1"\n'
    with pytest.raises(ValueError):
        format_command("ANSWER\nHANGUP")
    with pytest.raises(ValueError):
        format_command("VERBOSE", "x" * MAX_COMMAND_BYTES)


# Any text but CR, LF, NUL and lone surrogates (which cannot be encoded as UTF-8).
ARG_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",))
)


@given(st.lists(ARG_TEXT, max_size=5))
def test_quoted_args_survive_asterisks_parser(args: list[str]) -> None:
    line = format_command("EXEC", *args).decode().rstrip("\n")
    assert split_agi_command(line) == ["EXEC", *args]


def test_unencodable_argument_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        format_command("VERBOSE", "\ud800")


# -- replies in a session -------------------------------------------------------


def run_body(body: Callable[[AGISession], Awaitable[None]], **fake_options: Any) -> FakeCallRecord:
    """Run ``body(session)`` against the fake peer, with short timeouts."""
    return run_async(drive_session(body, command_timeout=0.2, **fake_options))


def test_convenience_commands_and_variables() -> None:
    seen: dict[str, object] = {}

    async def body(session: AGISession) -> None:
        await session.answer()
        await session.set_variable("GREETING", 'say "hi"')
        seen["set"] = await session.get_variable("GREETING")
        seen["missing"] = await session.get_variable("NOPE")
        seen["paren"] = await session.get_variable("PAREN")
        await session.verbose("two\nlines", level=3)
        await session.exec("Dial", "PJSIP/100@kamailio", "30", "tT")
        seen["stream"] = await session.stream_file("welcome", "#")
        seen["hung_up"] = session.hung_up

    record = run_body(body, variables={"PAREN": "a) b=(c"})
    assert seen["set"] == 'say "hi"'
    assert seen["missing"] is None
    assert seen["paren"] == "a) b=(c"
    assert seen["stream"] == AGIResult(200, "0", None, {"endpos": "8000"})
    assert seen["hung_up"] is False
    assert record.variables == {"GREETING": 'say "hi"'}
    assert ("VERBOSE", "two lines", "3") in record.commands
    assert ("EXEC", "Dial", "PJSIP/100@kamailio,30,tT") in record.commands


@pytest.mark.parametrize(
    ("reply", "code", "text"),
    [
        (None, 510, "Invalid or unknown command"),  # the fake's default for unknown commands
        ("520 Invalid command syntax.  Proper usage not available.", 520, "not available"),
    ],
    ids=["510", "520-single-line"],
)
def test_rejected_command_is_a_command_error(reply: str | None, code: int, text: str) -> None:
    async def body(session: AGISession) -> None:
        await session.command("FROB NICATE")

    with pytest.raises(AGICommandError) as caught:
        run_body(body, responder=lambda words: reply)
    assert caught.value.code == code
    assert text in caught.value.text
    assert caught.value.command == "FROB NICATE"


def test_520_usage_block_is_consumed_whole() -> None:
    after: list[str | None] = []

    async def body(session: AGISession) -> None:
        with pytest.raises(AGICommandError) as caught:
            await session.command("SET VARIABLE", "ONLY_NAME")
        assert caught.value.code == 520
        assert "Usage: SET VARIABLE" in caught.value.text
        assert caught.value.text.endswith("End of proper usage.")
        # The next command gets its own reply, not a leftover usage line.
        after.append(await session.get_variable("X"))

    run_body(body, variables={"X": "next"})
    assert after == ["next"]


@pytest.mark.parametrize(
    "reply",
    ["HANGUP\n200 result=-1", "511 Command Not Permitted on a dead channel or intercept routine"],
    ids=["hangup-line", "511"],
)
def test_hangup_replies_raise_agihangup(reply: str) -> None:
    states: list[bool] = []

    async def body(session: AGISession) -> None:
        with pytest.raises(AGIHangup):
            await session.answer()
        states.append(session.hung_up)
        # Asterisk still runs SET VARIABLE on a dead channel; the stream stays in step.
        await session.set_variable("AFTER", "yes")

    record = run_body(body, responder=lambda words: reply if words[0] == "ANSWER" else None)
    assert states == [True]
    assert record.variables == {"AFTER": "yes"}


def test_hangup_while_idle_wakes_wait_for_hangup() -> None:
    async def body(session: AGISession) -> None:
        await session.answer()  # the fake sends HANGUP right after this reply
        await asyncio.wait_for(session.wait_for_hangup(), 1.0)
        assert session.hung_up
        with pytest.raises(AGIHangup):  # the next command reports it once
            await session.verbose("still here?")
        await session.verbose("dead-channel commands still run")

    run_body(body, responder=lambda words: "200 result=0\nHANGUP" if words[0] == "ANSWER" else None)


def test_silent_peer_is_a_timeout_and_breaks_the_session() -> None:
    async def body(session: AGISession) -> None:
        with pytest.raises(AGITimeout, match="no reply to ANSWER within 0.2 s"):
            await session.answer()
        with pytest.raises(AGIProtocolError, match="session unusable"):
            await session.verbose("late replies would be mismatched")

    record = run_body(body, responder=lambda words: "")
    assert record.commands == [("ANSWER",)]


def test_peer_closing_is_a_hangup() -> None:
    async def body(session: AGISession) -> None:
        with pytest.raises(AGIHangup, match="connection closed"):
            await session.answer()
        assert session.hung_up
        with pytest.raises(AGIHangup, match="not sent"):
            await session.set_variable("X", "1")

    run_body(body, responder=lambda words: DROP_CONNECTION)


def test_garbage_reply_is_a_protocol_error_and_the_stream_stays_usable() -> None:
    async def body(session: AGISession) -> None:
        with pytest.raises(AGIProtocolError, match="unparseable reply to ANSWER"):
            await session.answer()
        with pytest.raises(AGIProtocolError, match="unexpected reply to EXEC"):
            await session.exec("Noop")
        await session.set_variable("OK", "1")

    record = run_body(
        body,
        responder=lambda w: {"ANSWER": "%%garbage%%", "EXEC": "503 result=0"}.get(w[0]),
    )
    assert record.variables == {"OK": "1"}


def test_oversized_reply_breaks_the_session_and_releases_hangup_waiters() -> None:
    async def body(session: AGISession) -> None:
        with pytest.raises(AGIProtocolError, match="exceeds the limit"):
            await session.get_variable("HUGE")
        await asyncio.wait_for(session.wait_for_hangup(), 1.0)
        with pytest.raises(AGIProtocolError, match="session unusable"):
            await session.answer()

    run_body(body, variables={"HUGE": "x" * 20000})
