"""The file volume driver: each Volume is one standalone qcow2 file, `<uid>.qcow2`, and
each of its snapshots another, `snapshots/<snapshot uid>.qcow2`.

Standalone means no backing file and no external data file: a volume outlives the image it
was copied from and every guest it was attached to, so it must not depend on any other
file. That is checked with our own header reader before a guest is given the file. A
snapshot is a full copy, not a qcow2 internal snapshot or an overlay: the volume can be
deleted, grown or attached again without touching it, and a restore is one more copy.

Unattached volumes are the agent's (root's), 0600; attached ones belong to the guest's own
QEMU user, 0600, as its root disk does. Snapshots are never given to a guest: root's, 0600,
in a 0700 directory. What exists is read from the directory itself, so it survives agent
restarts; a volume or snapshot being made is `.<uid>.qcow2.partial` until it is whole.

Which volume a snapshot was taken of is kept in a record beside it, `<snapshot uid>.json`,
so the data file keeps the name of its UID alone (found without a scan). The record is in
place before the data file gets its name and goes after the data file does, so whole data
always has its record; a record without data is left over from a crash and ignored.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
from collections.abc import Sequence
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
from stratus_agent.drivers.formats import qcow2
from stratus_agent.drivers.storage import qemu_img
from stratus_agent.drivers.storage.file import make_private
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import PoolUsage, disk_serial

log = logging.getLogger(__name__)

_SUFFIX = ".qcow2"  # naming.volume_file, naming.snapshot_file
_RECORD_SUFFIX = ".json"  # beside a snapshot: the volume it was taken of


class FileVolumeDriver:
    """Volumes as files under one directory (state_dir/volumes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.snapshots = directory / "snapshots"

    @property
    def backend(self) -> VolumeBackend:
        return VolumeBackend.FILE

    def path(self, uid: str) -> Path:
        return self.directory / naming.volume_file(uid)

    def _partial(self, uid: str) -> Path:
        return self.directory / f".{naming.volume_file(uid)}.partial"

    def snapshot_path(self, uid: str) -> Path:
        return self.snapshots / naming.snapshot_file(uid)

    def _snapshot_partial(self, uid: str) -> Path:
        return self.snapshots / f".{naming.snapshot_file(uid)}.partial"

    def _snapshot_record(self, uid: str) -> Path:
        return self.snapshot_path(uid).with_suffix(_RECORD_SUFFIX)

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
        path = self.path(uid)
        if await asyncio.to_thread(path.exists):
            return await self._stored(uid)
        source: tuple[Path, str] | None = None
        if image is not None:
            source = (image.path, image.format)
        elif clone_of is not None:
            source = (await self._source_volume(clone_of), "qcow2")
        elif snapshot_of is not None:
            source = (await self._source_snapshot(snapshot_of), "qcow2")
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        partial = self._partial(uid)
        try:
            await asyncio.to_thread(partial.unlink, missing_ok=True)  # a crashed attempt's
            if source is None:
                await process.run("qemu-img", "create", "-q", "-f", "qcow2", str(partial),
                                  str(size_bytes))  # fmt: skip
            else:
                await self._copy(source, partial, size_bytes, progress)
            await asyncio.to_thread(self._check_standalone, partial)
            await asyncio.to_thread(_give_back, partial)
            await asyncio.to_thread(partial.replace, path)
        except process.CommandError as exc:
            raise ProvisioningError(GuestFailure.VOLUME_CREATE_FAILED, str(exc)) from exc
        finally:
            partial.unlink(missing_ok=True)  # blocking but short; also runs when cancelled
        return await self._stored(uid)

    async def _source_volume(self, uid: str) -> Path:
        source = self.path(uid)
        if not await asyncio.to_thread(source.exists):
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"source volume {uid} is not on this node"
            )
        await asyncio.to_thread(self._check_standalone, source)
        return source

    async def _source_snapshot(self, uid: str) -> Path:
        source = self.snapshot_path(uid)
        if not await asyncio.to_thread(source.exists):
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND,
                f"snapshot {uid} is not on this node (not taken yet, failed or deleted)",
            )
        await asyncio.to_thread(self._check_standalone, source)
        return source

    async def _copy(
        self,
        source: tuple[Path, str],
        target: Path,
        size_bytes: int | None,
        progress: ProgressListener | None,
    ) -> None:
        """A standalone qcow2 copy of `source` at `target`, grown to `size_bytes` (None:
        the source's own size)."""
        path, fmt = source
        virtual_size = await asyncio.to_thread(_virtual_size, path, fmt)
        if size_bytes is None:
            size_bytes = virtual_size
        if size_bytes < virtual_size:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"volume of {size_bytes} bytes is smaller than its source's virtual size of "
                f"{virtual_size} bytes",
            )
        if progress is not None:
            progress(0)
        # -f: the format is known, never probed; no -B: the copy has no backing file.
        await qemu_img.convert(("-f", fmt, "-O", "qcow2", str(path), str(target)), progress)
        if size_bytes > virtual_size:
            await process.run("qemu-img", "resize", "-q", "-f", "qcow2", str(target),
                              str(size_bytes))  # fmt: skip
        if progress is not None:
            progress(100)

    def _check_standalone(self, path: Path) -> None:
        """Refuse a file that is not qcow2 or that would make QEMU open another file."""
        try:
            header = qcow2.read_header(path)
        except (OSError, qcow2.Qcow2Error) as exc:
            raise ProvisioningError(
                GuestFailure.VOLUME_HAS_EXTERNAL_REFERENCE, f"{path.name}: unreadable: {exc}"
            ) from exc
        if header is None:
            raise ProvisioningError(
                GuestFailure.VOLUME_HAS_EXTERNAL_REFERENCE, f"{path.name} is not qcow2"
            )
        references = header.external_references()
        if references:
            raise ProvisioningError(
                GuestFailure.VOLUME_HAS_EXTERNAL_REFERENCE,
                f"{path.name} refers to {', '.join(references)}",
            )

    async def grow(self, uid: str, size_bytes: int) -> StoredVolume:
        """`qemu-img resize` of the file, which must not be open: a running guest's QEMU
        holds its lock, and the resize fails (online growth needs the compute driver)."""
        current = await self._stored(uid)
        if size_bytes < current.size_bytes:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"volume is {current.size_bytes} bytes; shrinking it to {size_bytes} would "
                "lose data",
            )
        if size_bytes > current.size_bytes:
            try:
                await process.run("qemu-img", "resize", "-q", "-f", "qcow2",
                                  str(self.path(uid)), str(size_bytes))  # fmt: skip
            except process.CommandError as exc:
                raise ProvisioningError(GuestFailure.VOLUME_CREATE_FAILED, str(exc)) from exc
        return await self._stored(uid)

    async def remove(self, uid: str) -> bool:
        def unlink() -> bool:
            self._partial(uid).unlink(missing_ok=True)
            try:
                self.path(uid).unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(unlink)

    async def list(self) -> list[StoredVolume]:
        return [*await asyncio.to_thread(self._list_now)]

    def _list_now(self) -> Sequence[StoredVolume]:
        found = []
        try:
            entries = [*os.scandir(self.directory)]
        except FileNotFoundError:
            return []
        for entry in entries:
            uid = entry.name.removesuffix(_SUFFIX)
            if not entry.name.endswith(_SUFFIX) or not naming.is_uid(uid):
                continue  # partials start with a dot
            try:
                found.append(_stored_now(Path(entry.path), uid))
            except (OSError, qcow2.Qcow2Error) as exc:
                log.warning("volumes: cannot read %s: %s", entry.path, exc)
        return sorted(found, key=lambda volume: volume.uid)

    async def _stored(self, uid: str) -> StoredVolume:
        return await asyncio.to_thread(_stored_now, self.path(uid), uid)

    # -- snapshots ---------------------------------------------------------------------

    async def snapshot(
        self, volume_uid: str, snapshot_uid: str, *, progress: ProgressListener | None = None
    ) -> StoredSnapshot:
        """A standalone qcow2 copy of the volume (`qemu-img convert`, which also refuses a
        file another QEMU holds open for writing: its image lock)."""
        path = self.snapshot_path(snapshot_uid)
        if await asyncio.to_thread(path.exists):
            return await asyncio.to_thread(self._stored_snapshot_now, snapshot_uid)
        source = await self._source_volume(volume_uid)
        # 0700: no guest's QEMU ever opens a snapshot, so none needs to pass through.
        await asyncio.to_thread(self.snapshots.mkdir, mode=0o700, parents=True, exist_ok=True)
        partial = self._snapshot_partial(snapshot_uid)
        record = self._snapshot_record(snapshot_uid)
        try:
            await asyncio.to_thread(partial.unlink, missing_ok=True)  # a crashed attempt's
            await self._copy((source, "qcow2"), partial, None, progress)
            await asyncio.to_thread(self._check_standalone, partial)
            await asyncio.to_thread(_give_back, partial)
            await asyncio.to_thread(_write_record, record, volume_uid)
            await asyncio.to_thread(partial.replace, path)
        except process.CommandError as exc:
            raise ProvisioningError(GuestFailure.VOLUME_CREATE_FAILED, str(exc)) from exc
        finally:
            # Blocking but short; also runs when cancelled.
            partial.unlink(missing_ok=True)
            if not path.exists():
                record.unlink(missing_ok=True)
        return await asyncio.to_thread(self._stored_snapshot_now, snapshot_uid)

    async def remove_snapshot(self, snapshot_uid: str) -> bool:
        def unlink() -> bool:
            self._snapshot_partial(snapshot_uid).unlink(missing_ok=True)
            try:
                self.snapshot_path(snapshot_uid).unlink()
            except FileNotFoundError:
                existed = False
            else:
                existed = True
            self._snapshot_record(snapshot_uid).unlink(missing_ok=True)  # after its data
            return existed

        return await asyncio.to_thread(unlink)

    async def list_snapshots(self) -> builtins.list[StoredSnapshot]:
        return [*await asyncio.to_thread(self._list_snapshots_now)]

    def _list_snapshots_now(self) -> Sequence[StoredSnapshot]:
        found = []
        try:
            entries = [*os.scandir(self.snapshots)]
        except FileNotFoundError:
            return []
        for entry in entries:
            uid = entry.name.removesuffix(_SUFFIX)
            if not entry.name.endswith(_SUFFIX) or not naming.is_uid(uid):
                continue  # partials start with a dot; records end in .json
            try:
                found.append(self._stored_snapshot_now(uid))
            except (OSError, qcow2.Qcow2Error) as exc:
                log.warning("snapshots: cannot read %s: %s", entry.path, exc)
        return sorted(found, key=lambda snapshot: snapshot.uid)

    def _stored_snapshot_now(self, uid: str) -> StoredSnapshot:
        path = self.snapshot_path(uid)
        header = qcow2.read_header(path)
        if header is None:
            raise qcow2.Qcow2Error(f"{path.name} is not qcow2")
        return StoredSnapshot(
            uid=uid,
            volume_uid=_read_record(self._snapshot_record(uid)),
            size_bytes=header.virtual_size,
            location=str(path),
        )

    async def attach(self, uid: str, owner: GuestOwner | None) -> VolumeAttachment:
        path = self.path(uid)
        if not await asyncio.to_thread(path.exists):
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not on this node"
            )
        await asyncio.to_thread(self._check_standalone, path)
        if owner is not None:
            await asyncio.to_thread(make_private, path, owner)
        return VolumeAttachment(name=uid, path=str(path), format="qcow2", serial=disk_serial(uid))

    async def detach(self, uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: nothing to give
            await asyncio.to_thread(_give_back, self.path(uid))

    async def usage(self) -> PoolUsage:
        volumes, snapshots = await self.list(), await self.list_snapshots()
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        fs = await asyncio.to_thread(os.statvfs, self.directory)
        used = sum(v.size_bytes for v in volumes) + sum(s.size_bytes for s in snapshots)
        return PoolUsage(
            backend=self.backend,
            capacity_bytes=fs.f_blocks * fs.f_frsize,
            used_bytes=used,
            free_bytes=fs.f_bavail * fs.f_frsize,
        )


def _stored_now(path: Path, uid: str) -> StoredVolume:
    header = qcow2.read_header(path)
    if header is None:
        raise qcow2.Qcow2Error(f"{path.name} is not qcow2")
    return StoredVolume(uid=uid, size_bytes=header.virtual_size, location=str(path))


def _write_record(path: Path, volume_uid: str) -> None:
    """Which volume a snapshot was taken of, as one JSON file replaced whole."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"volume": volume_uid}))
    partial.chmod(0o600)
    os.replace(partial, path)


def _read_record(path: Path) -> str | None:
    """The volume UID a snapshot's record names; None, logged, when it is lost or bad."""
    try:
        volume = json.loads(path.read_text()).get("volume")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("snapshots: cannot read %s: %s", path, exc)
        return None
    if not isinstance(volume, str) or not naming.is_uid(volume):
        log.warning("snapshots: %s names no volume UID", path)
        return None
    return volume


def _give_back(path: Path) -> None:
    """The agent's own (root's) and private: no guest's QEMU may open it."""
    st = path.stat()
    ids = (os.geteuid(), os.getegid())
    if (st.st_uid, st.st_gid) != ids:
        os.chown(path, *ids)
    path.chmod(0o600)


def _virtual_size(path: Path, fmt: str) -> int:
    """A source's virtual size: the qcow2 header's, or a raw file's length."""
    if fmt == "qcow2":
        header = qcow2.read_header(path)
        if header is None:
            raise qcow2.Qcow2Error(f"{path.name} is not qcow2")
        return header.virtual_size
    return path.stat().st_size
