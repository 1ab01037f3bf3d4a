"""`omnicc unban` without a running stack: bad input, and a Kamailio it cannot reach (the
ban lives in Kamailio's memory, so the command must say it could not lift it there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnicc import cli
from omnicc.lean_redis import RespConnection
from omnicc.sip_security import BanList
from tests.unit.fake_redis import FakeRedis

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "omnicc.yaml"


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> BanList:
    bans = BanList(FakeRedis())
    monkeypatch.setattr(cli, "_ban_list", lambda stack: bans)
    return bans


def unban(tmp_path: Path, *args: str) -> int:
    return cli.main(["-c", str(EXAMPLE), "--var", str(tmp_path / "var"), "unban", *args])


def test_not_an_ip_address_is_refused(tmp_path: Path, records: BanList,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert unban(tmp_path, "not-an-ip") == 2
    assert "not an IP address" in capsys.readouterr().err


def test_a_kamailio_it_cannot_reach_is_reported_and_the_record_still_removed(
    tmp_path: Path, records: BanList, capsys: pytest.CaptureFixture[str],
) -> None:
    records.ban("198.51.100.9", "scanner", 900)
    code = unban(tmp_path, "198.51.100.9", "--rpc-fifo", str(tmp_path / "missing.fifo"))
    out = capsys.readouterr()
    assert code == 1
    assert "cannot reach the local Kamailio" in out.err and "missing.fifo" in out.err
    assert "ban record removed" in out.out
    assert records.list() == []


def test_the_lean_client_reads_the_database_of_either_url_form() -> None:
    assert RespConnection("redis://127.0.0.1:6379/4")._db == 4
    assert RespConnection("unix:///run/redis/redis.sock?db=2")._db == 2
    assert RespConnection("unix:///run/redis/redis.sock")._db == 0


def test_a_fifo_this_user_may_not_look_at_is_reported_not_a_traceback(
    tmp_path: Path, records: BanList, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omnicc import kamailio_rpc

    def forbidden(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", forbidden)
    assert unban(tmp_path, "198.51.100.9", "--rpc-fifo", "/run/kamailio/x.fifo") == 1
    assert "Permission denied" in capsys.readouterr().err
    assert kamailio_rpc.PACKAGED_FIFO.name == "kamailio_rpc.fifo"
