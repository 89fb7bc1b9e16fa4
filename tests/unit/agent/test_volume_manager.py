"""VolumeManager and the provisioner's volume disks, over the in-memory volume driver.

The same behaviour with real qemu-img and files is in
tests/integration/agent/test_file_volumes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stratus_agent import main as agent_main
from stratus_agent.base import (
    CachedImage,
    GuestOwner,
    ProgressListener,
    StoredVolume,
)
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.drivers.images.fake import FAKE_VIRTUAL_SIZE, FakeImageStore
from stratus_agent.drivers.storage.fake_volumes import FakeVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.guests import GuestManager
from stratus_agent.manager.provisioner import NodeProvisioner
from stratus_agent.manager.recovery import Backoff, RecoveryPolicy
from stratus_agent.manager.sequence import SequenceClock
from stratus_agent.manager.volumes import AttachmentBook, VolumeInUseError, VolumeManager
from stratus_api.guest import GuestEvent, GuestSpec
from stratus_api.reasons import GuestFailure
from stratus_api.volume_wire import (
    NodeVolumeSpec,
    NodeVolumeState,
    NodeVolumeStatus,
    disk_serial,
)
from testsupport import guest_spec, until, volume_spec


class Events:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[GuestEvent] = []

    def publish(self, event: GuestEvent) -> None:
        self.events.append(event)

    def volumes(self, uid: str) -> list[NodeVolumeStatus]:
        return [e.volume for e in self.events if e.volume is not None and e.volume.uid == uid]


class GatedDriver(FakeVolumeDriver):
    """The fake driver, whose creates and grows wait for `gate` and may fail."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing: Exception | None = None

    async def create(
        self,
        uid: str,
        size_bytes: int,
        *,
        image: CachedImage | None = None,
        clone_of: str | None = None,
        progress: ProgressListener | None = None,
        shareable: bool = False,
    ) -> StoredVolume:
        if progress is not None:
            progress(0)
            progress(2)  # same step as 0: not published
            progress(50)
        await self.gate.wait()
        if self.failing is not None:
            raise self.failing
        return await super().create(
            uid, size_bytes, image=image, clone_of=clone_of, progress=progress, shareable=shareable
        )

    async def grow(self, uid: str, size_bytes: int) -> StoredVolume:
        await self.gate.wait()
        return await super().grow(uid, size_bytes)


@dataclass
class Node:
    volumes: VolumeManager
    driver: GatedDriver
    events: Events
    book: AttachmentBook
    provisioner: NodeProvisioner


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    driver = GatedDriver(tmp_path / "volumes")
    events = Events()
    book = AttachmentBook(tmp_path / "volumes" / "attachments.json")
    images = FakeImageStore(tmp_path / "images")
    volumes = VolumeManager(driver, images, events, node="node-1", book=book)
    await volumes.start()
    provisioner = agent_main.fake_provisioner(tmp_path)
    provisioner.volumes = volumes
    yield Node(volumes, driver, events, book, provisioner)
    await volumes.stop()


def vspec(**overrides: Any) -> NodeVolumeSpec:
    return NodeVolumeSpec.model_validate(volume_spec(**overrides))


def in_state(volumes: VolumeManager, uid: str, state: NodeVolumeState) -> Callable[[], bool]:
    return lambda: (status := volumes.status(uid)) is not None and status.state is state


async def available(node: Node, spec: NodeVolumeSpec) -> NodeVolumeStatus:
    await node.volumes.ensure(spec)
    await until("Available", in_state(node.volumes, spec.uid, NodeVolumeState.AVAILABLE))
    status = node.volumes.status(spec.uid)
    assert status is not None
    return status


async def test_ensure_answers_at_once_and_the_copy_goes_on_behind(node: Node) -> None:
    node.driver.gate.clear()
    image = {"uid": "0b6e7c52-0f0a-4a53-9a8e-6c1b1e5b2c3d", "name": "img", "url": "http://x/i"}
    spec = vspec(sizeBytes=FAKE_VIRTUAL_SIZE * 2, source={"image": image})
    first = await node.volumes.ensure(spec)
    assert (first.state, first.progress, first.generation) == (NodeVolumeState.CREATING, 0, 1)
    await until("progress 50", lambda: (s := node.volumes.status(spec.uid)) and s.progress == 50)

    node.driver.gate.set()
    done = await available(node, spec)
    assert (done.size_bytes, done.progress, done.attached_to) == (FAKE_VIRTUAL_SIZE * 2, None, [])
    reported = node.events.volumes(spec.uid)
    assert [(s.state.value, s.progress) for s in reported] == [
        ("Creating", 0), ("Creating", 50), ("Creating", 100), ("Available", None)
    ]  # fmt: skip
    assert all(e.type == "volume" for e in node.events.events)
    sequences = [s.sequence or 0 for s in reported]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)

    again = await node.volumes.ensure(spec)
    assert again == done  # nothing to do, nothing reported
    assert len(node.events.volumes(spec.uid)) == len(reported)


async def test_a_larger_size_grows_a_smaller_one_never_shrinks(node: Node) -> None:
    spec = vspec()
    await available(node, spec)
    node.driver.gate.clear()
    bigger = vspec(uid=spec.uid, generation=2, sizeBytes=4 * 2**20)
    extending = await node.volumes.ensure(bigger)
    assert extending.state is NodeVolumeState.EXTENDING and extending.generation == 2
    node.driver.gate.set()
    grown = await available(node, bigger)
    assert (grown.size_bytes, grown.generation) == (4 * 2**20, 2)

    smaller = vspec(uid=spec.uid, generation=3, sizeBytes=2**20)
    kept = await node.volumes.ensure(smaller)
    assert (kept.state, kept.size_bytes, kept.generation) == (
        NodeVolumeState.AVAILABLE,
        4 * 2**20,
        3,
    )
    # The source counts only at creation.
    cloned = vspec(uid=spec.uid, generation=3, sizeBytes=4 * 2**20, source={"volume": spec.uid})
    assert (await node.volumes.ensure(cloned)).state is NodeVolumeState.AVAILABLE


async def test_a_failure_is_reported_and_the_same_spec_tries_again(node: Node) -> None:
    node.driver.failing = ProvisioningError(GuestFailure.VOLUME_CREATE_FAILED, "disk on fire")
    spec = vspec()
    await node.volumes.ensure(spec)
    await until("Failed", in_state(node.volumes, spec.uid, NodeVolumeState.FAILED))
    failed = node.volumes.status(spec.uid)
    assert failed is not None
    assert (failed.reason, failed.message) == ("VolumeCreateFailed", "disk on fire")

    node.driver.failing = None
    await available(node, spec)


async def test_a_source_too_small_or_missing_fails(node: Node) -> None:
    image = {"uid": "0b6e7c52-0f0a-4a53-9a8e-6c1b1e5b2c3d", "name": "img", "url": "http://x/i"}
    small = vspec(sizeBytes=FAKE_VIRTUAL_SIZE - 1, source={"image": image})
    await node.volumes.ensure(small)
    await until("Failed", in_state(node.volumes, small.uid, NodeVolumeState.FAILED))
    assert (status := node.volumes.status(small.uid)) and status.reason == "DiskTooSmall"

    orphan = vspec(source={"volume": "7c1f0b1e-8a51-4a44-9b0f-2f7f4c8f2a11"})
    await node.volumes.ensure(orphan)
    await until("Failed", in_state(node.volumes, orphan.uid, NodeVolumeState.FAILED))
    assert (status := node.volumes.status(orphan.uid)) and status.reason == "VolumeNotFound"


async def test_a_clone_copies_another_volume(node: Node) -> None:
    source = await available(node, vspec(sizeBytes=3 * 2**20))
    clone = await available(node, vspec(sizeBytes=3 * 2**20, source={"volume": source.uid}))
    assert clone.size_bytes == 3 * 2**20 and set(node.driver.volumes) == {source.uid, clone.uid}


async def test_a_clone_waits_for_its_source_to_be_available_and_unused(node: Node) -> None:
    source = await available(node, vspec())
    await node.volumes.use("guest-a", [source.uid], None)
    clone = vspec(source={"volume": source.uid})
    await node.volumes.ensure(clone)
    await until("Failed", in_state(node.volumes, clone.uid, NodeVolumeState.FAILED))
    failed = node.volumes.status(clone.uid)
    assert failed is not None and failed.reason == "VolumeInUse" and "torn" in failed.message

    await node.volumes.release("guest-a")
    node.driver.gate.clear()  # the source grows: not copied meanwhile
    await node.volumes.ensure(vspec(uid=source.uid, generation=2, sizeBytes=2 * 2**20))
    await node.volumes.ensure(clone)
    await until("Failed", in_state(node.volumes, clone.uid, NodeVolumeState.FAILED))
    assert (status := node.volumes.status(clone.uid)) and "(Extending)" in status.message
    node.driver.gate.set()
    await available(node, vspec(uid=source.uid, generation=2, sizeBytes=2 * 2**20))
    await available(node, clone.model_copy(update={"size_bytes": 2 * 2**20}))


def guest_with(*volumes: NodeVolumeStatus) -> GuestSpec:
    disks: list[dict[str, Any]] = [guest_spec()["disks"][0]]
    for index, volume in enumerate(volumes):
        serial = disk_serial(volume.uid)
        disks.append(
            {
                "name": f"data{index}",
                "volume": {"uid": volume.uid, "backend": "file", "serial": serial},
            }
        )
    return GuestSpec.model_validate(guest_spec(disks=disks))


async def test_guests_attach_available_volumes_and_delete_waits_for_them(node: Node) -> None:
    volume = await available(node, vspec())
    guest = guest_with(volume)
    facts = await node.provisioner.prepare(guest)
    (attachment,) = facts.volumes
    assert (attachment.name, attachment.serial) == ("data0", disk_serial(volume.uid))
    assert (status := node.volumes.status(volume.uid)) and status.attached_to == [guest.uid]
    assert node.events.volumes(volume.uid)[-1].attached_to == [guest.uid]

    with pytest.raises(VolumeInUseError) as refused:
        await node.volumes.delete(volume.uid)
    assert refused.value.guests == [guest.uid] and guest.uid in str(refused.value)

    other = guest_with(volume)
    with pytest.raises(ProvisioningError) as in_use:
        await node.provisioner.prepare(other)
    assert in_use.value.reason is GuestFailure.VOLUME_IN_USE and in_use.value.transient

    await node.provisioner.cleanup(guest.uid)
    assert (status := node.volumes.status(volume.uid)) and status.attached_to == []
    assert volume.uid not in node.driver.owners
    assert await node.volumes.delete(volume.uid) is True
    assert node.volumes.status(volume.uid) is None
    assert node.events.volumes(volume.uid)[-1].state is NodeVolumeState.MISSING
    assert await node.volumes.delete(volume.uid) is False  # idempotent


async def test_a_guest_boots_from_a_volume_that_outlives_it(node: Node) -> None:
    boot, data = await available(node, vspec()), await available(node, vspec())
    spec = guest_with(boot, data).model_dump(by_alias=True, mode="json")
    spec["disks"][0] = {"name": "root", "volume": spec["disks"][1]["volume"]}
    spec["disks"][1] = {"name": "data", "volume": spec["disks"][2]["volume"]}
    del spec["disks"][2]
    guest = GuestSpec.model_validate(spec)
    facts = await node.provisioner.prepare(guest)
    assert (facts.root_disk.path, facts.root_disk.serial) == (
        boot.location, disk_serial(boot.uid)
    )  # fmt: skip
    assert [(v.name, v.serial) for v in facts.volumes] == [("data", disk_serial(data.uid))]
    assert (status := node.volumes.status(boot.uid)) and status.attached_to == [guest.uid]

    await node.provisioner.settle(guest)  # the root volume stays held while the guest is
    assert (status := node.volumes.status(boot.uid)) and status.attached_to == [guest.uid]
    await node.provisioner.cleanup(guest.uid)
    assert (status := node.volumes.status(boot.uid)) and status.attached_to == []
    assert boot.uid in node.driver.volumes  # the data stays


async def test_a_guest_dropping_a_volume_lets_go_of_it_once_settled(node: Node) -> None:
    kept, dropped = await available(node, vspec()), await available(node, vspec())
    guest = guest_with(kept, dropped)
    owner = GuestOwner(uid=5000, gid=5000)
    held = await node.volumes.use(guest.uid, [kept.uid, dropped.uid], owner)
    assert set(held) == {kept.uid, dropped.uid} and node.driver.owners[dropped.uid] == owner
    # A newer spec without it: still held while the guest may have it plugged in.
    await node.volumes.use(guest.uid, [kept.uid], owner)
    assert node.driver.owners[dropped.uid] == owner
    with pytest.raises(VolumeInUseError):
        await node.volumes.delete(dropped.uid)
    await node.volumes.keep_only(guest.uid, [kept.uid])  # the guest released it
    assert dropped.uid not in node.driver.owners and kept.uid in node.driver.owners
    assert (status := node.volumes.status(dropped.uid)) and status.attached_to == []


async def test_only_a_shareable_volume_serves_two_guests_at_once(node: Node) -> None:
    volume = await available(node, vspec())
    await node.volumes.use("guest-a", [volume.uid], None)
    with pytest.raises(ProvisioningError) as refused:
        await node.volumes.use("guest-b", [volume.uid], None)
    assert refused.value.reason == GuestFailure.VOLUME_IN_USE
    assert "in use by guest(s) guest-a" in str(refused.value)
    await node.volumes.use("guest-b", [volume.uid], None, shareable={volume.uid})
    assert (status := node.volumes.status(volume.uid))
    assert status.attached_to == ["guest-a", "guest-b"]


async def test_a_volume_a_running_guest_holds_grows_through_its_hypervisor(
    tmp_path: Path,
) -> None:
    resized: list[tuple[str, str, int]] = []
    running = {"guest-a": False}

    async def resize_live(guest: str, serial: str, size_bytes: int) -> bool:
        if running.get(guest):
            resized.append((guest, serial, size_bytes))
        return running.get(guest, False)

    driver = GatedDriver(tmp_path / "volumes")
    volumes = VolumeManager(
        driver, FakeImageStore(tmp_path), Events(), node="n", resize_live=resize_live
    )
    await volumes.start()
    try:
        spec = vspec(sizeBytes=2**20)
        await volumes.ensure(spec)
        await until("Available", in_state(volumes, spec.uid, NodeVolumeState.AVAILABLE))
        await volumes.use("guest-a", [spec.uid], None)

        running["guest-a"] = True  # online: QEMU grows it, the backend is not touched
        driver.gate.clear()  # an offline grow would hang here
        await volumes.ensure(vspec(uid=spec.uid, generation=2, sizeBytes=2 * 2**20))
        await until("grown", lambda: (s := volumes.status(spec.uid)) and s.size_bytes == 2**21)
        assert resized == [("guest-a", disk_serial(spec.uid), 2**21)]
        assert driver.volumes[spec.uid].size_bytes == 2**20

        running["guest-a"] = False  # stopped: the backend grows it offline
        driver.gate.set()
        await volumes.ensure(vspec(uid=spec.uid, generation=3, sizeBytes=3 * 2**20))
        await until("grown", lambda: (s := volumes.status(spec.uid)) and s.size_bytes == 3 * 2**20)
        assert driver.volumes[spec.uid].size_bytes == 3 * 2**20 and len(resized) == 1
    finally:
        await volumes.stop()


async def test_a_volume_stays_held_while_the_guest_has_not_released_it(
    tmp_path: Path,
) -> None:
    """The compute driver cannot confirm a hot-unplug (the guest ignores the eject): the
    guest fails transiently and keeps the volume; once it confirms, the volume is let go."""

    class StuckUnplug(FakeComputeDriver):
        stuck = True

        async def ensure(self, spec: GuestSpec, facts: Any, *, restart: bool = False) -> Any:
            if self.stuck and len(spec.disks) == 1 and spec.uid in self.boots:
                raise ProvisioningError(GuestFailure.VOLUME_DETACH_PENDING, "not released")
            return await super().ensure(spec, facts, restart=restart)

    events = Events()
    volumes = VolumeManager(FakeVolumeDriver(tmp_path), FakeImageStore(tmp_path), events, node="n")
    provisioner = agent_main.fake_provisioner(tmp_path)
    provisioner.volumes = volumes
    compute = StuckUnplug()
    guests = GuestManager(
        compute, provisioner, events, policy=RecoveryPolicy(retry=Backoff(0.01, 0.02))
    )
    await volumes.start()
    await guests.start()
    try:
        volume = vspec()
        await volumes.ensure(volume)
        await until("Available", in_state(volumes, volume.uid, NodeVolumeState.AVAILABLE))
        status = volumes.status(volume.uid)
        assert status is not None
        with_volume = guest_with(status)
        await guests.ensure(with_volume)
        await until("attached", lambda: (s := volumes.status(volume.uid)) and s.attached_to)

        without = with_volume.model_copy(update={"generation": 2, "disks": with_volume.disks[:1]})
        await guests.ensure(without)
        await until("pending", lambda: (s := guests.status(without.uid)) is not None
                    and s.reason == GuestFailure.VOLUME_DETACH_PENDING)  # fmt: skip
        assert (s := volumes.status(volume.uid)) and s.attached_to == [without.uid]
        with pytest.raises(VolumeInUseError):
            await volumes.delete(volume.uid)

        compute.stuck = False  # the guest answers the eject: the retry succeeds
        await until("released", lambda: (s := volumes.status(volume.uid)) is not None
                    and s.attached_to == [])  # fmt: skip
        assert await volumes.delete(volume.uid) is True
    finally:
        await guests.stop()
        await volumes.stop()


async def test_a_missing_or_busy_volume_fails_the_guest_transiently(node: Node) -> None:
    missing = NodeVolumeStatus(uid="7c1f0b1e-8a51-4a44-9b0f-2f7f4c8f2a11", state="Missing")
    with pytest.raises(ProvisioningError) as absent:
        await node.provisioner.prepare(guest_with(missing))
    assert absent.value.reason is GuestFailure.VOLUME_NOT_FOUND and absent.value.transient

    node.driver.gate.clear()
    creating = await node.volumes.ensure(vspec())
    with pytest.raises(ProvisioningError, match="Creating") as busy:
        await node.provisioner.prepare(guest_with(creating))
    assert busy.value.reason is GuestFailure.VOLUME_NOT_FOUND


async def test_a_restarted_manager_finds_volumes_and_their_guests(node: Node) -> None:
    volume = await available(node, vspec())
    guest = guest_with(volume)
    await node.provisioner.prepare(guest)

    events = Events()
    images = FakeImageStore(node.driver.directory)
    restarted = VolumeManager(node.driver, images, events, node="node-1", book=node.book)
    await restarted.start()
    status = restarted.status(volume.uid)
    assert status is not None and status.state is NodeVolumeState.AVAILABLE
    assert status.attached_to == [guest.uid]
    with pytest.raises(VolumeInUseError):
        await restarted.delete(volume.uid)

    inventory = await restarted.inventory()
    assert inventory.node == "node-1" and [v.uid for v in inventory.volumes] == [volume.uid]
    assert (inventory.volumes[0].sequence or 0) > (status.sequence or 0)
    (pool,) = inventory.pools
    assert (pool.backend.value, pool.used_bytes) == ("file", 2**20)


async def test_guest_and_volume_reports_share_one_order(tmp_path: Path) -> None:
    events = Events()
    sequence = SequenceClock()
    volumes = VolumeManager(
        FakeVolumeDriver(tmp_path), FakeImageStore(tmp_path), events, node="n", sequence=sequence
    )
    guests = GuestManager(
        FakeComputeDriver(), agent_main.fake_provisioner(tmp_path), events, sequence=sequence
    )
    await volumes.start()
    await guests.start()
    try:
        for _ in range(3):
            await guests.ensure(GuestSpec.model_validate(guest_spec()))
            await volumes.ensure(vspec())
        await asyncio.sleep(0.05)
    finally:
        await guests.stop()
    stamps = [(e.guest or e.volume).sequence for e in events.events]  # type: ignore[union-attr]
    assert {e.type for e in events.events} == {"guest", "volume"}
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # type: ignore[type-var]


async def test_a_volume_the_pool_cannot_hold_fails_and_is_made_once_room_is_there(
    node: Node,
) -> None:
    node.driver.capacity = 3 * 2**20
    spec = vspec(sizeBytes=4 * 2**20)
    await node.volumes.ensure(spec)
    await until("Failed", in_state(node.volumes, spec.uid, NodeVolumeState.FAILED))
    failed = node.volumes.status(spec.uid)
    assert failed is not None and failed.reason == "NodeStorageFull"
    assert "needs 4194304 bytes" in failed.message and "3145728 free" in failed.message
    assert spec.uid not in node.driver.volumes  # nothing half made

    node.driver.capacity = 8 * 2**20
    await available(node, spec)  # the same spec again, now that it fits
    grown = spec.model_copy(update={"size_bytes": 16 * 2**20, "generation": 2})
    await node.volumes.ensure(grown)
    await until("grow refused", in_state(node.volumes, spec.uid, NodeVolumeState.FAILED))
    refused = node.volumes.status(spec.uid)
    assert refused is not None and "needs 12582912 bytes" in refused.message
