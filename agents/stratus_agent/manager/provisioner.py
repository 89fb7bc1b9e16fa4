"""Node-side preparation of a guest, composed of drivers: image store, disk driver, seed drive,
network driver, and the guest's own user.

It only sequences them and knows none of their backends (stratus_agent.main picks those from
the configuration), so a volume or network backend arrives as a driver, not as a branch here:
a Volume disk goes to the driver of its backend (and Ceph pool), see manager.backends.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from stratus_agent.base import (
    DiskDriver,
    DiskSource,
    GuestOwner,
    ImageStore,
    NetworkDriver,
    NodeFacts,
    SeedDrive,
    VolumeAttachment,
)
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.owners import GuestOwners
from stratus_agent.manager.volumes import VolumeManager
from stratus_api.guest import GuestSpec
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)


class NodeProvisioner:
    """With `owners`, each guest's disk and seed belong to that guest's own user (0600), and
    what guests share (cached base images) is root's and read-only; without, QEMU's default
    user owns everything (fake mode, tests)."""

    def __init__(
        self,
        *,
        images: ImageStore,
        disks: DiskDriver,
        network: NetworkDriver,
        seed: SeedDrive,
        owners: GuestOwners | None = None,
        volumes: VolumeManager | None = None,
    ) -> None:
        self.images = images
        self.volumes = volumes
        self.disks = disks
        self.network = network
        self.seed = seed
        self.owners = owners

    async def check_node(self) -> None:
        """Periodic: repair node state that guests depend on and others may have changed."""
        await self.network.check()

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        root = spec.disks[0]
        owner = self.owners.owner(spec.uid) if self.owners is not None else None
        volumes = await self._attach_volumes(spec, owner)
        if root.image is not None:
            base = await self.images.ensure(root.image)
            root_disk = await self.disks.ensure_root_disk(spec.uid, base, root.size_bytes, owner)
        else:  # booting from a volume: it is the root disk, as it is
            boot, *volumes = volumes
            root_disk = DiskSource(
                path=boot.path, format=boot.format, serial=boot.serial, rbd=boot.rbd,
                block=boot.block,
            )  # fmt: skip
        seed_iso = await self.seed.write(spec, owner)
        nics = await self.network.plug(spec.uid, spec.nics)
        return NodeFacts(
            root_disk=root_disk, seed_iso_path=seed_iso, nics=nics, volumes=tuple(volumes),
            owner=owner,
        )  # fmt: skip

    async def _attach_volumes(
        self, spec: GuestSpec, owner: GuestOwner | None
    ) -> list[VolumeAttachment]:
        """The spec's Volume disks (the root one too), attached to the guest and named as
        its disks are."""
        disks = [(disk.name, disk.volume) for disk in spec.disks if disk.volume is not None]
        if self.volumes is None:
            if disks:
                raise ProvisioningError(
                    GuestFailure.VOLUME_NOT_FOUND, "this agent holds no volumes"
                )
            return []
        drivers = self.volumes.drivers
        for _, volume in disks:
            # A ceph disk's pool is added (its volumes listed), or given the newer access.
            driver = await drivers.for_backend(volume.backend, volume.ceph)
            holder = drivers.of_volume(volume.uid)
            if holder is not None and holder is not driver:
                raise ProvisioningError(
                    GuestFailure.VOLUME_NOT_FOUND,
                    f"volume {volume.uid} is in {drivers.describe(holder)}; the guest's disk "
                    f"names {drivers.describe(driver)}",
                )
        shared = {volume.uid for _, volume in disks if volume.shareable}
        held = await self.volumes.use(
            spec.uid, [volume.uid for _, volume in disks], owner, shareable=shared
        )
        return [
            replace(held[volume.uid], name=name, serial=volume.serial) for name, volume in disks
        ]

    async def settle(self, spec: GuestSpec) -> None:
        await self.network.secure(spec.uid)
        if self.volumes is not None:
            kept = [disk.volume.uid for disk in spec.disks if disk.volume is not None]
            await self.volumes.keep_only(spec.uid, kept)

    async def cleanup(self, uid: str) -> None:
        """Ports, disk, seed and the guest's user; each driver logs rather than raises, so
        every step runs: retrying a delete would not fix a leftover."""
        await self.network.unplug(uid)
        await self.disks.remove(uid)
        await self.seed.remove(uid)
        if self.volumes is not None:
            await self.volumes.release(uid)
        if self.owners is not None:
            self.owners.release(uid)
        # Released or over-budget images this guest held; never raises.
        await self.images.collect()
