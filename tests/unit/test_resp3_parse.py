"""omnicc/lean_redis.py's RESP3 reader: every reply type Redis 7 sends, pushes told apart
from replies, and a reply cut anywhere waits for the rest instead of being misread; and
RespConnection.poll over a socket pair (the test plays Redis)."""

from __future__ import annotations

import select
import socket

import pytest

from omnicc.lean_redis import LeanRedisError, RespConnection, _Incomplete, _parse, _Push

INVALIDATE = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$3\r\nk:1\r\n$3\r\nk:2\r\n"


@pytest.mark.parametrize(("data", "expected"), [
    (b":42\r\n", 42),
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"+OK\r\n", "OK"),
    (b"_\r\n", None),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b",3.5\r\n", "3.5"),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$-1\r\n", None),
    (b"$0\r\n\r\n", b""),
    (b"=9\r\ntxt:abcde\r\n", b"txt:abcde"),
    (b"*2\r\n:1\r\n$1\r\nx\r\n", [1, b"x"]),
    (b"*-1\r\n", None),
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n", [b"server", b"redis"]),
    # An attribute describes the value after it: that value is the reply.
    (b"|1\r\n+key-popularity\r\n:7\r\n:99\r\n", 99),
])
def test_each_reply_type_is_read_whole(data: bytes, expected: object) -> None:
    value, used = _parse(data + b":0\r\n", 0)
    assert value == expected
    assert used == len(data)  # and not a byte of the next reply


def test_an_invalidation_is_a_push_not_a_reply() -> None:
    value, used = _parse(INVALIDATE, 0)
    assert isinstance(value, _Push)
    assert value == [b"invalidate", [b"k:1", b"k:2"]]
    assert used == len(INVALIDATE)
    flushed, _ = _parse(b">2\r\n$10\r\ninvalidate\r\n_\r\n", 0)
    assert isinstance(flushed, _Push) and flushed[1] is None


@pytest.mark.parametrize("data", [b"-ERR wrong type\r\n", b"!9\r\nERR oops!\r\n"])
def test_an_error_reply_is_a_value_for_the_command_not_raised(data: bytes) -> None:
    value, _ = _parse(data, 0)
    assert isinstance(value, LeanRedisError) and "ERR" in str(value)


@pytest.mark.parametrize("data", [INVALIDATE, b"$5\r\nhello\r\n", b"*2\r\n:1\r\n:2\r\n",
                                  b"|1\r\n+a\r\n:1\r\n:2\r\n"])
def test_a_reply_cut_anywhere_asks_for_more(data: bytes) -> None:
    for cut in range(len(data)):
        with pytest.raises(_Incomplete):
            _parse(data[:cut], 0)


def test_an_unknown_type_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected Redis reply"):
        _parse(b"?what\r\n", 0)


def connected_pair() -> tuple[RespConnection, socket.socket, list[list[object]]]:
    """A RespConnection on one end of a socket pair; the test plays Redis on the other."""
    pushes: list[list[object]] = []
    connection = RespConnection("redis://127.0.0.1:1/0", on_push=pushes.append)
    ours, peer = socket.socketpair()
    ours.settimeout(0.5)  # as _connect leaves it: non-blocking underneath
    connection._sock = ours
    connection._readable.register(ours.fileno(), select.POLLIN)
    return connection, peer, pushes


def test_a_push_that_came_with_a_reply_is_handed_over_by_the_next_poll() -> None:
    connection, peer, pushes = connected_pair()
    try:
        peer.sendall(b"+PONG\r\n" + INVALIDATE)  # one read holds both
        assert connection.request(b"*1\r\n$4\r\nPING\r\n") == "PONG"
        assert pushes == []  # still in the buffer; nothing left to read on the socket
        connection.poll()
        assert len(pushes) == 1 and pushes[0][0] == b"invalidate"
    finally:
        connection.close()
        peer.close()


def test_a_poll_with_nothing_sent_reads_nothing_and_a_closed_peer_is_seen() -> None:
    connection, peer, pushes = connected_pair()
    connection.poll()
    assert connection.connected and pushes == []
    peer.close()
    with pytest.raises(ConnectionError):
        connection.poll()
    assert not connection.connected
