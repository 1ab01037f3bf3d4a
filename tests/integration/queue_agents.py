"""Helpers of the end-to-end ACD tests: many SIPp agent phones registered through
Kamailio at once, the queue events of a run, and checks on SIPp's own traces."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from omnicc import sipp
from omnicc.demo import free_udp_port
from omnicc.events import read_events
from omnicc.sipp import SippRun, TracedDialog

from .conftest import DOMAIN, RunningStack


def password(extension: str) -> str:
    """The password the test configs give an agent."""
    return f"it-pass-{extension}"


def agents_yaml(extensions: Sequence[str], indent: str = "      ") -> str:
    """The agents: entries of a config template (braces doubled for str.format)."""
    return "\n".join(
        f'{indent}- {{{{extension: "{ext}", password: "{password(ext)}"}}}}'
        for ext in extensions
    )


def _register(stack: RunningStack, workdir: Path, extension: str, port: int, *,
              expires: int = 300, proxy: str | None = None) -> SippRun:
    return sipp.agent_register(
        workdir, proxy=proxy or stack.proxy, extension=extension,
        password=password(extension), domain=DOMAIN, local_ip="127.0.0.1",
        contact_port=port, expires=expires,
        name=f"{'un' if expires == 0 else ''}register-{extension}-{port}",
    )


@contextlib.contextmanager
def phones_online(stack: RunningStack, workdir: Path, extensions: Sequence[str], *,
                  scenario: str, calls: int = 1000,
                  proxy: str | None = None) -> Iterator[dict[str, SippRun]]:
    """One SIPp phone per extension running `scenario`, each registered through Kamailio
    (the stack's, or `proxy`); stopped and unregistered afterwards."""
    phones: dict[str, SippRun] = {}
    ports: dict[str, int] = {}
    try:
        for ext in extensions:
            ports[ext] = free_udp_port("127.0.0.1")
            phones[ext] = sipp.agent_phone(workdir, local_ip="127.0.0.1", port=ports[ext],
                                           calls=calls, name=f"phone-{ext}-{ports[ext]}",
                                           scenario=scenario).start()
        time.sleep(0.3)
        for ext in extensions:
            reg = _register(stack, workdir, ext, ports[ext], proxy=proxy)
            assert reg.run(timeout=30) == 0, reg.trace()
        yield phones
    finally:
        for phone in phones.values():
            phone.stop()
        for ext, port in ports.items():
            _register(stack, workdir, ext, port, expires=0, proxy=proxy).run(timeout=30)


def queue_events(stack: RunningStack, since: str) -> list[dict[str, str]]:
    return read_events(stack.redis(), "default", since=since)


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def overlapping_calls(calls: Sequence[TracedDialog]) -> list[tuple[str, str]]:
    """Pairs of calls (Call-IDs) of one phone that were up at the same time."""
    ordered = sorted(calls, key=lambda d: d.invited_at)
    return [(a.call_id, b.call_id) for a, b in zip(ordered, ordered[1:], strict=False)
            if b.invited_at < a.ended_at]


def wrapup_violations(calls: Sequence[TracedDialog],
                      wrapup_by_caller: Mapping[str, float]) -> list[str]:
    """Calls offered to a phone before the wrap-up of its previous answered call was over:
    the gap from that call's hang-up (BYE sent or received) to the next INVITE, against
    the wrap-up of the queue the previous call came from (known by its caller number)."""
    ordered = sorted(calls, key=lambda d: d.invited_at)
    out = []
    for previous, following in zip(ordered, ordered[1:], strict=False):
        if not previous.answered or not previous.hangup_at:
            continue
        wrapup = wrapup_by_caller[previous.caller]
        gap = following.invited_at - previous.hangup_at
        if gap < wrapup:
            out.append(f"{following.call_id} came {gap:.3f} s after the hang-up of "
                       f"{previous.call_id} (wrap-up {wrapup} s)")
    return out


# SIPp stamps a message when it logs it, which can be a little after it sent it: the
# bridged agent's BYE (caused by the caller's) can carry an earlier stamp than the
# caller's own. A refused or cancelled leg ends long (a second here) before.
TRACE_SKEW = 0.25


def bridged_agents(caller: TracedDialog, phones: dict[str, SippRun]) -> list[str]:
    """The agents whose phone stayed on the call until the caller hung up, per SIPp (once
    every phone's leg of the call has ended: the caller may finish before the phones do)."""
    def legs() -> dict[str, list[TracedDialog]]:
        return {ext: [leg for leg in phone.traced_dialogs() if leg.caller == caller.caller]
                for ext, phone in phones.items()}

    assert wait_until(lambda: all(leg.ended_by for found in legs().values() for leg in found),
                      10), legs()
    return [ext for ext, found in legs().items() for leg in found
            if leg.answered and leg.hangup_at >= caller.hangup_at - TRACE_SKEW]
