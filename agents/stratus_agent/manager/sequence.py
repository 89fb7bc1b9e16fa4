"""The order of the agent's reports: one clock for every report it sends, guests and volumes."""

from __future__ import annotations

import time


class SequenceClock:
    """Hands out report sequences: wall-clock nanoseconds, never repeating, so later than
    anything an earlier run of this agent reported and the operator can order reports
    across agent restarts. One per agent, shared by every manager that reports."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns())
        return self._last
