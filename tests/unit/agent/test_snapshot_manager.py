"""SnapshotManager, and volumes restored from snapshots, over the in-memory volume driver.

The same behaviour with real qemu-img and files is in
tests/integration/agent/test_file_snapshots.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stratus_agent.base import ProgressListener, StoredSnapshot
from stratus_agent.drivers.images.fake import FakeImageStore
from stratus_agent.drivers.storage.fake_volumes import FakeVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.sequence import SequenceClock
from stratus_agent.manager.snapshots import SnapshotManager
from stratus_agent.manager.volumes import VolumeManager
from stratus_api.guest import GuestEvent
from stratus_api.reasons import GuestFailure, is_transient
from stratus_api.volume_wire import (
    NodeSnapshotSpec,
    NodeSnapshotState,
    NodeSnapshotStatus,
    NodeVolumeSpec,
    NodeVolumeState,
    NodeVolumeStatus,
)
from testsupport import until, volume_spec

MiB = 2**20


class Events:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[GuestEvent] = []

    def publish(self, event: GuestEvent) -> None:
        self.events.append(event)

    def snapshots(self, uid: str) -> list[NodeSnapshotStatus]:
        return [e.snapshot for e in self.events if e.snapshot is not None and e.snapshot.uid == uid]


class GatedDriver(FakeVolumeDriver):
    """The fake driver, whose snapshots report progress, then wait for `gate`, and may
    fail."""

    def __init__(self, directory: Path, capacity: int = 2**50) -> None:
        super().__init__(directory, capacity)
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing: Exception | None = None

    async def snapshot(
        self, volume_uid: str, snapshot_uid: str, *, progress: ProgressListener | None = None
    ) -> StoredSnapshot:
        if progress is not None:
            progress(0)
            progress(3)  # same step as 0: not published
            progress(50)
        await self.gate.wait()
        if self.failing is not None:
            raise self.failing
        return await super().snapshot(volume_uid, snapshot_uid, progress=progress)


@dataclass
class Node:
    volumes: VolumeManager
    snapshots: SnapshotManager
    driver: GatedDriver
    events: Events
    sequence: SequenceClock


async def started(driver: GatedDriver, events: Events) -> Node:
    sequence = SequenceClock()
    images = FakeImageStore(driver.directory)
    volumes = VolumeManager(driver, images, events, node="node-1", sequence=sequence)
    snapshots = SnapshotManager(driver, volumes, events, sequence=sequence)
    await volumes.start()
    await snapshots.start()
    return Node(volumes, snapshots, driver, events, sequence)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    started_node = await started(GatedDriver(tmp_path / "volumes"), Events())
    yield started_node
    await started_node.snapshots.stop()
    await started_node.volumes.stop()


def vspec(**overrides: Any) -> NodeVolumeSpec:
    return NodeVolumeSpec.model_validate(volume_spec(**overrides))


def sspec(volume: str, **overrides: Any) -> NodeSnapshotSpec:
    spec = {"uid": str(uuid.uuid4()), "name": "snap", "namespace": "team-a", "generation": 1,
            "backend": "file", "volume": volume}  # fmt: skip
    return NodeSnapshotSpec.model_validate({**spec, **overrides})


def snapshot_in(node: Node, uid: str, state: NodeSnapshotState) -> Callable[[], bool]:
    return lambda: (status := node.snapshots.status(uid)) is not None and status.state is state


def volume_in(node: Node, uid: str, state: NodeVolumeState) -> Callable[[], bool]:
    return lambda: (status := node.volumes.status(uid)) is not None and status.state is state


async def available(node: Node, spec: NodeVolumeSpec) -> NodeVolumeStatus:
    await node.volumes.ensure(spec)
    await until("Available", volume_in(node, spec.uid, NodeVolumeState.AVAILABLE))
    status = node.volumes.status(spec.uid)
    assert status is not None
    return status


async def settled(
    node: Node, spec: NodeSnapshotSpec, state: NodeSnapshotState
) -> NodeSnapshotStatus:
    await until(state.value, snapshot_in(node, spec.uid, state))
    status = node.snapshots.status(spec.uid)
    assert status is not None
    return status


async def test_ensure_answers_at_once_and_the_copy_goes_on_behind(node: Node) -> None:
    volume = await available(node, vspec(sizeBytes=3 * MiB))
    node.driver.gate.clear()
    spec = sspec(volume.uid)
    first = await node.snapshots.ensure(spec)
    assert (first.state, first.progress, first.generation, first.volume) == (
        NodeSnapshotState.CREATING, 0, 1, volume.uid
    )  # fmt: skip
    await until("progress 50", lambda: (s := node.snapshots.status(spec.uid)) and s.progress == 50)

    node.driver.gate.set()
    done = await settled(node, spec, NodeSnapshotState.READY)
    assert (done.size_bytes, done.progress, done.volume) == (3 * MiB, None, volume.uid)
    assert done.location is not None and spec.uid in done.location
    reported = node.events.snapshots(spec.uid)
    assert [(s.state.value, s.progress) for s in reported] == [
        ("Creating", 0), ("Creating", 50), ("Creating", 100), ("Ready", None)
    ]  # fmt: skip
    assert {e.type for e in node.events.events if e.snapshot is not None} == {"snapshot"}
    sequences = [s.sequence or 0 for s in reported]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert sequences[0] > (volume.sequence or 0)  # one clock with the volumes

    again = await node.snapshots.ensure(spec)
    assert again == done  # nothing to do, nothing reported
    newer = await node.snapshots.ensure(spec.model_copy(update={"generation": 2}))
    assert (newer.state, newer.generation) == (NodeSnapshotState.READY, 2)


async def test_a_volume_a_guest_uses_is_refused_until_it_is_released(node: Node) -> None:
    volume = await available(node, vspec())
    await node.volumes.use("guest-a", [volume.uid], None)
    spec = sspec(volume.uid)
    assert (await node.snapshots.ensure(spec)).state is NodeSnapshotState.CREATING
    failed = await settled(node, spec, NodeSnapshotState.FAILED)
    assert failed.reason == GuestFailure.VOLUME_IN_USE and is_transient(failed.reason)
    assert "guest-a" in failed.message
    assert "file volumes are snapshotted while detached" in failed.message
    assert (failed.volume, failed.size_bytes) == (volume.uid, None) and not node.driver.snapshots

    await node.volumes.release("guest-a")
    await node.snapshots.ensure(spec)  # the same spec tries again
    await settled(node, spec, NodeSnapshotState.READY)


async def test_a_volume_being_snapshotted_is_held_still(node: Node) -> None:
    volume = await available(node, vspec())
    node.driver.gate.clear()
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    # Held from the moment the copy starts (its first progress), until it ends.
    await until("copying", lambda: (s := node.snapshots.status(spec.uid)) and s.progress == 50)
    with pytest.raises(ProvisioningError, match="being copied") as taken:
        await node.volumes.use("guest-a", [volume.uid], None)
    assert taken.value.reason is GuestFailure.VOLUME_IN_USE and taken.value.transient
    grown = vspec(uid=volume.uid, generation=2, sizeBytes=2 * MiB)
    await node.volumes.ensure(grown)
    await until("grow refused", volume_in(node, volume.uid, NodeVolumeState.FAILED))
    assert (status := node.volumes.status(volume.uid)) and status.reason == "VolumeInUse"

    node.driver.gate.set()
    await settled(node, spec, NodeSnapshotState.READY)
    await available(node, grown)  # once the copy is done, both go ahead
    assert set(await node.volumes.use("guest-a", [volume.uid], None)) == {volume.uid}


async def test_a_missing_volume_or_a_failing_copy_fails_and_is_tried_again(node: Node) -> None:
    unknown = sspec(str(uuid.uuid4()))
    await node.snapshots.ensure(unknown)
    failed = await settled(node, unknown, NodeSnapshotState.FAILED)
    assert failed.reason == GuestFailure.VOLUME_NOT_FOUND and "absent" in failed.message

    volume = await available(node, vspec())
    node.driver.failing = OSError("disk on fire")
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    failed = await settled(node, spec, NodeSnapshotState.FAILED)
    assert (failed.reason, failed.message) == ("AgentError", "OSError: disk on fire")
    node.driver.failing = None
    await node.snapshots.ensure(spec)
    await settled(node, spec, NodeSnapshotState.READY)


async def test_a_snapshot_the_pool_cannot_hold_fails(node: Node) -> None:
    volume = await available(node, vspec(sizeBytes=4 * MiB))
    node.driver.capacity = 6 * MiB  # 4 MiB used by the volume, 2 MiB free
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    failed = await settled(node, spec, NodeSnapshotState.FAILED)
    assert failed.reason == "NodeStorageFull" and "needs up to 4194304 bytes" in failed.message
    node.driver.capacity = 16 * MiB
    await node.snapshots.ensure(spec)
    await settled(node, spec, NodeSnapshotState.READY)
    assert (await node.driver.usage()).used_bytes == 8 * MiB  # counted in the pool


async def test_a_restore_has_the_snapshots_size_or_the_larger_one_asked(node: Node) -> None:
    volume = await available(node, vspec(sizeBytes=3 * MiB))
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    await settled(node, spec, NodeSnapshotState.READY)
    await available(node, vspec(uid=volume.uid, generation=2, sizeBytes=5 * MiB))

    same = await available(node, vspec(sizeBytes=3 * MiB, source={"snapshot": spec.uid}))
    bigger = await available(node, vspec(sizeBytes=8 * MiB, source={"snapshot": spec.uid}))
    assert (same.size_bytes, bigger.size_bytes) == (3 * MiB, 8 * MiB)

    smaller = vspec(sizeBytes=2 * MiB, source={"snapshot": spec.uid})
    await node.volumes.ensure(smaller)
    await until("Failed", volume_in(node, smaller.uid, NodeVolumeState.FAILED))
    assert (status := node.volumes.status(smaller.uid)) and status.reason == "DiskTooSmall"


async def test_a_restore_waits_for_its_snapshot_to_be_ready(node: Node) -> None:
    volume = await available(node, vspec())
    node.driver.gate.clear()
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    restore = vspec(source={"snapshot": spec.uid})
    await node.volumes.ensure(restore)
    await until("Failed", volume_in(node, restore.uid, NodeVolumeState.FAILED))
    failed = node.volumes.status(restore.uid)
    assert failed is not None and failed.reason == "VolumeNotFound"
    assert is_transient(failed.reason) and spec.uid in failed.message

    node.driver.gate.set()
    await settled(node, spec, NodeSnapshotState.READY)
    await available(node, restore)  # the same spec again, now that it is Ready


async def test_delete_is_idempotent_and_the_volume_may_go_first(node: Node) -> None:
    volume = await available(node, vspec())
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    await settled(node, spec, NodeSnapshotState.READY)

    assert await node.volumes.delete(volume.uid) is True  # snapshots are standalone
    assert (status := node.snapshots.status(spec.uid)) and status.state is NodeSnapshotState.READY
    await available(node, vspec(source={"snapshot": spec.uid}))

    assert await node.snapshots.delete(spec.uid) is True
    assert node.snapshots.status(spec.uid) is None and spec.uid not in node.driver.snapshots
    assert node.events.snapshots(spec.uid)[-1].state is NodeSnapshotState.MISSING
    reported = len(node.events.snapshots(spec.uid))
    assert await node.snapshots.delete(spec.uid) is False
    assert len(node.events.snapshots(spec.uid)) == reported  # nothing to say


async def test_delete_stops_a_copy_under_way(node: Node) -> None:
    volume = await available(node, vspec())
    node.driver.gate.clear()
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    assert await node.snapshots.delete(spec.uid) is True
    node.driver.gate.set()
    await asyncio.sleep(0.01)
    assert node.snapshots.status(spec.uid) is None and not node.driver.snapshots
    assert set(await node.volumes.use("guest-a", [volume.uid], None)) == {volume.uid}


async def test_a_restarted_manager_adopts_snapshots(node: Node) -> None:
    volume = await available(node, vspec(sizeBytes=2 * MiB))
    spec = sspec(volume.uid)
    await node.snapshots.ensure(spec)
    before = await settled(node, spec, NodeSnapshotState.READY)

    restarted = await started(node.driver, Events())
    try:
        status = restarted.snapshots.status(spec.uid)
        assert status is not None
        assert (status.state, status.volume, status.size_bytes, status.location) == (
            NodeSnapshotState.READY, volume.uid, 2 * MiB, before.location
        )  # fmt: skip
        (listed,) = restarted.snapshots.inventory()
        assert listed.uid == spec.uid and (listed.sequence or 0) > (status.sequence or 0)
        again = await restarted.snapshots.ensure(spec)  # the operator re-sends it: kept
        assert (again.state, again.generation) == (NodeSnapshotState.READY, 1)
        reported = restarted.events.snapshots(spec.uid)
        assert [(r.state.value, r.generation) for r in reported] == [("Ready", 1)]  # no copy
    finally:
        await restarted.snapshots.stop()
        await restarted.volumes.stop()
