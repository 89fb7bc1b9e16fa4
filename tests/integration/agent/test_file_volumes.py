"""File volumes with real qemu-img: standalone qcow2 files under one directory.

No libvirt here: the driver and the VolumeManager over it, as the agent assembles them.
Ownership checks need root (chown to a guest's user).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from stratus_agent.api.events import EventHub
from stratus_agent.base import CachedImage, GuestOwner, Released
from stratus_agent.drivers.storage.file_volumes import FileVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.volumes import AttachmentBook, VolumeInUseError, VolumeManager
from stratus_api import naming
from stratus_api.imageref import ImageRef
from stratus_api.reasons import GuestFailure
from stratus_api.volume_wire import NodeVolumeSpec, NodeVolumeState, disk_serial
from testsupport import qcow2_naming_data_file, volume_spec

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

MiB = 2**20
PATTERN = b"stratus-volume-test!" * 1000  # 20 000 bytes, at the start of the image


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def info(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(qemu_img("info", "--output=json", str(path)))
    return result


def same_content(a: Path, b: Path) -> bool:
    """Same guest-visible bytes (an extra tail of zeros in one of them allowed)."""
    compare = ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(a), str(b)]
    return subprocess.run(compare, capture_output=True, check=False).returncode == 0


@pytest.fixture
def image(tmp_path: Path) -> CachedImage:
    """A cached 4 MiB qcow2 image starting with PATTERN."""
    raw = tmp_path / "base.raw"
    raw.write_bytes(PATTERN + b"\0" * (4 * MiB - len(PATTERN)))
    path = tmp_path / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    return CachedImage(str(uuid.uuid4()), path, "qcow2", 4 * MiB, "")


class OneImage:
    """An ImageStore holding one cached image."""

    def __init__(self, image: CachedImage) -> None:
        self.image = image

    async def ensure(self, ref: ImageRef) -> CachedImage:
        return self.image

    async def release(self, image_uid: str) -> Released:
        return Released(evicted=False, in_use=False)

    async def collect(self) -> list[str]:
        return []


def new_uid() -> str:
    return str(uuid.uuid4())


async def test_a_blank_volume_has_the_size_asked_and_nothing_half_made(tmp_path: Path) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    uid = new_uid()
    stored = await driver.create(uid, 3 * MiB)
    path = tmp_path / "volumes" / naming.volume_file(uid)
    assert stored.location == str(path) and stored.size_bytes == 3 * MiB
    details = info(path)
    assert (details["format"], details["virtual-size"]) == ("qcow2", 3 * MiB)
    assert os.listdir(tmp_path / "volumes") == [path.name]
    assert path.stat().st_mode & 0o777 == 0o600
    assert await driver.create(uid, 5 * MiB) == stored  # exists: kept as it is


async def test_an_image_copy_is_standalone_with_the_images_content(
    tmp_path: Path, image: CachedImage
) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    uid = new_uid()
    seen: list[int] = []
    stored = await driver.create(uid, 8 * MiB, image=image, progress=seen.append)
    details = info(Path(stored.location))
    assert "backing-filename" not in details and "data-file" not in details.get(
        "format-specific", {}
    ).get("data", {})
    assert details["virtual-size"] == 8 * MiB
    assert same_content(image.path, Path(stored.location))
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen)

    too_small = new_uid()
    with pytest.raises(ProvisioningError) as refused:
        await driver.create(too_small, MiB, image=image)
    assert refused.value.reason is GuestFailure.DISK_TOO_SMALL
    assert not any(too_small in name for name in os.listdir(tmp_path / "volumes"))


async def test_a_clone_copies_another_volume(tmp_path: Path, image: CachedImage) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    source = await driver.create(new_uid(), 4 * MiB, image=image)
    clone = await driver.create(new_uid(), 6 * MiB, clone_of=source.uid)
    assert clone.size_bytes == 6 * MiB
    assert "backing-filename" not in info(Path(clone.location))
    assert same_content(Path(source.location), Path(clone.location))

    with pytest.raises(ProvisioningError) as missing:
        await driver.create(new_uid(), 4 * MiB, clone_of=new_uid())
    assert missing.value.reason is GuestFailure.VOLUME_NOT_FOUND


async def test_grow_never_shrinks(tmp_path: Path) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    uid = new_uid()
    await driver.create(uid, 2 * MiB)
    grown = await driver.grow(uid, 5 * MiB)
    assert grown.size_bytes == 5 * MiB == info(Path(grown.location))["virtual-size"]
    with pytest.raises(ProvisioningError) as refused:
        await driver.grow(uid, MiB)
    assert refused.value.reason is GuestFailure.DISK_TOO_SMALL


async def test_files_that_reach_outside_themselves_are_never_attached(tmp_path: Path) -> None:
    directory = tmp_path / "volumes"
    driver = FileVolumeDriver(directory)
    directory.mkdir()
    backed, with_data_file = new_uid(), new_uid()
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "-u",
             str(directory / naming.volume_file(backed)), "1M")  # fmt: skip
    qcow2_naming_data_file(directory / naming.volume_file(with_data_file), "/etc/passwd")
    for uid in (backed, with_data_file):
        with pytest.raises(ProvisioningError) as refused:
            await driver.attach(uid, None)
        assert refused.value.reason is GuestFailure.VOLUME_HAS_EXTERNAL_REFERENCE
        # Nor cloned.
        with pytest.raises(ProvisioningError):
            await driver.create(new_uid(), 4 * MiB, clone_of=uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to a guest's user needs root")
async def test_ownership_follows_the_guest(tmp_path: Path) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    uid = new_uid()
    stored = await driver.create(uid, MiB)
    path = Path(stored.location)
    owner = GuestOwner(uid=1_900_000_123, gid=1_900_000_123)
    attachment = await driver.attach(uid, owner)
    assert (attachment.path, attachment.format, attachment.serial) == (
        str(path), "qcow2", disk_serial(uid)
    )  # fmt: skip
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (owner.uid, owner.gid, 0o600)
    await driver.detach(uid)
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)


async def until_state(manager: VolumeManager, uid: str, state: NodeVolumeState) -> None:
    for _ in range(1000):
        status = manager.status(uid)
        if status is not None and status.state is state:
            return
        if status is not None and status.state is NodeVolumeState.FAILED:
            raise AssertionError(f"volume failed: {status}")
        await asyncio.sleep(0.01)
    raise AssertionError(f"volume {uid} never {state}: {manager.status(uid)}")


async def test_the_manager_over_files_survives_a_restart(
    tmp_path: Path, image: CachedImage
) -> None:
    directory = tmp_path / "volumes"
    book = AttachmentBook(directory / "attachments.json")

    def manager() -> VolumeManager:
        return VolumeManager(
            FileVolumeDriver(directory), OneImage(image), EventHub(), node="n", book=book
        )

    first = manager()
    await first.start()
    ref = {"uid": image.uid, "name": "img", "url": "http://127.0.0.1/i"}
    copied = NodeVolumeSpec.model_validate(volume_spec(sizeBytes=4 * MiB, source={"image": ref}))
    blank = NodeVolumeSpec.model_validate(volume_spec(sizeBytes=MiB))
    for spec in (copied, blank):
        await first.ensure(spec)
    for spec in (copied, blank):
        await until_state(first, spec.uid, NodeVolumeState.AVAILABLE)
    grown = copied.model_copy(update={"generation": 2, "size_bytes": 6 * MiB})
    await first.ensure(grown)
    await until_state(first, copied.uid, NodeVolumeState.AVAILABLE)
    assert (status := first.status(copied.uid)) and status.size_bytes == 6 * MiB
    guest = new_uid()
    await first.use(guest, [copied.uid], None)
    await first.stop()

    second = manager()
    await second.start()
    inventory = await second.inventory()
    assert sorted(v.uid for v in inventory.volumes) == sorted((copied.uid, blank.uid))
    sizes = {v.uid: (v.size_bytes, v.attached_to) for v in inventory.volumes}
    assert sizes == {copied.uid: (6 * MiB, [guest]), blank.uid: (MiB, [])}
    (pool,) = inventory.pools
    assert pool.used_bytes == 7 * MiB and 0 < pool.free_bytes <= pool.capacity_bytes

    with pytest.raises(VolumeInUseError):
        await second.delete(copied.uid)
    await second.release(guest)
    assert await second.delete(copied.uid) is True
    assert not (directory / naming.volume_file(copied.uid)).exists()
    assert await second.delete(copied.uid) is False
