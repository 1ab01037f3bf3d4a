"""`omnicc dnc ...` and `omnicc blacklist ...` (omnicc/blacklist_cli.py) without a stack:
the verbs over a fake Redis, and bad input refused before Redis is asked (exit 2), Redis
not answering (exit 3). The real Redis and CLI: tests/integration/test_outbound_two_nodes.py
and test_inbound_routing.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from omnicc import blacklist_cli, cli
from tests.unit.fake_redis import FakeRedis

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "omnicc.yaml"


class Opened:
    """What the commands connect to: one FakeRedis, counted; or a Redis that is down."""

    def __init__(self, down: bool = False):
        self.fake = FakeRedis()
        self.down = down
        self.count = 0

    def __call__(self, **_: Any) -> Any:
        self.count += 1
        if self.down:
            return Down()
        return self.fake


class Down:
    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any, **__: Any) -> Any:
            raise RedisConnectionError("Error 111 connecting. Connection refused.")
        return fail


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Opened:
    opened = Opened()
    monkeypatch.setattr(blacklist_cli.redis, "Redis", opened)
    return opened


def omnicc(*args: str) -> int:
    return cli.main(["-c", str(EXAMPLE), *args])


def test_the_verbs_of_the_do_not_call_list(opened: Opened, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "dnc.csv"
    csv.write_text("number,reason\n+34 555 00 00,asked\n5550100\n555-0100,again\n")
    assert omnicc("dnc", "import", str(csv)) == 0
    assert "added 2 number(s), 1 repeated row(s) skipped; 2 on the do-not-call list now" in \
        capsys.readouterr().out
    assert omnicc("dnc", "check", "+34 555 00 00") == 0
    assert "+345550000: on the do-not-call list in tenant" in capsys.readouterr().out
    assert omnicc("dnc", "add", "5550199", "--reason", "court order") == 0
    assert "5550199: added to the do-not-call list" in capsys.readouterr().out
    assert omnicc("dnc", "count") == 0
    assert "3 on the do-not-call list" in capsys.readouterr().out
    assert omnicc("dnc", "remove", "555 0199") == 0
    assert omnicc("dnc", "remove", "5550199") == 1
    assert omnicc("dnc", "check", "5550199") == 1
    assert "not on the do-not-call list" in capsys.readouterr().out
    # The blacklist is another list, with the same verbs.
    assert omnicc("blacklist", "check", "+345550000") == 1
    assert omnicc("blacklist", "add", "+345550000") == 0
    assert omnicc("blacklist", "count") == 0
    assert "1 on the blacklist" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (("dnc", "check", "555&PJSIP/x"), "is not a phone number"),
    (("dnc", "add", "1,2"), "is not a phone number"),
    (("dnc", "remove", "٥٥٥"), "is not a phone number"),
    (("dnc", "import", "/nonexistent/dnc.csv"), "cannot read /nonexistent/dnc.csv"),
])
def test_bad_input_is_refused_before_redis_is_asked(
    opened: Opened, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert omnicc(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"omnicc dnc {args[1]}: ") and message in err
    assert opened.count == 0


def test_a_bad_file_imports_nothing(opened: Opened, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "dnc.csv"
    csv.write_text("5550100\n555-CALL\n")
    assert omnicc("dnc", "import", "--replace", str(csv)) == 2
    assert "do-not-call list not imported, 1 bad row:\nline 2:" in capsys.readouterr().err
    assert opened.count == 0


def test_a_bad_reason_and_an_unknown_tenant(opened: Opened,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert omnicc("dnc", "add", "5550100", "--reason", "two\nlines") == 2
    assert "one line" in capsys.readouterr().err
    assert omnicc("dnc", "count", "--tenant", "nobody") == 2
    assert "no tenant named 'nobody'" in capsys.readouterr().err


def test_redis_not_answering_exits_3(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(blacklist_cli.redis, "Redis", Opened(down=True))
    assert omnicc("dnc", "check", "5550100") == 3
    err = capsys.readouterr().err
    assert err.startswith("omnicc dnc check: cannot reach Redis at 127.0.0.1:")
    assert "Connection refused" in err
