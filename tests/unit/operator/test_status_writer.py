"""The one status writer: one merge patch per batch of changes, no read, UID-guarded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from stratus_api.v1alpha1.instance import InstancePhase, InstanceStatus
from stratus_operator.services.events import EventRecorder
from stratus_operator.services.kube import NotFound
from stratus_operator.services.status import ObjectRef, StatusWriter, merge_patch

REF = ObjectRef("Instance", "instances", "ns", "web", "0b7f7c3e-1111-2222-3333-444455556666")


class FakeKube:
    """Records status patches; anything else it is asked fails the test."""

    def __init__(self, gone: bool = False) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.gone = gone
        self.while_in_flight: Callable[[], None] | None = None  # before the answer

    async def patch_status(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> str:
        """The resourceVersion the patch made: 1, 2, ... (others' writes aside)."""
        assert (plural, namespace, name) == ("instances", "ns", "web")
        if self.gone:
            raise NotFound(name)
        self.patches.append(body)
        if self.while_in_flight is not None:
            self.while_in_flight()
        return str(len(self.patches))

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str
    ) -> None:
        self.events.append((type_, reason))


def writer(kube: FakeKube, coalesce: float = 0.05) -> StatusWriter:
    return StatusWriter(kube, EventRecorder(kube), coalesce)  # type: ignore[arg-type]


def to(phase: InstancePhase, node: str | None = None) -> Any:
    def change(status: InstanceStatus, _generation: int) -> InstanceStatus:
        update: dict[str, Any] = {"phase": phase}
        if node is not None:
            update["node"] = node
        return status.model_copy(update=update)

    return change


def test_merge_patch_sets_changes_and_nulls_removals() -> None:
    old = {"phase": "Pending", "node": "a", "capacity": {"cpu": 1, "memory": "1Gi"}}
    new = {"phase": "Running", "capacity": {"cpu": 2, "memory": "1Gi"}}
    assert merge_patch(old, new) == {"phase": "Running", "node": None, "capacity": {"cpu": 2}}


async def test_changes_close_together_go_out_as_one_patch_naming_the_uid() -> None:
    kube = FakeKube()
    status = writer(kube)
    results = await asyncio.gather(
        status.write(REF, None, 1, to(InstancePhase.PROVISIONING, "hv-1"), InstanceStatus),
        status.write(REF, None, 1, to(InstancePhase.RUNNING), InstanceStatus),
    )
    assert len(kube.patches) == 1
    assert kube.patches[0] == {"metadata": {"uid": REF.uid},
                               "status": {"phase": "Running", "node": "hv-1"}}  # fmt: skip
    assert results[0] == results[1] and results[0] is not None
    # The next write starts from what was written, not from the (stale) watched status.
    await status.write(REF, InstanceStatus(), 1, to(InstancePhase.RUNNING), InstanceStatus)
    assert len(kube.patches) == 1  # nothing changed: nothing sent


async def test_a_gone_object_is_forgotten() -> None:
    kube = FakeKube(gone=True)
    status = writer(kube, 0)
    assert await status.write(REF, None, 1, to(InstancePhase.RUNNING), InstanceStatus) is None


@pytest.mark.parametrize("coalesce", [0.0, 0.05])
async def test_every_caller_waits_for_its_own_change(coalesce: float) -> None:
    kube = FakeKube()
    status = writer(kube, coalesce)
    await status.write(REF, None, 1, to(InstancePhase.PROVISIONING), InstanceStatus)
    await status.write(REF, None, 1, to(InstancePhase.RUNNING), InstanceStatus)
    assert [p["status"]["phase"] for p in kube.patches] == ["Provisioning", "Running"]


async def test_the_watched_copy_replaces_the_kept_one_only_when_it_caught_up() -> None:
    """One copy of a status is kept, not two, once the watch delivered what was written;
    a stale watched copy is never taken for it."""
    kube = FakeKube()
    status = writer(kube, 0)
    written = await status.write(REF, None, 1, to(InstancePhase.RUNNING, "hv-1"), InstanceStatus)
    assert written is not None
    stale = InstanceStatus(phase=InstancePhase.PROVISIONING, node="hv-1")
    status.caught_up(REF.uid, stale, "0")  # an event from before the write
    # Still from what was written: Running again is no change, so nothing is sent.
    await status.write(REF, stale, 1, to(InstancePhase.RUNNING), InstanceStatus)
    assert len(kube.patches) == 1

    watched = InstanceStatus.model_validate(kube.patches[0]["status"])
    assert watched == written
    status.caught_up(REF.uid, watched, "1")
    assert status._written[REF.uid].status is watched  # the writer's own copy is let go
    await status.write(REF, watched, 1, to(InstancePhase.STOPPED), InstanceStatus)
    assert kube.patches[-1]["status"] == {"phase": "Stopped"}


async def test_a_status_edited_by_someone_else_is_put_back_by_the_next_write() -> None:
    """Once the watch has shown the write, a later status that differs is somebody else's
    (`kubectl edit --subresource=status`): the next write starts from it, so the fields
    the operator owns go back, not only the ones its change touched."""
    kube = FakeKube()
    status = writer(kube, 0)
    written = await status.write(REF, None, 1, to(InstancePhase.RUNNING, "hv-1"), InstanceStatus)
    assert written is not None
    status.caught_up(REF.uid, written.model_copy(), "1")
    edited = InstanceStatus(phase=InstancePhase.FAILED, node="hv-1")
    status.caught_up(REF.uid, edited, "7")
    await status.write(REF, edited, 1, to(InstancePhase.RUNNING), InstanceStatus)
    assert kube.patches[-1]["status"] == {"phase": "Running"}


async def test_the_writes_own_event_may_come_before_its_answer() -> None:
    """The watch can deliver a write's event while the PATCH's answer is on its way: it
    still counts, so a later edit by someone else is seen as one."""
    kube = FakeKube()
    status = writer(kube, 0)
    own = InstanceStatus(phase=InstancePhase.RUNNING, node="hv-1")
    kube.while_in_flight = lambda: status.caught_up(REF.uid, own, "1")
    await status.write(REF, None, 1, to(InstancePhase.RUNNING, "hv-1"), InstanceStatus)
    assert status._written[REF.uid].status is own  # judged once the answer came
    kube.while_in_flight = None

    edited = InstanceStatus(phase=InstancePhase.STOPPED, node="hv-1")
    status.caught_up(REF.uid, edited, "2")
    await status.write(REF, edited, 1, to(InstancePhase.RUNNING), InstanceStatus)
    assert kube.patches[-1]["status"] == {"phase": "Running"}
