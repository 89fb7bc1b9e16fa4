"""Snapshots of file volumes with real qemu-img: standalone qcow2 copies under
volumes/snapshots, and volumes restored from them.

No libvirt here: the driver, and the volume and snapshot managers over it as the agent
assembles them. A guest holding a volume open is stood in for by qemu-io, which takes the
same image lock a guest's QEMU does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stratus_agent.api.events import EventHub
from stratus_agent.base import CachedImage, Released
from stratus_agent.drivers.storage.file_volumes import FileVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.snapshots import SnapshotManager
from stratus_agent.manager.volumes import AttachmentBook, VolumeManager
from stratus_api.imageref import ImageRef
from stratus_api.reasons import GuestFailure
from stratus_api.volume_wire import (
    NodeSnapshotSpec,
    NodeSnapshotState,
    NodeVolumeSpec,
    NodeVolumeState,
)
from testsupport import until, volume_spec

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="needs qemu-img and qemu-io",
)

MiB = 2**20
ORIGINAL = (b"stratus-snapshot-original!" * 4000)[: 96 * 1024]
CHANGED = (b"CHANGED-after-the-snapshot" * 4000)[: 96 * 1024]


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def info(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(qemu_img("info", "--output=json", str(path)))
    return result


def write(volume: Path, data: bytes, scratch: Path) -> None:
    """Write `data` at the start of the qcow2 `volume`, as a guest would (the rest kept)."""
    raw = scratch / "write.raw"
    raw.write_bytes(data)
    # Through qemu-io, which writes into the existing image instead of replacing it.
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -s {raw} 0 {len(data)}", str(volume)],
        check=True, capture_output=True,
    )  # fmt: skip


def read(volume: Path, scratch: Path) -> bytes:
    """Every guest-visible byte of the qcow2 `volume`."""
    raw = scratch / "read.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(volume), str(raw))
    return raw.read_bytes()


def new_uid() -> str:
    return str(uuid.uuid4())


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


async def test_a_restore_reads_back_the_data_as_it_was_when_taken(tmp_path: Path) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    volume = await driver.create(new_uid(), 4 * MiB)
    write(Path(volume.location), ORIGINAL, tmp_path)

    snap = new_uid()
    seen: list[int] = []
    taken = await driver.snapshot(volume.uid, snap, progress=seen.append)
    path = tmp_path / "volumes" / "snapshots" / f"{snap}.qcow2"
    assert (taken.uid, taken.volume_uid, taken.size_bytes, taken.location) == (
        snap, volume.uid, 4 * MiB, str(path)
    )  # fmt: skip
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen)
    # Standalone, private to the agent, never reachable by a guest's QEMU user.
    details = info(path)
    assert details["format"] == "qcow2" and "backing-filename" not in details
    assert "data-file" not in details["format-specific"]["data"]
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), os.getegid(), 0o600)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert leftovers(path.parent) == [f"{snap}.json", f"{snap}.qcow2"]

    # The volume changes and grows; the snapshot does not.
    write(Path(volume.location), CHANGED, tmp_path)
    await driver.grow(volume.uid, 6 * MiB)
    assert await driver.snapshot(volume.uid, snap) == taken  # kept as it is
    original = ORIGINAL + b"\0" * (4 * MiB - len(ORIGINAL))
    assert read(path, tmp_path) == original

    restored = await driver.create(new_uid(), 4 * MiB, snapshot_of=snap)
    assert read(Path(restored.location), tmp_path) == original
    assert "backing-filename" not in info(Path(restored.location))
    bigger = await driver.create(new_uid(), 8 * MiB, snapshot_of=snap)
    assert bigger.size_bytes == 8 * MiB
    assert read(Path(bigger.location), tmp_path) == original + b"\0" * (4 * MiB)
    assert read(Path(volume.location), tmp_path)[: len(CHANGED)] == CHANGED

    smaller = new_uid()
    with pytest.raises(ProvisioningError) as refused:
        await driver.create(smaller, 2 * MiB, snapshot_of=snap)
    assert refused.value.reason is GuestFailure.DISK_TOO_SMALL
    assert not any(smaller in name for name in leftovers(tmp_path / "volumes"))

    # Counted in the pool: 6 + 4 + 8 MiB of volumes, 4 MiB of snapshot.
    assert (await driver.usage()).used_bytes == 22 * MiB


async def test_a_snapshot_outlives_its_volume_and_a_restart_knows_where_it_came_from(
    tmp_path: Path,
) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    volume = await driver.create(new_uid(), 2 * MiB)
    write(Path(volume.location), ORIGINAL, tmp_path)
    snap = await driver.snapshot(volume.uid, new_uid())
    assert await driver.remove(volume.uid) is True

    restarted = FileVolumeDriver(tmp_path / "volumes")
    assert await restarted.list() == []
    assert await restarted.list_snapshots() == [snap]
    restored = await restarted.create(new_uid(), 2 * MiB, snapshot_of=snap.uid)
    assert read(Path(restored.location), tmp_path)[: len(ORIGINAL)] == ORIGINAL

    assert await restarted.remove_snapshot(snap.uid) is True
    assert leftovers(tmp_path / "volumes" / "snapshots") == []
    assert await restarted.remove_snapshot(snap.uid) is False
    with pytest.raises(ProvisioningError) as gone:
        await restarted.create(new_uid(), 2 * MiB, snapshot_of=snap.uid)
    assert gone.value.reason is GuestFailure.VOLUME_NOT_FOUND and snap.uid in str(gone.value)
    assert gone.value.transient


@pytest.fixture
def failing_convert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """qemu-img whose `convert` writes its output whole, then fails (a disk error at the
    very end): the partial file exists when the failure comes."""
    real = shutil.which("qemu-img")
    shim = tmp_path / "shim"
    shim.mkdir()
    script = shim / "qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = convert ]; then {real} "$@"; echo "simulated I/O error" >&2; exit 1; fi\n'
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    yield


async def test_a_failed_snapshot_leaves_nothing_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_convert: None
) -> None:
    driver = FileVolumeDriver(tmp_path / "volumes")
    snapshots = tmp_path / "volumes" / "snapshots"
    with pytest.raises(ProvisioningError) as missing:
        await driver.snapshot(new_uid(), new_uid())
    assert missing.value.reason is GuestFailure.VOLUME_NOT_FOUND
    assert leftovers(snapshots) == []

    volume = await driver.create(new_uid(), 2 * MiB)
    snap = new_uid()
    snapshots.mkdir(mode=0o700)
    (snapshots / f".{snap}.qcow2.partial").write_bytes(b"a crashed attempt's")
    with pytest.raises(ProvisioningError) as failed:
        await driver.snapshot(volume.uid, snap)
    assert failed.value.reason is GuestFailure.VOLUME_CREATE_FAILED
    assert "simulated I/O error" in str(failed.value)
    assert leftovers(snapshots) == [] and await driver.list_snapshots() == []

    monkeypatch.undo()  # the real qemu-img again: the same snapshot is taken
    assert (await driver.snapshot(volume.uid, snap)).uid == snap


@pytest.fixture
def hold_open() -> Iterator[Callable[[Path], None]]:
    """Opens a qcow2 for writing the way a running guest's QEMU does (qemu-io), with its
    image lock, until the test ends."""
    holders: list[subprocess.Popen[bytes]] = []

    def hold(path: Path) -> None:
        errors = path.with_name(f"{path.name}.qemu-io.err")
        with errors.open("wb") as sink:
            holder = subprocess.Popen(
                ["qemu-io", "-f", "qcow2", str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=sink,
            )  # fmt: skip
        holders.append(holder)
        # Until the lock is taken: seconds on a loaded machine. Read from /proc/locks (QEMU
        # takes OFD locks on the file): a probe with qemu-img would lock the image itself,
        # and a qemu-io starting meanwhile failed to get its write lock.
        inode = f":{path.stat().st_ino} "
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            locks = Path("/proc/locks").read_text().splitlines()
            if any("OFDLCK" in line and inode in line for line in locks):
                return
            if holder.poll() is not None:
                raise AssertionError(f"qemu-io exited {holder.returncode}: {errors.read_text()}")
            time.sleep(0.01)
        raise AssertionError(f"qemu-io never locked {path}")

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


async def test_a_volume_some_qemu_holds_open_is_never_copied(
    tmp_path: Path, hold_open: Callable[[Path], None]
) -> None:
    """The manager refuses a volume a guest uses; should a QEMU hold one it does not know
    of, qemu-img's image lock refuses it too, and nothing half made is left."""
    driver = FileVolumeDriver(tmp_path / "volumes")
    volume = await driver.create(new_uid(), 2 * MiB)
    hold_open(Path(volume.location))
    with pytest.raises(ProvisioningError) as locked:
        await driver.snapshot(volume.uid, new_uid())
    assert locked.value.reason is GuestFailure.VOLUME_CREATE_FAILED
    assert "lock" in str(locked.value)
    assert leftovers(tmp_path / "volumes" / "snapshots") == []


class NoImages:
    """An ImageStore that is never asked for an image."""

    async def ensure(self, ref: ImageRef) -> CachedImage:
        raise AssertionError("no image expected")

    async def release(self, image_uid: str) -> Released:
        return Released(evicted=False, in_use=False)

    async def collect(self) -> list[str]:
        return []


def snapshot_spec(volume: str, **overrides: Any) -> NodeSnapshotSpec:
    spec = {"uid": new_uid(), "name": "snap", "namespace": "team-a", "generation": 1,
            "backend": "file", "volume": volume}  # fmt: skip
    return NodeSnapshotSpec.model_validate({**spec, **overrides})


async def test_the_managers_snapshot_and_restore_files_across_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "volumes"
    book = AttachmentBook(directory / "attachments.json")

    async def started() -> tuple[VolumeManager, SnapshotManager]:
        driver, hub = FileVolumeDriver(directory), EventHub()
        volumes = VolumeManager(driver, NoImages(), hub, node="n", book=book)
        snapshots = SnapshotManager(driver, volumes, hub)
        await volumes.start()
        await snapshots.start()
        return volumes, snapshots

    async def available(volumes: VolumeManager, spec: NodeVolumeSpec) -> Path:
        await volumes.ensure(spec)
        await until("Available", lambda: (s := volumes.status(spec.uid)) is not None
                    and s.state is NodeVolumeState.AVAILABLE, timeout=30)  # fmt: skip
        status = volumes.status(spec.uid)
        assert status is not None and status.location is not None
        return Path(status.location)

    volumes, snapshots = await started()
    volume = NodeVolumeSpec.model_validate(volume_spec(sizeBytes=2 * MiB))
    location = await available(volumes, volume)
    write(location, ORIGINAL, tmp_path)

    await volumes.use("guest-a", [volume.uid], None)
    spec = snapshot_spec(volume.uid)
    await snapshots.ensure(spec)
    await until("Failed", lambda: (s := snapshots.status(spec.uid)) is not None
                and s.state is NodeSnapshotState.FAILED)  # fmt: skip
    assert leftovers(directory / "snapshots") == []
    await volumes.release("guest-a")
    await snapshots.ensure(spec)
    await until("Ready", lambda: (s := snapshots.status(spec.uid)) is not None
                and s.state is NodeSnapshotState.READY, timeout=30)  # fmt: skip
    write(location, CHANGED, tmp_path)
    await snapshots.stop()
    await volumes.stop()

    volumes, snapshots = await started()
    (adopted,) = snapshots.inventory()
    assert (adopted.uid, adopted.state, adopted.volume, adopted.size_bytes) == (
        spec.uid, NodeSnapshotState.READY, volume.uid, 2 * MiB
    )  # fmt: skip
    restore = NodeVolumeSpec.model_validate(
        volume_spec(sizeBytes=3 * MiB, source={"snapshot": spec.uid})
    )
    restored = await available(volumes, restore)
    assert read(restored, tmp_path)[: len(ORIGINAL)] == ORIGINAL
    assert await snapshots.delete(spec.uid) is True
    assert leftovers(directory / "snapshots") == []
    await asyncio.gather(snapshots.stop(), volumes.stop())
