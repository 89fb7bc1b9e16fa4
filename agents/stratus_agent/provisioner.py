"""Node-side preparation of a guest: image, root disk, seed ISO, bridge, file ownership."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal

from stratus_agent import disks, process, seed
from stratus_agent.compute.domain_builder import NodeFacts
from stratus_agent.disks import GuestFiles
from stratus_agent.errors import ProvisioningError
from stratus_agent.images import ImageCache
from stratus_agent.ovs import OvsBridge
from stratus_agent.owners import GuestOwners
from stratus_api.guest import GuestSpec
from stratus_api.reasons import GuestFailure

VirtType = Literal["kvm", "qemu"]
log = logging.getLogger(__name__)


def ensure_traversable(directory: Path) -> None:
    """o+x on a directory QEMU under a per-guest user must pass through: libvirt keeps each
    domain's private files (master key, monitor socket) in a subdirectory of its state
    directory, owned by that domain's user. Debian ships the parent 0750 and resets it on
    package upgrades (upstream ships 0751), so this is checked again, not set once."""
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        return  # libvirt makes it when it starts its first domain
    if not mode & 0o001:
        directory.chmod(mode | 0o001)
        log.info("made %s traversable (o+x) for per-guest QEMU users", directory)


class NodeProvisioner:
    """Real files on the node: cached base image, qcow2 overlay, seed ISO; OVS bridge.

    With `owners`, each guest's overlay and seed ISO belong to that guest's own user, mode
    0600, and the cached base images are root's, 0644: every guest's QEMU reads them, none
    writes them. The console log needs nothing: virtlogd (root) writes it, 0600, and QEMU
    only ever gets a pipe to it.
    """

    def __init__(
        self,
        images: ImageCache,
        files: GuestFiles,
        bridge: OvsBridge,
        virt_type: VirtType,
        owners: GuestOwners | None = None,
        libvirt_qemu_dir: Path | None = None,
    ) -> None:
        self.images = images
        self.files = files
        self.bridge = bridge
        self.virt_type: VirtType = virt_type
        self.owners = owners
        self.libvirt_qemu_dir = libvirt_qemu_dir
        self._bridge_ready = asyncio.Lock()

    async def ensure_bridge(self) -> None:
        """Checked on every prepare and by the periodic node check, never cached: someone
        may delete it (ovs-vsctl del-br) while the agent runs."""
        async with self._bridge_ready:
            try:
                if await self.bridge.ensure():
                    log.info("OVS bridge %s was missing: made it", self.bridge.name)
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"OVS bridge {self.bridge.name} cannot be ensured: {exc}",
                ) from exc

    async def check_node(self) -> None:
        """Periodic: repair node state that guests depend on and others may have changed."""
        await self.ensure_bridge()
        if self.owners is not None and self.libvirt_qemu_dir is not None:
            await asyncio.to_thread(ensure_traversable, self.libvirt_qemu_dir)

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        root = spec.disks[0]
        if root.image is None:
            raise ProvisioningError(
                GuestFailure.BOOT_VOLUME_UNSUPPORTED,
                "booting from a volume is not supported by this agent yet",
            )
        owner = self.owners.owner(spec.uid) if self.owners is not None else None
        base = await self.images.ensure(root.image)
        if owner is not None:
            await asyncio.to_thread(disks.share_read_only, base.path)
            if self.libvirt_qemu_dir is not None:
                await asyncio.to_thread(ensure_traversable, self.libvirt_qemu_dir)
        root_disk = await self.files.ensure_root_disk(spec.uid, base, root.size_bytes, owner)
        seed_iso = self.files.seed_iso(spec.uid)
        # Rewritten on every ensure: cheap, and a newer generation may change its content.
        await asyncio.to_thread(
            seed.write_seed_iso,
            seed_iso,
            seed.seed_files(spec.cloud_init, spec.nics),
            (owner.uid, owner.gid) if owner is not None else None,
        )
        if spec.nics:
            await self.ensure_bridge()
        return NodeFacts(
            virt_type=self.virt_type,
            root_disk_path=str(root_disk),
            seed_iso_path=str(seed_iso),
            console_log_path=str(self.files.console_log(spec.uid)),
            bridge=self.bridge.name,
            owner=owner,
        )

    async def cleanup(self, uid: str) -> None:
        """Ports, files and the guest's user; each step goes on when another fails, and a
        failure is logged rather than raised: retrying a delete would not fix it."""
        try:
            await self.bridge.remove_ports(uid)
        except (process.CommandError, OSError) as exc:
            log.warning("guest %s: cannot list its OVS ports: %s", uid, exc)
        await asyncio.to_thread(self.files.remove, uid)
        if self.owners is not None:
            self.owners.release(uid)
        try:
            await self.images.collect()  # released or over-budget images this guest held
        except Exception as exc:
            # The guest is gone; a cache that cannot be tidied now is tidied next time.
            log.warning("guest %s: image cache collection failed: %s", uid, exc)


class FakeProvisioner:
    """Makes nothing; for the fake compute driver."""

    def __init__(self, directory: Path) -> None:
        self.files = GuestFiles(directory)

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        return NodeFacts(
            virt_type="qemu",
            root_disk_path=str(self.files.root_disk(spec.uid)),
            seed_iso_path=str(self.files.seed_iso(spec.uid)),
            console_log_path=str(self.files.console_log(spec.uid)),
            bridge="fake",
        )

    async def check_node(self) -> None:
        return None

    async def cleanup(self, uid: str) -> None:
        return None
