"""What a waiting caller is told: when the next announcement is due, the expected wait
from the queue's statistics, and how it is said. Pure: no I/O.

The expected wait is the time for the callers ahead to be served: each agent who takes
calls (logged in and not paused) frees up once per handling time (average talk time plus
the queue's wrap-up), so the queue serves `serving / handling` calls a second and the
caller at `position` is reached after ``position * handling / serving`` seconds. Before
any answered call has ended (no average talk time), the average wait of the answered calls
stands in, as app_queue's hold time does; without either, or with nobody serving, the wait
is unknown and not announced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omnicc.acd import QueueStats


@dataclass(frozen=True)
class Announcement:
    """What to tell a waiting caller; a None part is not said."""

    position: int | None
    expected_wait_seconds: int | None

    @property
    def minutes(self) -> int | None:
        """The expected wait as said: whole minutes rounded up; 0 means less than one."""
        if self.expected_wait_seconds is None:
            return None
        if self.expected_wait_seconds < 60:
            return 0
        return math.ceil(self.expected_wait_seconds / 60)


def next_announcement_ms(enqueued_at_ms: int, last_announced_ms: int | None,
                         frequency_seconds: int) -> int:
    """When the next announcement is due: a period after the last one, or after the call
    joined the queue when none was made yet."""
    since = enqueued_at_ms if last_announced_ms is None else max(enqueued_at_ms,
                                                                 last_announced_ms)
    return since + frequency_seconds * 1000


def expected_wait_seconds(position: int, stats: QueueStats,
                          wrapup_seconds: int = 0) -> int | None:
    """Seconds until the caller at `position` (1 = next) is answered, estimated from the
    queue's statistics; None when they cannot tell (see the module docstring)."""
    if position < 1:
        raise ValueError("a position starts at 1")
    serving = stats.agents_logged_in - stats.agents_paused
    if serving <= 0:
        return None
    if stats.average_talk_seconds is not None:
        handling = stats.average_talk_seconds + wrapup_seconds
        return math.ceil(position * handling / serving)
    if stats.average_speed_of_answer_seconds is not None:
        return math.ceil(stats.average_speed_of_answer_seconds)
    return None
