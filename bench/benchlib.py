"""What the benchmarks under bench/ share: reading logs and percentiles, and writing their
own marked section of docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LogWatch:
    """New lines a service wrote to its log since the last look."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        return data.decode(errors="replace").splitlines()


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without float error
    return sorted_values[int(rank) - 1]


def write_doc_section(path: Path, begin: str, end: str, section: str) -> None:
    """Replace the section between the `begin` and `end` markers (or append it), keeping
    the rest of the document."""
    if path.exists():
        text = path.read_text()
    else:
        text = ("# omnicc benchmarks\n\nMeasured by the scripts under `bench/` (see "
                "`bench/README.md`); each section says the machine and the command that "
                "produced it.\n")
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop != -1:
        rest = text[stop + len(end):].lstrip("\n")
        text = text[:start] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
