"""A volume driver that makes nothing, for the fake compute mode: volumes and their
snapshots live in memory."""

from __future__ import annotations

import builtins
from pathlib import Path

from stratus_agent.base import (
    CachedImage,
    GuestOwner,
    ProgressListener,
    StoredSnapshot,
    StoredVolume,
    VolumeAttachment,
)
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import PoolUsage, disk_serial

# What a fake node claims its volume pool holds (1 PiB): never the limit in a scale test.
FAKE_CAPACITY = 2**50


class FakeVolumeDriver:
    def __init__(
        self, directory: Path, capacity: int = FAKE_CAPACITY,
        backend: VolumeBackend = VolumeBackend.FILE,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.capacity = capacity
        self._backend = backend
        self.volumes: dict[str, StoredVolume] = {}
        self.snapshots: dict[str, StoredSnapshot] = {}
        self.owners: dict[str, GuestOwner | None] = {}  # attached volumes: their owner

    @property
    def backend(self) -> VolumeBackend:
        return self._backend

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
        if uid in self.volumes:
            return self.volumes[uid]
        source_size = 0
        if image is not None:
            source_size = image.virtual_size
        elif clone_of is not None:
            if clone_of not in self.volumes:
                raise ProvisioningError(
                    GuestFailure.VOLUME_NOT_FOUND, f"source volume {clone_of} is not on this node"
                )
            source_size = self.volumes[clone_of].size_bytes
        elif snapshot_of is not None:
            if snapshot_of not in self.snapshots:
                raise ProvisioningError(
                    GuestFailure.VOLUME_NOT_FOUND, f"snapshot {snapshot_of} is not on this node"
                )
            source_size = self.snapshots[snapshot_of].size_bytes
        if size_bytes < source_size:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"volume of {size_bytes} bytes is smaller than its source's {source_size}",
            )
        if progress is not None:
            progress(100)
        volume = StoredVolume(
            uid=uid, size_bytes=size_bytes, location=str(self.directory / naming.volume_file(uid))
        )
        self.volumes[uid] = volume
        return volume

    async def grow(self, uid: str, size_bytes: int) -> StoredVolume:
        volume = self.volumes[uid]
        if size_bytes < volume.size_bytes:
            raise ProvisioningError(GuestFailure.DISK_TOO_SMALL, "volumes never shrink")
        self.volumes[uid] = volume = StoredVolume(
            uid=uid, size_bytes=size_bytes, location=volume.location
        )
        return volume

    async def remove(self, uid: str) -> bool:
        self.owners.pop(uid, None)
        return self.volumes.pop(uid, None) is not None

    async def list(self) -> list[StoredVolume]:
        return sorted(self.volumes.values(), key=lambda volume: volume.uid)

    async def snapshot(
        self, volume_uid: str, snapshot_uid: str, *, progress: ProgressListener | None = None
    ) -> StoredSnapshot:
        if snapshot_uid in self.snapshots:
            return self.snapshots[snapshot_uid]
        if volume_uid not in self.volumes:
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"source volume {volume_uid} is not on this node"
            )
        if progress is not None:
            progress(100)
        snapshot = StoredSnapshot(
            uid=snapshot_uid,
            volume_uid=volume_uid,
            size_bytes=self.volumes[volume_uid].size_bytes,
            location=str(self.directory / "snapshots" / naming.snapshot_file(snapshot_uid)),
        )
        self.snapshots[snapshot_uid] = snapshot
        return snapshot

    async def remove_snapshot(self, snapshot_uid: str) -> bool:
        return self.snapshots.pop(snapshot_uid, None) is not None

    async def list_snapshots(self) -> builtins.list[StoredSnapshot]:
        return sorted(self.snapshots.values(), key=lambda snapshot: snapshot.uid)

    async def attach(self, uid: str, owner: GuestOwner | None) -> VolumeAttachment:
        if uid not in self.volumes:
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not on this node"
            )
        self.owners[uid] = owner
        return VolumeAttachment(
            name=uid, path=self.volumes[uid].location, format="qcow2", serial=disk_serial(uid)
        )

    async def detach(self, uid: str) -> None:
        self.owners.pop(uid, None)

    async def usage(self) -> PoolUsage:
        used = sum(volume.size_bytes for volume in self.volumes.values()) + sum(
            snapshot.size_bytes for snapshot in self.snapshots.values()
        )
        return PoolUsage(
            backend=self.backend,
            capacity_bytes=self.capacity,
            used_bytes=used,
            free_bytes=max(self.capacity - used, 0),
        )
