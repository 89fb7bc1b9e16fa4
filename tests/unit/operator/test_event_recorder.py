"""The operator's Event recorder: repeats bump one Event's count, and a burst beyond the
event rate is dropped and counted instead of doubling the requests the work makes."""

from __future__ import annotations

from typing import Any

from stratus_operator.services.events import EventRecorder
from stratus_operator.services.kube import NotFound
from stratus_operator.services.settings import EventSettings

REF = {"kind": "Instance", "namespace": "ns", "name": "web", "uid": "u-1"}


class FakeKube:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []
        self.bumped: list[tuple[str, int]] = []
        self.expired = False

    async def post_event(self, ref: dict[str, str], type_: str, reason: str, message: str) -> str:
        self.posted.append((ref["name"], type_, reason))
        return f"event-{len(self.posted)}"

    async def bump_event(self, ref: dict[str, str], name: str, count: int) -> None:
        if self.expired:
            raise NotFound(name)
        self.bumped.append((name, count))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def recorder(kube: FakeKube, clock: Clock, qps: float = 50.0, burst: int = 100) -> Any:
    dropped: list[str] = []
    events = EventRecorder(
        kube,  # type: ignore[arg-type]
        EventSettings(qps=qps, burst=burst),
        dropped.append,
        clock=clock,
    )
    return events, dropped


async def test_the_same_event_again_bumps_the_count_of_the_one_recorded() -> None:
    kube, clock = FakeKube(), Clock()
    events, _ = recorder(kube, clock)
    await events.record(REF, "Normal", "Started", "the guest runs")
    clock.now += 5
    await events.record(REF, "Normal", "Started", "the guest runs")
    await events.record(REF, "Normal", "Started", "the guest runs")
    assert kube.posted == [("web", "Normal", "Started")]
    assert kube.bumped == [("event-1", 2), ("event-1", 3)]


async def test_after_the_window_or_the_events_expiry_a_new_event_is_made() -> None:
    kube, clock = FakeKube(), Clock()
    events, _ = recorder(kube, clock)
    await events.record(REF, "Normal", "Started", "m")
    clock.now += 601
    await events.record(REF, "Normal", "Started", "m")
    kube.expired = True
    await events.record(REF, "Normal", "Started", "m")
    assert len(kube.posted) == 3
    assert kube.bumped == []


async def test_a_burst_beyond_the_rate_is_dropped_and_counted_then_recording_resumes() -> None:
    kube, clock = FakeKube(), Clock()
    events, dropped = recorder(kube, clock, qps=2.0, burst=5)
    for n in range(8):
        await events.record({**REF, "name": f"vm-{n}", "uid": f"u-{n}"}, "Normal", "Scheduled", "m")
    assert len(kube.posted) == 5
    assert dropped == ["Normal"] * 3
    clock.now += 1.0  # two more tokens
    for n in range(8, 11):
        await events.record({**REF, "name": f"vm-{n}", "uid": f"u-{n}"}, "Warning", "Failed", "m")
    assert [name for name, _, _ in kube.posted[5:]] == ["vm-8", "vm-9"]
    assert dropped[3:] == ["Warning"]


async def test_a_failing_api_server_does_not_fail_the_caller() -> None:
    class Refusing(FakeKube):
        async def post_event(self, *args: Any) -> str:
            raise RuntimeError("connection refused")

    events, _ = recorder(Refusing(), Clock())
    await events.record(REF, "Warning", "Failed", "m")  # logged, not raised
