"""The RBD volume driver: Volumes as RBD images in one Ceph pool, through librados/librbd.

Names in the pool are the truth (so it survives agent restarts, and every node sharing the
pool sees the same): a Volume is `volume-<uid>`, its snapshots `volume-<uid>@snap-<uid>`,
and an Image is imported once per pool as `image-<uid>` with a protected snapshot `base`.
A volume from an Image is a copy-on-write clone of `base` (made in the same time whatever
the image's size); a restore is a clone of the protected snapshot, and removing a snapshot
first flattens the volumes restored from it (they are not touched otherwise). A clone of
another volume is a full copy of a snapshot of it, removed afterwards: the new volume stands
alone, so the source can be deleted, grown or restored without touching it, as with files.
Anything being made has a `.partial` name until it is whole.

A volume with snapshots cannot be removed (the operator deletes its VolumeSnapshots first);
neither can one a QEMU holds open.

One cluster connection per driver, made on first use and again after it fails. Its
configuration is written by this module, never taken from /etc/ceph: a ceph.conf naming the
monitors and a keyring file (0600) under state_dir/ceph/<pool uid>/, so the cephx key is
never on a command line (qemu-img is given the files), in a log or in an error message.
Every librados/librbd call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import rados
import rbd
from pydantic import SecretStr, ValidationError

from stratus_agent.base import (
    CachedImage,
    GuestOwner,
    ProgressListener,
    RbdSource,
    StoredSnapshot,
    StoredVolume,
    VolumeAttachment,
)
from stratus_agent.drivers.storage import qemu_img
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import CephAccess, PoolUsage, disk_serial

log = logging.getLogger(__name__)

# Seconds librados keeps trying to reach the monitors and authenticate. A wrong key is
# refused by retrying until then (cephx over msgr2), so it is short: librados' default is
# 300 s, and Rados.connect(timeout=) is ignored.
MOUNT_TIMEOUT = 15
# Ceph's own defaults for new images, named here so that no client or pool setting changes
# them: layering (clones) is the one this driver needs, the others make clones, copies and
# usage reports fast.
FEATURES = (
    rbd.RBD_FEATURE_LAYERING
    | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF
    | rbd.RBD_FEATURE_DEEP_FLATTEN
)
# What a shareable volume goes without: the exclusive lock would pass between the guests'
# QEMUs on every write (the others need it).
SINGLE_WRITER = (
    rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
)
_VOLUME, _SNAPSHOT, _PARTIAL = "volume-", "snap-", ".partial"
# The conf's first line: the pool it reaches, a comment to Ceph.
_POOL_LINE = "# stratus pool: "
_IMPORT_LOCK = "import-"  # a RADOS object whose exclusive lock one importing node holds
# Seconds a node's import lock lasts unless released (a node that died mid-import frees it);
# and how often a waiting node looks for the image.
IMPORT_LEASE, IMPORT_POLL = 3600, 1.0
_COPY = "copy-"  # a temporary snapshot of a volume being cloned: `copy-<new volume uid>`
# Metadata on an imported Image whose Image object is gone: removed with its last clone.
_RELEASED = "stratus.released"
_IMAGE = "image-"
# The connection went bad, not the operation: the next call connects again.
_CONNECTION_ERRORS = (rados.TimedOut, rados.ConnectionShutdown, rbd.ConnectionShutdown, rbd.Timeout)

T = TypeVar("T")


class RbdVolumeDriver:
    """Volumes of one Ceph pool, reached as the CephPool's user."""

    def __init__(self, access: CephAccess, state_dir: Path, *, mount_timeout: int = MOUNT_TIMEOUT):
        self.access = access
        self.directory = state_dir / "ceph" / access.pool_uid
        self.mount_timeout = mount_timeout
        self._cluster: Any = None  # rados.Rados, once connected
        self._connecting = threading.Lock()
        self._imports: dict[str, asyncio.Lock] = {}  # one import of an Image at a time
        # This node, to the other nodes sharing the pool: one of them imports an Image
        # while the others wait (a RADOS lock with this cookie; see _ensure_image).
        self.importer = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]

    @classmethod
    def saved(
        cls, state_dir: Path, pool_uid: str, *, mount_timeout: int = MOUNT_TIMEOUT
    ) -> RbdVolumeDriver | None:
        """The driver of pool `pool_uid` with the access its own conf and keyring files hold
        (as the last access given wrote them); None when they are missing or incomplete.
        Blocking."""
        directory = state_dir / "ceph" / pool_uid
        try:
            conf = (directory / "ceph.conf").read_text().splitlines()
            keyring = (directory / "keyring").read_text().splitlines()
        except OSError as exc:
            log.warning("Ceph pool %s: cannot read its access in %s: %s", pool_uid, directory,
                        exc.strerror)  # fmt: skip
            return None
        pool = next((line.removeprefix(_POOL_LINE) for line in conf
                     if line.startswith(_POOL_LINE)), "")  # fmt: skip
        monitors = next((line.partition("=")[2].strip() for line in conf
                         if line.replace(" ", "").startswith("mon_host=")), "")  # fmt: skip
        users = [line.strip()[len("[client.") : -1] for line in keyring
                 if line.strip().startswith("[client.") and line.strip().endswith("]")]  # fmt: skip
        keys = [line.partition("=")[2].strip() for line in keyring
                if line.strip().replace(" ", "").startswith("key=")]  # fmt: skip
        try:
            access = CephAccess(
                pool_uid=pool_uid, monitors=monitors.split(","), pool=pool,
                user=users[0] if users else "", key=SecretStr(keys[0] if keys else ""),
            )  # fmt: skip
        except ValidationError as exc:
            # Field names only: the key's value is not in a message.
            fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
            log.warning("Ceph pool %s: the access in %s is incomplete (%s)", pool_uid,
                        directory, fields)  # fmt: skip
            return None
        return cls(access, state_dir, mount_timeout=mount_timeout)

    def use_access(self, access: CephAccess) -> bool:
        """Reach the pool with `access` from now on: the next call writes its files and
        connects with it. True if it differs from the current one."""
        if access.pool_uid != self.access.pool_uid:
            raise ValueError(f"access of pool {access.pool_uid} given to {self.access.pool_uid}")
        with self._connecting:
            if access == self.access:
                return False
            self.access = access
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(rados.Error):
                cluster.shutdown()
        return True

    @property
    def backend(self) -> VolumeBackend:
        return VolumeBackend.CEPH

    @property
    def conf_path(self) -> Path:
        return self.directory / "ceph.conf"

    @property
    def keyring_path(self) -> Path:
        return self.directory / "keyring"

    def location(self, name: str) -> str:
        return f"{self.access.pool}/{name}"

    # -- the connection --------------------------------------------------------------------

    def _write_files(self) -> None:
        """ceph.conf and the keyring, rewritten when the access changed (a new key)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = "\n".join([
            f"{_POOL_LINE}{self.access.pool}",  # for `saved`: the conf says the monitors only
            "[global]",
            f"mon_host = {','.join(self.access.monitors)}",
            "auth_cluster_required = cephx",
            "auth_service_required = cephx",
            "auth_client_required = cephx",
            f"keyring = {self.keyring_path}",
            f"client_mount_timeout = {self.mount_timeout}",
            "",
        ])  # fmt: skip
        keyring = f"[client.{self.access.user}]\n\tkey = {self.access.key.get_secret_value()}\n"
        _write_private(self.conf_path, conf)
        _write_private(self.keyring_path, keyring)

    def _connected(self) -> Any:
        with self._connecting:
            if self._cluster is None:
                self._write_files()
                cluster = rados.Rados(
                    conffile=str(self.conf_path),
                    rados_id=self.access.user,
                    conf={"client_mount_timeout": str(self.mount_timeout)},
                )
                try:
                    cluster.connect()
                except rados.Error as exc:
                    cluster.shutdown()
                    raise ProvisioningError(
                        GuestFailure.VOLUME_CREATE_FAILED,
                        f"cannot reach Ceph pool {self.access.pool} at "
                        f"{','.join(self.access.monitors)} as client.{self.access.user} within "
                        f"{self.mount_timeout} s ({exc}): monitors down or unreachable, or the "
                        f"user or key refused (a refused key times out too); keyring in "
                        f"{self.keyring_path}",
                    ) from None  # from None: nothing of librados' state in the trace
                self._cluster = cluster
            return self._cluster

    def _drop(self) -> None:
        with self._connecting:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(rados.Error):
                cluster.shutdown()

    def close(self) -> None:
        """Disconnect (blocking); the next call connects again."""
        self._drop()

    async def _run(
        self,
        operation: Callable[[Any], T],
        failure: GuestFailure = GuestFailure.VOLUME_CREATE_FAILED,
    ) -> T:
        """`operation(ioctx)` in a worker thread; a Ceph error becomes ProvisioningError
        (`failure`), and a lost connection is made again by the next call."""

        def call() -> T:
            try:
                with self._connected().open_ioctx(self.access.pool) as ioctx:
                    return operation(ioctx)
            except ProvisioningError:
                raise
            except (rados.Error, rbd.Error) as exc:
                if isinstance(exc, _CONNECTION_ERRORS):
                    self._drop()
                raise ProvisioningError(
                    failure, f"Ceph pool {self.access.pool}: {type(exc).__name__}: {exc}"
                ) from exc

        return await asyncio.to_thread(call)

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
        name = naming.rbd_volume(uid)
        existing = await self._run(lambda ioctx: _size(ioctx, name))
        if existing is not None:
            return self._stored(uid, existing)
        if progress is not None:
            progress(0)
        if image is not None:
            _not_smaller(size_bytes, image.virtual_size)
            await self._ensure_image(image)

        def make(ioctx: Any) -> int:
            partial = name + _PARTIAL
            _remove_image(ioctx, partial)  # a crashed attempt's
            if image is not None:
                _clone(ioctx, naming.rbd_image(image.uid), naming.RBD_BASE_SNAPSHOT, partial)
            elif snapshot_of is not None:
                volume, snapshot = _find_snapshot(ioctx, snapshot_of)
                _not_smaller(size_bytes, _snap_size(ioctx, volume, snapshot))
                _clone(ioctx, volume, snapshot, partial)
            elif clone_of is not None:
                _copy_volume(ioctx, naming.rbd_volume(clone_of), partial, uid, size_bytes)
            else:
                rbd.RBD().create(ioctx, partial, size_bytes, old_format=False, features=FEATURES)
            with rbd.Image(ioctx, partial) as made:
                if made.size() < size_bytes:
                    made.resize(size_bytes)
                if shareable:
                    made.update_features(SINGLE_WRITER, False)
                size: int = made.size()
            rbd.RBD().rename(ioctx, partial, name)
            return size

        size = await self._run(make)
        if progress is not None:
            progress(100)
        return self._stored(uid, size)

    async def _ensure_image(self, image: CachedImage) -> None:
        """`image-<uid>@base`, protected: imported with qemu-img (given the conf and keyring
        files, never the key) under a partial name, snapshotted, then named. Once per pool:
        the node importing holds an exclusive RADOS lock on `import-<uid>` (it expires if
        the node dies), and any other node waits for the image meanwhile."""
        name = naming.rbd_image(image.uid)
        async with self._imports.setdefault(image.uid, asyncio.Lock()):
            while True:
                if await self._run(lambda ioctx: _size(ioctx, name)) is not None:
                    return
                if await self._run(lambda ioctx: self._claim_import(ioctx, image.uid)):
                    break
                await asyncio.sleep(IMPORT_POLL)  # another node imports it now
            try:
                await self._import(image, name)
            finally:
                await self._run(lambda ioctx: self._end_import(ioctx, image.uid))

    def _claim_import(self, ioctx: Any, image_uid: str) -> bool:
        try:
            ioctx.lock_exclusive(_IMPORT_LOCK + image_uid, "import", self.importer,
                                 desc="stratus image import", duration=IMPORT_LEASE)  # fmt: skip
        except rados.ObjectBusy:
            return False
        except rados.ObjectExists:  # this node's own, from an import it did not finish
            pass
        return True

    def _end_import(self, ioctx: Any, image_uid: str) -> None:
        with contextlib.suppress(rados.ObjectNotFound):
            ioctx.unlock(_IMPORT_LOCK + image_uid, "import", self.importer)
        with contextlib.suppress(rados.ObjectNotFound):
            ioctx.remove_object(_IMPORT_LOCK + image_uid)

    async def _import(self, image: CachedImage, name: str) -> None:
        if await self._run(lambda ioctx: _size(ioctx, name)) is not None:
            return  # imported by the node that held the lock before
        partial = name + _PARTIAL
        await self._run(lambda ioctx: _remove_image(ioctx, partial))  # a crashed one's
        target = f"rbd:{self.access.pool}/{partial}:conf={self.conf_path}:id={self.access.user}"
        try:
            # -f: the cached image's format is known, never probed; -O raw: RBD is raw.
            await qemu_img.convert(("-f", image.format, "-O", "raw", str(image.path), target),
                                   None)  # fmt: skip
        except Exception as exc:
            raise ProvisioningError(
                GuestFailure.VOLUME_CREATE_FAILED, f"importing image {image.uid}: {exc}"
            ) from exc

        def seal(ioctx: Any) -> None:
            with rbd.Image(ioctx, partial) as made:
                made.create_snap(naming.RBD_BASE_SNAPSHOT)
                made.protect_snap(naming.RBD_BASE_SNAPSHOT)
            rbd.RBD().rename(ioctx, partial, name)

        await self._run(seal)

    async def release_image(self, image_uid: str) -> bool:
        """The Image is gone: remove its imported copy (`image-<uid>`) now if no volume is a
        clone of it, else mark it released in the pool itself, so that whichever node
        removes its last clone, also after a restart, removes it then. True if removed now."""
        name = naming.rbd_image(image_uid)

        def release(ioctx: Any) -> bool:
            _remove_image(ioctx, name + _PARTIAL)
            try:
                with rbd.Image(ioctx, name) as image:
                    if _children(image):
                        image.metadata_set(_RELEASED, "true")
                        return False
            except rbd.ImageNotFound:
                return False
            _remove_image(ioctx, name)
            return True

        return await self._run(release, GuestFailure.VOLUME_IN_USE)

    async def grow(self, uid: str, size_bytes: int) -> StoredVolume:
        name = naming.rbd_volume(uid)

        def resize(ioctx: Any) -> int:
            with _open(ioctx, name, uid) as volume:
                current: int = volume.size()
                if size_bytes < current:
                    raise ProvisioningError(
                        GuestFailure.DISK_TOO_SMALL,
                        f"volume is {current} bytes; shrinking it to {size_bytes} would lose data",
                    )
                if size_bytes > current:
                    volume.resize(size_bytes)
                return int(volume.size())

        return self._stored(uid, await self._run(resize))

    async def remove(self, uid: str) -> bool:
        name = naming.rbd_volume(uid)

        def remove(ioctx: Any) -> bool:
            _remove_image(ioctx, name + _PARTIAL)
            try:
                with rbd.Image(ioctx, name) as volume:
                    snapshots = [s["name"] for s in volume.list_snaps()]
                    kept = [s for s in snapshots if not s.startswith(_COPY)]
                    if kept:
                        raise ProvisioningError(
                            GuestFailure.VOLUME_IN_USE,
                            f"volume {uid} has snapshots {', '.join(kept)}: remove them first",
                        )
                    for leftover in snapshots:  # of a clone that crashed
                        _remove_snap(ioctx, volume, leftover)
                    parent = _parent_image(volume)
            except rbd.ImageNotFound:
                return False
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageBusy as exc:
                raise ProvisioningError(
                    GuestFailure.VOLUME_IN_USE, f"volume {uid} is open (a QEMU has it): {exc}"
                ) from exc
            except rbd.ImageNotFound:
                return False
            if parent is not None:
                _remove_if_released(ioctx, parent)
            return True

        return await self._run(remove, GuestFailure.VOLUME_IN_USE)

    async def list(self) -> list[StoredVolume]:
        def collect(ioctx: Any) -> list[StoredVolume]:
            found = []
            for name, uid in _volumes(ioctx):
                size = _size(ioctx, name)
                if size is not None:  # removed meanwhile
                    found.append(self._stored(uid, size))
            return sorted(found, key=lambda volume: volume.uid)

        return await self._run(collect)

    def _stored(self, uid: str, size: int) -> StoredVolume:
        return StoredVolume(
            uid=uid, size_bytes=size, location=self.location(naming.rbd_volume(uid))
        )

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot(
        self, volume_uid: str, snapshot_uid: str, *, progress: ProgressListener | None = None
    ) -> StoredSnapshot:
        """An RBD snapshot, protected so it can be cloned (a restore) and not removed by
        accident: one step, and whole once it exists."""
        name, snap = naming.rbd_volume(volume_uid), naming.rbd_snapshot(snapshot_uid)
        if progress is not None:
            progress(0)

        def take(ioctx: Any) -> int:
            with _open(ioctx, name, volume_uid) as volume:
                if not any(s["name"] == snap for s in volume.list_snaps()):
                    volume.create_snap(snap)
                if not volume.is_protected_snap(snap):  # also after a crash in between
                    volume.protect_snap(snap)
            return _snap_size(ioctx, name, snap)

        size = await self._run(take)
        if progress is not None:
            progress(100)
        return StoredSnapshot(
            uid=snapshot_uid, volume_uid=volume_uid, size_bytes=size,
            location=self.location(f"{name}@{snap}"),
        )  # fmt: skip

    async def remove_snapshot(self, snapshot_uid: str) -> bool:
        """Flattens the volumes restored from it first: they keep their data."""

        def remove(ioctx: Any) -> bool:
            try:
                volume, snap = _find_snapshot(ioctx, snapshot_uid)
            except ProvisioningError:
                return False
            with rbd.Image(ioctx, volume) as image:
                _remove_snap(ioctx, image, snap)
            return True

        return await self._run(remove, GuestFailure.VOLUME_IN_USE)

    async def list_snapshots(self) -> builtins.list[StoredSnapshot]:
        def collect(ioctx: Any) -> builtins.list[StoredSnapshot]:
            found = []
            for name, uid in _volumes(ioctx):
                with (
                    contextlib.suppress(rbd.ImageNotFound),
                    rbd.Image(ioctx, name, read_only=True) as volume,
                ):
                    for snap in volume.list_snaps():
                        suid = snap["name"].removeprefix(_SNAPSHOT)
                        if snap["name"].startswith(_SNAPSHOT) and naming.is_uid(suid):
                            found.append(StoredSnapshot(
                                uid=suid, volume_uid=uid, size_bytes=int(snap["size"]),
                                location=self.location(f"{name}@{snap['name']}"),
                            ))  # fmt: skip
            return sorted(found, key=lambda snapshot: snapshot.uid)

        return await self._run(collect)

    # -- guests ----------------------------------------------------------------------------

    async def attach(self, uid: str, owner: GuestOwner | None) -> VolumeAttachment:
        """A network disk: QEMU opens the image itself with the pool's libvirt secret, so
        there is no file to give to `owner`."""
        name = naming.rbd_volume(uid)
        if (
            await self._run(lambda ioctx: _size(ioctx, name), GuestFailure.VOLUME_ATTACH_FAILED)
            is None
        ):
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not in pool {self.access.pool}"
            )
        return VolumeAttachment(
            name=uid, format="raw", serial=disk_serial(uid), rbd=self.source(name)
        )

    def source(self, image: str) -> RbdSource:
        return RbdSource(
            pool=self.access.pool,
            image=image,
            monitors=tuple(self.access.monitors),
            user=self.access.user,
            secret_uuid=naming.ceph_secret_uuid(self.access.pool_uid),
        )

    async def detach(self, uid: str) -> None:
        """Nothing was given to the guest's user."""

    async def usage(self) -> PoolUsage:
        """What the cluster reports (capacity and free space are the cluster's, which the
        pool shares with others; 0 and 0 from a cluster without a manager, which is what
        feeds the monitor those numbers); used is the provisioned size of volumes and
        snapshots."""
        volumes, snapshots = await self.list(), await self.list_snapshots()
        stats = await self._run(lambda _ioctx: self._connected().get_cluster_stats())
        return PoolUsage(
            backend=self.backend,
            capacity_bytes=int(stats["kb"]) * 1024,
            used_bytes=sum(v.size_bytes for v in volumes) + sum(s.size_bytes for s in snapshots),
            free_bytes=int(stats["kb_avail"]) * 1024,
            pool=self.access.pool,
            pool_uid=self.access.pool_uid,
        )


class RbdPools:
    """Makes an RbdVolumeDriver per Ceph pool, each with its files under state_dir/ceph."""

    def __init__(self, state_dir: Path, *, mount_timeout: int = MOUNT_TIMEOUT) -> None:
        self.state_dir = state_dir
        self.mount_timeout = mount_timeout

    def make(self, access: CephAccess) -> RbdVolumeDriver:
        return RbdVolumeDriver(access, self.state_dir, mount_timeout=self.mount_timeout)

    def forget(self, pool_uid: str) -> bool:
        directory = self.state_dir / "ceph" / pool_uid
        if not naming.is_uid(pool_uid) or not directory.is_dir():
            return False
        shutil.rmtree(directory)
        return True

    def saved(self) -> builtins.list[RbdVolumeDriver]:
        directory = self.state_dir / "ceph"
        if not directory.is_dir():
            return []
        found = []
        for entry in sorted(directory.iterdir()):
            if entry.is_dir() and naming.is_uid(entry.name):
                driver = RbdVolumeDriver.saved(
                    self.state_dir, entry.name, mount_timeout=self.mount_timeout
                )
                if driver is not None:
                    found.append(driver)
        return found


# -- blocking helpers, each given an open ioctx --------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, 0600 from the start, unless it holds that already."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(partial, path)


def _volumes(ioctx: Any) -> Iterator[tuple[str, str]]:
    """(image name, Volume UID) of every whole volume in the pool."""
    for name in rbd.RBD().list(ioctx):
        uid = name.removeprefix(_VOLUME)
        if name.startswith(_VOLUME) and naming.is_uid(uid):  # a partial ends in .partial
            yield name, uid


def _size(ioctx: Any, name: str) -> int | None:
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            return int(image.size())
    except rbd.ImageNotFound:
        return None


@contextlib.contextmanager
def _open(ioctx: Any, name: str, uid: str) -> Iterator[Any]:
    try:
        image = rbd.Image(ioctx, name)
    except rbd.ImageNotFound:
        raise ProvisioningError(
            GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not in the pool"
        ) from None
    with image:
        yield image


def _snap_size(ioctx: Any, name: str, snap: str) -> int:
    with rbd.Image(ioctx, name, snapshot=snap, read_only=True) as image:
        return int(image.size())


def _not_smaller(size_bytes: int, source_bytes: int) -> None:
    if size_bytes < source_bytes:
        raise ProvisioningError(
            GuestFailure.DISK_TOO_SMALL,
            f"volume of {size_bytes} bytes is smaller than its source's virtual size of "
            f"{source_bytes} bytes",
        )


def _clone(ioctx: Any, parent: str, snap: str, child: str) -> None:
    rbd.RBD().clone(ioctx, parent, snap, ioctx, child, features=FEATURES)


def _find_snapshot(ioctx: Any, snapshot_uid: str) -> tuple[str, str]:
    """(volume image, snapshot name) of a VolumeSnapshot, found by its name in the pool."""
    snap = naming.rbd_snapshot(snapshot_uid)
    for name, _uid in _volumes(ioctx):
        with (
            contextlib.suppress(rbd.ImageNotFound),
            rbd.Image(ioctx, name, read_only=True) as image,
        ):
            if any(s["name"] == snap for s in image.list_snaps()):
                return name, snap
    raise ProvisioningError(
        GuestFailure.VOLUME_NOT_FOUND,
        f"snapshot {snapshot_uid} is not in the pool (not taken yet, failed or deleted)",
    )


def _copy_volume(ioctx: Any, source: str, target: str, target_uid: str, size: int) -> None:
    """A standalone copy of `source` as it is now, through a temporary snapshot: consistent
    even if something writes meanwhile, and no parent left behind."""
    snap = _COPY + target_uid
    try:
        image = rbd.Image(ioctx, source)
    except rbd.ImageNotFound:
        raise ProvisioningError(
            GuestFailure.VOLUME_NOT_FOUND, f"source volume {source} is not in the pool"
        ) from None
    with image:
        if any(s["name"] == snap for s in image.list_snaps()):
            _remove_snap(ioctx, image, snap)  # a crashed attempt's
        image.create_snap(snap)
        try:
            with rbd.Image(ioctx, source, snapshot=snap, read_only=True) as frozen:
                _not_smaller(size, int(frozen.size()))
                frozen.copy(ioctx, target, features=FEATURES)
        finally:
            _remove_snap(ioctx, image, snap)


def _remove_snap(ioctx: Any, image: Any, snap: str) -> None:
    """Unprotect and remove one snapshot of an open image, flattening its clones first
    (partial ones, which nothing uses yet, are removed instead). Clones are made in the same
    pool only; one elsewhere makes the unprotect fail (ImageBusy)."""
    if image.is_protected_snap(snap):
        image.set_snap(snap)
        children = [c["image"] for c in image.list_children2()
                    if not c.get("trash") and c["pool"] == ioctx.name]  # fmt: skip
        image.set_snap(None)
        for child in children:
            if child.endswith(_PARTIAL):
                _remove_image(ioctx, child)
            else:
                with rbd.Image(ioctx, child) as clone:
                    clone.flatten()
        image.unprotect_snap(snap)
    image.remove_snap(snap)


def _children(image: Any) -> list[str]:
    """Names of the clones of an imported Image's base snapshot (open `image`)."""
    image.set_snap(naming.RBD_BASE_SNAPSHOT)
    try:
        return [c["image"] for c in image.list_children2() if not c.get("trash")]
    finally:
        image.set_snap(None)


def _parent_image(volume: Any) -> str | None:
    """The imported Image an open volume is a clone of, if it is one."""
    try:
        _pool, parent, _snap = volume.parent_info()
    except rbd.ImageNotFound:  # no parent
        return None
    return str(parent) if str(parent).startswith(_IMAGE) else None


def _remove_if_released(ioctx: Any, name: str) -> None:
    """Remove an imported Image that was released and has no clone left."""
    try:
        with rbd.Image(ioctx, name) as image:
            try:
                released = image.metadata_get(_RELEASED) == "true"
            except KeyError:
                return
            if not released or _children(image):
                return
    except rbd.ImageNotFound:
        return
    log.info("imported image %s: its last clone is gone and it was released: removed", name)
    _remove_image(ioctx, name)


def _remove_image(ioctx: Any, name: str) -> None:
    """Remove an image and its snapshots; nothing if there is none."""
    try:
        with rbd.Image(ioctx, name) as image:
            for snap in image.list_snaps():
                _remove_snap(ioctx, image, snap["name"])
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass
