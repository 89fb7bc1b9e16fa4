"""The LVM volume driver: each Volume is one thin logical volume in the node's thin pool,
`VG/volume-<uid>`, and each of its snapshots a thin snapshot, `VG/snap-<uid>`.

The volume group and its thin pool are the node admin's (agent config `storage.lvm`); the
agent makes neither. Names in the volume group are the truth, so what exists survives agent
restarts; anything being made is `<name>.partial` until it is whole. Which volume a snapshot
was taken of is a tag on it (`stratus-of=<volume uid>`), since a thin snapshot outlives its
origin.

Thin snapshots share blocks with their origin but stand alone: removing either leaves the
other whole. So a snapshot is taken while a guest writes (it is atomic: LVM suspends the
volume for it), a restore or a clone is a snapshot of the snapshot or the volume (no copy),
and a volume from an Image is written by `qemu-img convert` into a new thin volume.

A thin pool hands out blocks zeroed only when it is set to (`-Zy`, LVM's default); without
that, a new volume could read the blocks of a deleted one, so such a pool is refused.

A guest's QEMU opens the volume's block device (`/dev/VG/volume-<uid>`), which the driver
gives to the guest's own user while attached, as the file driver does with files.

Every lvm command runs as a subprocess (never in the event loop), with the configured
`--config` and the volume group named explicitly.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import grp
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from stratus_agent import process
from stratus_agent.base import (
    CachedImage,
    GuestOwner,
    ProgressListener,
    StoredSnapshot,
    StoredVolume,
    VolumeAttachment,
)
from stratus_agent.config import LvmConfig
from stratus_agent.drivers.storage import qemu_img
from stratus_agent.drivers.storage.file import make_private
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import PoolUsage, disk_serial

log = logging.getLogger(__name__)

_VOLUME, _SNAPSHOT, _PARTIAL = "volume-", "snap-", ".partial"
_TAG, _OF = "stratus", "stratus-of="
_FIELDS = "lv_name,lv_size,lv_attr,lv_tags,pool_lv,data_percent"
# lv_attr's 8th character: "Newly-allocated data blocks are overwritten with blocks of
# (z)eroes before use" (lvs(8)); its 1st is the volume type, `t` for a thin pool.
_ZEROES, _THIN_POOL = 7, "t"
# lvm(8)'s messages are English whatever the agent's locale; it complains about file
# descriptors it inherits from any parent (asyncio's), which says nothing about the command.
_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}

Runner = Callable[[tuple[str, ...]], Awaitable[str]]


@dataclass(frozen=True)
class LogicalVolume:
    """One row of `lvs`."""

    name: str
    size_bytes: int
    attr: str
    tags: frozenset[str]
    pool: str
    data_percent: float | None

    @property
    def volume_of(self) -> str | None:
        """The volume UID a snapshot's tag names."""
        return next((t.removeprefix(_OF) for t in self.tags if t.startswith(_OF)), None)


class LvmError(ProvisioningError):
    """An lvm command failed; `stderr` is its own message."""

    def __init__(self, reason: GuestFailure, message: str, stderr: str) -> None:
        super().__init__(reason, message)
        self.stderr = stderr


class LvmVolumeDriver:
    """Volumes as thin logical volumes of one volume group's thin pool."""

    def __init__(self, config: LvmConfig, *, run: Runner | None = None) -> None:
        """`run`: runs one lvm command (its arguments after `lvm`) and returns its stdout,
        raising process.CommandError (None: the real `lvm`)."""
        self.config = config
        self.vg, self.pool = config.volume_group, config.thin_pool
        self._run = run or self._lvm

    @property
    def backend(self) -> VolumeBackend:
        return VolumeBackend.LVM

    def device(self, name: str) -> Path:
        return Path("/dev") / self.vg / name

    # -- commands --------------------------------------------------------------------------

    async def _lvm(self, args: tuple[str, ...]) -> str:
        config = ("--config", self.config.config) if self.config.config else ()
        command, rest = args[0], args[1:]
        out = await process.run(
            "lvm", command, *config, *rest, timeout=self.config.timeout_seconds, env=_ENV
        )
        return out.stdout

    async def _lvm_or(self, failure: GuestFailure, what: str, *args: str) -> str:
        try:
            return await self._run(args)
        except process.CommandError as exc:
            lines = (line.strip() for line in exc.stderr.splitlines())
            said = " ".join(line for line in lines if line and not line.startswith("WARNING"))
            raise LvmError(failure, f"{what}: lvm {args[0]} failed: {said}", said) from None

    async def _lvs(self) -> dict[str, LogicalVolume]:
        """Every logical volume of the volume group, by name."""
        out = await self._lvm_or(
            GuestFailure.VOLUME_CREATE_FAILED, f"volume group {self.vg}",
            "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _FIELDS, self.vg,
        )  # fmt: skip
        found = {}
        for report in json.loads(out).get("report", []):
            for row in report.get("lv", []):
                percent = row.get("data_percent") or ""
                found[row["lv_name"]] = LogicalVolume(
                    name=row["lv_name"],
                    size_bytes=int(row["lv_size"] or 0),
                    attr=row.get("lv_attr", ""),
                    tags=frozenset(t for t in row.get("lv_tags", "").split(",") if t),
                    pool=row.get("pool_lv", ""),
                    data_percent=float(percent) if percent else None,
                )
        return found

    async def _thin_pool(self, lvs: dict[str, LogicalVolume]) -> LogicalVolume:
        pool = lvs.get(self.pool)
        if pool is None or not pool.attr.startswith(_THIN_POOL):
            what = "is not a thin pool" if pool is not None else "does not exist"
            raise ProvisioningError(
                GuestFailure.BACKEND_UNSUPPORTED,
                f"thin pool {self.vg}/{self.pool} {what}: make it with `lvcreate --type "
                f"thin-pool -l 90%FREE -n {self.pool} {self.vg}` (agent config storage.lvm)",
            )
        if len(pool.attr) <= _ZEROES or pool.attr[_ZEROES] != "z":
            raise ProvisioningError(
                GuestFailure.BACKEND_UNSUPPORTED,
                f"thin pool {self.vg}/{self.pool} does not zero new blocks, so a new volume "
                f"could read a deleted one's data: `lvchange --zero y {self.vg}/{self.pool}`",
            )
        return pool

    async def _activate(self, name: str) -> Path:
        """The logical volume active (thin snapshots are made with activation skipped) and
        its block device."""
        await self._lvm_or(
            GuestFailure.VOLUME_ATTACH_FAILED, f"activating {self.vg}/{name}",
            "lvchange", "--activate", "y", "--ignoreactivationskip", f"{self.vg}/{name}",
        )  # fmt: skip
        return self.device(name)

    async def _remove(self, name: str) -> None:
        try:
            await self._lvm_or(GuestFailure.VOLUME_IN_USE, f"removing {self.vg}/{name}",
                               "lvremove", "--yes", f"{self.vg}/{name}")  # fmt: skip
        except LvmError as exc:
            if "Failed to find logical volume" not in exc.stderr:
                raise

    async def _remove_whole(self, name: str) -> bool:
        """Remove a volume or snapshot and a crashed attempt's partial of it; True if the
        whole one was there."""
        lvs = await self._lvs()
        if name + _PARTIAL in lvs:
            await self._remove(name + _PARTIAL)
        if name not in lvs:
            return False
        await self._remove(name)
        return True

    async def _extend(self, name: str, size_bytes: int) -> None:
        await self._lvm_or(
            GuestFailure.VOLUME_CREATE_FAILED, f"growing {self.vg}/{name}",
            "lvextend", "--size", f"{size_bytes}b", f"{self.vg}/{name}",
        )  # fmt: skip

    async def _thin_snapshot(self, origin: str, name: str, *tags: str) -> None:
        await self._lvm_or(
            GuestFailure.VOLUME_CREATE_FAILED, f"snapshot of {self.vg}/{origin}",
            "lvcreate", "--yes", "--snapshot", "--name", name, "--addtag", _TAG,
            *(a for tag in tags for a in ("--addtag", tag)), f"{self.vg}/{origin}",
        )  # fmt: skip

    async def _rename(self, old: str, new: str) -> None:
        await self._lvm_or(GuestFailure.VOLUME_CREATE_FAILED, f"naming {self.vg}/{new}",
                           "lvrename", self.vg, old, new)  # fmt: skip

    # -- volumes ---------------------------------------------------------------------------

    async def create(
        self,
        uid: str,
        size_bytes: int,
        *,
        image: CachedImage | None = None,
        clone_of: str | None = None,
        snapshot_of: str | None = None,
        progress: ProgressListener | None = None,
        shareable: bool = False,
    ) -> StoredVolume:
        if shareable:
            raise ProvisioningError(
                GuestFailure.BACKEND_UNSUPPORTED, f"{self.backend} volumes are not shareable"
            )
        name = naming.lvm_volume(uid)
        lvs = await self._lvs()
        if name in lvs:
            return self._stored(uid, lvs[name])
        await self._thin_pool(lvs)
        partial = name + _PARTIAL
        if partial in lvs:
            await self._remove(partial)  # a crashed attempt's
        if progress is not None:
            progress(0)
        if clone_of is not None or snapshot_of is not None:
            origin = self._origin(lvs, clone_of, snapshot_of)
            _not_smaller(size_bytes, origin.size_bytes)
            await self._thin_snapshot(origin.name, partial)
            if size_bytes > origin.size_bytes:
                await self._extend(partial, size_bytes)
        else:
            if image is not None:
                _not_smaller(size_bytes, image.virtual_size)
            await self._lvm_or(
                GuestFailure.VOLUME_CREATE_FAILED, f"volume {uid}",
                "lvcreate", "--yes", "--type", "thin", "--virtualsize", f"{size_bytes}b",
                "--thinpool", f"{self.vg}/{self.pool}", "--name", partial, "--addtag", _TAG,
            )  # fmt: skip
            if image is not None:
                await self._write_image(partial, image, progress)
        await self._rename(partial, name)
        if progress is not None:
            progress(100)
        made = (await self._lvs()).get(name)
        if made is None:
            raise ProvisioningError(GuestFailure.VOLUME_CREATE_FAILED, f"{name} vanished")
        return self._stored(uid, made)

    def _origin(
        self, lvs: dict[str, LogicalVolume], clone_of: str | None, snapshot_of: str | None
    ) -> LogicalVolume:
        if clone_of is not None:
            found, what = lvs.get(naming.lvm_volume(clone_of)), f"source volume {clone_of}"
        else:
            assert snapshot_of is not None
            found, what = lvs.get(naming.lvm_snapshot(snapshot_of)), f"snapshot {snapshot_of}"
        if found is None:
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"{what} is not in {self.vg} on this node"
            )
        return found

    async def _write_image(
        self, name: str, image: CachedImage, progress: ProgressListener | None
    ) -> None:
        """The cached image's data, raw, onto the new thin volume: -n, the device exists;
        -f: the cached image's format is known, never probed; --target-is-zero: a thin
        pool zeroes new blocks, so zeroes need not be written (they stay unallocated)."""
        device = await self._activate(name)
        args = ("-n", "--target-is-zero", "-f", image.format, "-O", "raw",
                str(image.path), str(device))  # fmt: skip
        try:
            await qemu_img.convert(args, progress)
        except Exception as exc:
            await self._remove(name)
            raise ProvisioningError(
                GuestFailure.VOLUME_CREATE_FAILED, f"writing image {image.uid}: {exc}"
            ) from exc

    async def grow(self, uid: str, size_bytes: int) -> StoredVolume:
        """`lvextend`, which works while a guest holds the volume open too (its QEMU is then
        told with ComputeDriver.resize_disk)."""
        name = naming.lvm_volume(uid)
        current = (await self._lvs()).get(name)
        if current is None:
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not in {self.vg}"
            )
        if size_bytes < current.size_bytes:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"volume is {current.size_bytes} bytes; shrinking it to {size_bytes} would "
                "lose data",
            )
        if size_bytes > current.size_bytes:
            await self._extend(name, size_bytes)
            current = (await self._lvs())[name]
        return self._stored(uid, current)

    async def remove(self, uid: str) -> bool:
        return await self._remove_whole(naming.lvm_volume(uid))

    async def list(self) -> list[StoredVolume]:
        lvs = await self._lvs()
        found = [self._stored(uid, lv) for lv in lvs.values()
                 if (uid := _uid(lv.name, _VOLUME))]  # fmt: skip
        return sorted(found, key=lambda volume: volume.uid)

    def _stored(self, uid: str, lv: LogicalVolume) -> StoredVolume:
        return StoredVolume(uid=uid, size_bytes=lv.size_bytes, location=f"{self.vg}/{lv.name}")

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot(
        self, volume_uid: str, snapshot_uid: str, *, progress: ProgressListener | None = None
    ) -> StoredSnapshot:
        """A thin snapshot, tagged with its volume: atomic, so taken while a guest writes."""
        name, volume = naming.lvm_snapshot(snapshot_uid), naming.lvm_volume(volume_uid)
        lvs = await self._lvs()
        if name not in lvs:
            if volume not in lvs:
                raise ProvisioningError(
                    GuestFailure.VOLUME_NOT_FOUND, f"volume {volume_uid} is not in {self.vg}"
                )
            if progress is not None:
                progress(0)
            if name + _PARTIAL in lvs:
                await self._remove(name + _PARTIAL)
            await self._thin_snapshot(volume, name + _PARTIAL, _OF + volume_uid)
            await self._rename(name + _PARTIAL, name)
            if progress is not None:
                progress(100)
            lvs = await self._lvs()
        return self._stored_snapshot(snapshot_uid, lvs[name])

    async def remove_snapshot(self, snapshot_uid: str) -> bool:
        return await self._remove_whole(naming.lvm_snapshot(snapshot_uid))

    async def list_snapshots(self) -> builtins.list[StoredSnapshot]:
        lvs = await self._lvs()
        found = [self._stored_snapshot(uid, lv) for lv in lvs.values()
                 if (uid := _uid(lv.name, _SNAPSHOT))]  # fmt: skip
        return sorted(found, key=lambda snapshot: snapshot.uid)

    def _stored_snapshot(self, uid: str, lv: LogicalVolume) -> StoredSnapshot:
        return StoredSnapshot(
            uid=uid, volume_uid=lv.volume_of, size_bytes=lv.size_bytes,
            location=f"{self.vg}/{lv.name}",
        )  # fmt: skip

    # -- guests ----------------------------------------------------------------------------

    async def attach(self, uid: str, owner: GuestOwner | None) -> VolumeAttachment:
        name = naming.lvm_volume(uid)
        if name not in await self._lvs():
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not in {self.vg} on this node"
            )
        device = await self._activate(name)
        if owner is not None:
            # The node behind the /dev/VG/LV link (/dev/dm-N): what QEMU opens.
            await asyncio.to_thread(make_private, device.resolve(), owner)
        return VolumeAttachment(
            name=uid, path=str(device), format="raw", serial=disk_serial(uid), block=True
        )

    async def detach(self, uid: str) -> None:
        device = self.device(naming.lvm_volume(uid))
        with contextlib.suppress(FileNotFoundError):  # removed or inactive: nothing to give
            await asyncio.to_thread(_give_back, device.resolve(strict=True))

    async def usage(self) -> PoolUsage:
        """The thin pool's size and unallocated blocks; used is the provisioned size of the
        volumes and snapshots (a thin pool may promise more than it holds)."""
        lvs = await self._lvs()
        pool = await self._thin_pool(lvs)
        used = sum(lv.size_bytes for lv in lvs.values()
                   if _uid(lv.name, _VOLUME) or _uid(lv.name, _SNAPSHOT))  # fmt: skip
        allocated = int(pool.size_bytes * (pool.data_percent or 0.0) / 100)
        return PoolUsage(
            backend=self.backend,
            capacity_bytes=pool.size_bytes,
            used_bytes=used,
            free_bytes=max(0, pool.size_bytes - allocated),
            pool=f"{self.vg}/{self.pool}",
        )


def _uid(name: str, prefix: str) -> str | None:
    """The UID in a whole volume's or snapshot's name (a partial one's ends in .partial)."""
    uid = name.removeprefix(prefix)
    return uid if name.startswith(prefix) and naming.is_uid(uid) else None


def _not_smaller(size_bytes: int, source_bytes: int) -> None:
    if size_bytes < source_bytes:
        raise ProvisioningError(
            GuestFailure.DISK_TOO_SMALL,
            f"volume of {size_bytes} bytes is smaller than its source's virtual size of "
            f"{source_bytes} bytes",
        )


def _give_back(device: Path) -> None:
    """Back to udev's default for a disk: root and the disk group, no guest user."""
    try:
        disk_gid = grp.getgrnam("disk").gr_gid
    except KeyError:
        disk_gid = 0
    st = device.stat()
    if (st.st_uid, st.st_gid) != (0, disk_gid):
        os.chown(device, 0, disk_gid)
    device.chmod(0o660)
