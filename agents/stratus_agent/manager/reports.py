"""What the agent last reported on each volume or snapshot: one book per kind.

A report is stamped with the agent's sequence (the operator applies none older than one it
applied) and published on the event hub once per change; a Missing one leaves the book.
Copy progress is reported in steps, not per percent.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from stratus_agent.base import EventSink, ProgressListener
from stratus_agent.manager.sequence import SequenceClock
from stratus_api.guest import GuestEvent
from stratus_api.volume_wire import NodeSnapshotStatus, NodeVolumeStatus

# Progress is reported in steps of this many percent.
PROGRESS_STEP = 5

R = TypeVar("R", NodeVolumeStatus, NodeSnapshotStatus)


class ReportBook(Generic[R]):
    def __init__(
        self,
        hub: EventSink,
        sequence: SequenceClock,
        kind: Literal["volume", "snapshot"],
        *,
        creating: enum.Enum,
        missing: enum.Enum,
    ) -> None:
        self._hub, self._sequence, self._kind = hub, sequence, kind
        self._creating, self._missing = creating, missing
        self._reports: dict[str, R] = {}

    def get(self, uid: str) -> R | None:
        return self._reports.get(uid)

    def __getitem__(self, uid: str) -> R:
        return self._reports[uid]

    def uids(self) -> list[str]:
        return sorted(self._reports)

    def stamped_all(self) -> list[R]:
        """Every report, stamped now: as of this moment, newer than every one already sent."""
        return [self.stamped(report) for _, report in sorted(self._reports.items())]

    def stamped(self, report: R) -> R:
        return report.model_copy(update={"sequence": self._sequence.next()})

    def adopt(self, report: R) -> None:
        """Keep `report` without publishing it (what a backend held at start)."""
        self._reports[report.uid] = self.stamped(report)

    def pop(self, uid: str) -> None:
        self._reports.pop(uid, None)

    def record(self, report: R) -> None:
        """Keep and publish `report`, unless it says what the last one said."""
        previous = self._reports.get(report.uid)
        if previous is not None and previous.model_copy(update={"sequence": None}) == report:
            return
        report = self.stamped(report)
        if report.state == self._missing:
            self._reports.pop(report.uid, None)
        else:
            self._reports[report.uid] = report
        now = datetime.datetime.now(datetime.UTC)
        if self._kind == "volume":
            assert isinstance(report, NodeVolumeStatus)
            self._hub.publish(GuestEvent(type="volume", time=now, volume=report))
        else:
            assert isinstance(report, NodeSnapshotStatus)
            self._hub.publish(GuestEvent(type="snapshot", time=now, snapshot=report))

    def progress(self, uid: str, creating: Callable[[int, int | None], R]) -> ProgressListener:
        """A listener recording a copy's progress while `uid` is being created, one step
        at a time; `creating(percent, generation)` makes the report."""

        def listen(percent: int) -> None:
            current = self._reports.get(uid)
            if current is None or current.state != self._creating:
                return
            if current.progress is not None and (
                percent // PROGRESS_STEP == current.progress // PROGRESS_STEP
            ):
                return
            self.record(creating(percent, current.generation))

        return listen
