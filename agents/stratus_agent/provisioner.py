"""Node-side preparation of a guest: image, root disk, seed ISO, bridge."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from stratus_agent import seed
from stratus_agent.compute.domain_builder import NodeFacts
from stratus_agent.disks import GuestFiles
from stratus_agent.errors import ProvisioningError
from stratus_agent.images import ImageCache
from stratus_agent.ovs import OvsBridge
from stratus_api.guest import GuestSpec
from stratus_api.reasons import GuestFailure

VirtType = Literal["kvm", "qemu"]


class NodeProvisioner:
    """Real files on the node: cached base image, qcow2 overlay, seed ISO; OVS bridge."""

    def __init__(
        self, images: ImageCache, files: GuestFiles, bridge: OvsBridge, virt_type: VirtType
    ) -> None:
        self.images = images
        self.files = files
        self.bridge = bridge
        self.virt_type: VirtType = virt_type
        self._bridge_ready = asyncio.Lock()
        self._bridge_ok = False

    async def _ensure_bridge(self) -> None:
        async with self._bridge_ready:
            if not self._bridge_ok:
                await self.bridge.ensure()
                self._bridge_ok = True

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        root = spec.disks[0]
        if root.image is None:
            raise ProvisioningError(
                GuestFailure.BOOT_VOLUME_UNSUPPORTED,
                "booting from a volume is not supported by this agent yet",
            )
        base = await self.images.ensure(root.image)
        root_disk = await self.files.ensure_root_disk(spec.uid, base, root.size_bytes)
        seed_iso = self.files.seed_iso(spec.uid)
        # Rewritten on every ensure: cheap, and a newer generation may change its content.
        await asyncio.to_thread(
            seed.write_seed_iso, seed_iso, seed.seed_files(spec.cloud_init, spec.nics)
        )
        if spec.nics:
            await self._ensure_bridge()
        return NodeFacts(
            virt_type=self.virt_type,
            root_disk_path=str(root_disk),
            seed_iso_path=str(seed_iso),
            console_log_path=str(self.files.console_log(spec.uid)),
            bridge=self.bridge.name,
        )

    async def cleanup(self, uid: str) -> None:
        await self.bridge.remove_ports(uid)
        await asyncio.to_thread(self.files.remove, uid)
        await self.images.collect()  # released or over-budget images this guest held


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

    async def cleanup(self, uid: str) -> None:
        return None
