"""omnicc/sipp.py: reading SIPp's -trace_msg file into messages and calls (no SIPp run)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omnicc.sipp import dialogs, parse_trace, read_trace

SEP = "-" * 47


def block(stamp: str, direction: str, *lines: str) -> list[str]:
    head = ("UDP message sent (300 bytes):" if direction == "sent"
            else "UDP message received [300] bytes :")
    return [f"{SEP} 2030-01-02 03:04:{stamp}", head, "", *lines, "", ""]


def ts(stamp: str) -> float:
    return datetime.strptime(f"2030-01-02 03:04:{stamp}", "%Y-%m-%d %H:%M:%S.%f").timestamp()


INVITE = ["INVITE sip:2004@127.0.0.1:41749;transport=UDP SIP/2.0",
          "Record-Route: <sip:127.0.0.1:5060;lr>",
          'From: "Customer" <sip:5491100000201@127.0.0.1>;tag=a',
          "To: <sip:2004@it.omnicc.test>",
          "Call-ID: call-1", "CSeq: 10 INVITE", "Content-Length: 0"]


def answered_call(call: str, start: int) -> list[str]:
    def at(offset: int) -> str:
        return f"{start + offset:02d}.000100"

    return [
        *block(at(0), "received", *[line.replace("call-1", call) for line in INVITE]),
        *block(at(0), "sent", "SIP/2.0 180 Ringing", f"Call-ID: {call}", "CSeq: 10 INVITE"),
        *block(at(1), "sent", "SIP/2.0 200 OK", f"Call-ID: {call}", "CSeq: 10 INVITE",
               "", "v=0", "o=agent 1 1 IN IP4 127.0.0.1"),
        *block(at(1), "received", "ACK sip:127.0.0.1:41749 SIP/2.0", f"Call-ID: {call}",
               "CSeq: 10 ACK"),
        *block(at(3), "sent", "BYE sip:asterisk@127.0.0.1:5080 SIP/2.0", f"Call-ID: {call}",
               "CSeq: 1 BYE"),
        *block(at(4), "received", "SIP/2.0 200 OK", f"Call-ID: {call}", "CSeq: 1 BYE"),
    ]


def test_messages_keep_sipps_time_direction_and_headers() -> None:
    messages = parse_trace(answered_call("call-1", 10))
    assert [m.first_line.split()[0] for m in messages] == [
        "INVITE", "SIP/2.0", "SIP/2.0", "ACK", "BYE", "SIP/2.0"]
    invite, ringing, ok = messages[:3]
    assert (invite.sent, invite.is_request, invite.method, invite.status) == (
        False, True, "INVITE", 0)
    assert (ringing.sent, ringing.status, ringing.method) == (True, 180, "INVITE")
    assert invite.at == ts("10.000100")
    assert invite.header("FROM").endswith(";tag=a") and invite.call_id == "call-1"
    assert ok.header("v") == ""  # the body is not read as headers
    assert messages[-1].method == "BYE" and messages[-1].status == 200


def test_a_call_is_summed_up_from_its_messages() -> None:
    (call,) = dialogs(parse_trace(answered_call("call-1", 10)))
    assert (call.call_id, call.user, call.caller) == ("call-1", "2004", "5491100000201")
    assert call.answered and call.final_status == 200
    assert call.invited_at == ts("10.000100")
    assert (call.ended_by, call.hangup_at) == ("BYE sent", ts("13.000100"))
    assert call.ended_at == ts("14.000100")


def test_calls_come_in_the_order_of_their_invite_and_others_are_left_out(
    tmp_path: Path
) -> None:
    register = block("01.000000", "sent", "REGISTER sip:it.omnicc.test SIP/2.0",
                     "Call-ID: reg-1", "CSeq: 1 REGISTER")
    cancelled = [
        *block("30.000000", "received", *[line.replace("call-1", "call-3") for line in INVITE]),
        *block("30.500000", "received", "CANCEL sip:2004@127.0.0.1:41749 SIP/2.0",
               "Call-ID: call-3", "CSeq: 10 CANCEL"),
        *block("30.500100", "sent", "SIP/2.0 487 Request Terminated", "Call-ID: call-3",
               "CSeq: 10 INVITE"),
    ]
    path = tmp_path / "trace.log"
    path.write_text("\n".join([*register, *answered_call("call-2", 20), *cancelled,
                               "some note SIPp logs in between", ""]))
    calls = dialogs(read_trace(path))
    assert [c.call_id for c in calls] == ["call-2", "call-3"]
    assert (calls[1].answered, calls[1].ended_by, calls[1].final_status) == (
        False, "CANCEL received", 487)


def test_a_missing_trace_file_has_no_messages(tmp_path: Path) -> None:
    assert read_trace(tmp_path / "absent.log") == []
