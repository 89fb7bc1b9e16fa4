"""The OVS network driver: one Open vSwitch bridge on the node, through ovs-vsctl, with a
local VLAN tag per Network on it (local_vlans.py), so Networks are isolated on the node.

libvirt plugs each NIC itself (`<virtualport type='openvswitch'/>`, `<vlan>` with the tag)
and tags the OVS Interface with external_ids:vm-id = the domain UUID, which is the Instance
UID; that tag is how leftover ports of a guest are found and removed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from stratus_agent import process
from stratus_agent.base import NicBinding
from stratus_agent.drivers.network.local_vlans import LocalVlans
from stratus_agent.errors import ProvisioningError
from stratus_api.guest import Nic
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.network import NetworkType

log = logging.getLogger(__name__)


class OvsBridge:
    def __init__(self, name: str, datapath_type: str, vsctl: str = "ovs-vsctl") -> None:
        self.name = name
        self.datapath_type = datapath_type
        self._vsctl = vsctl

    async def _vsctl_run(self, *args: str) -> str:
        return (await process.run(self._vsctl, "--timeout=10", *args)).stdout

    async def exists(self) -> bool:
        # br-exists answers 2 for "no such bridge"; anything else is a real failure.
        result = await process.run(self._vsctl, "--timeout=10", "br-exists", self.name, check=False)
        if result.code in (0, 2):
            return result.code == 0
        raise process.CommandError(
            (self._vsctl, "br-exists", self.name), result.code, result.stderr
        )

    async def ensure(self) -> bool:
        """Make the bridge unless it exists (a read-only check, cheap enough for every
        guest); True if it had to be made."""
        if await self.exists():
            return False
        await self._vsctl_run(
            "--may-exist", "add-br", self.name,
            "--", "set", "Bridge", self.name, f"datapath_type={self.datapath_type}",
        )  # fmt: skip
        return True

    async def ports_of(self, instance_uid: str) -> list[str]:
        """OVS ports (interface names) plugged for an Instance."""
        out = await self._vsctl_run(
            "--format=json", "--columns=name", "find", "Interface",
            f"external_ids:vm-id={instance_uid}",
        )  # fmt: skip
        return sorted(row[0] for row in json.loads(out)["data"])

    async def port_tags(self) -> dict[str, int | None]:
        """Every port on the bridge with its VLAN tag (None: untagged)."""
        out = await self._vsctl_run("--format=json", "--columns=name,tag", "list", "Port")
        ports = set((await self._vsctl_run("list-ports", self.name)).split())
        found: dict[str, int | None] = {}
        for name, tag in json.loads(out)["data"]:
            if name in ports:
                # OVSDB JSON: an empty optional column is ["set", []].
                found[name] = tag if isinstance(tag, int) else None
        return found

    async def remove_ports(self, instance_uid: str) -> list[str]:
        """Remove the Instance's ports; a port that cannot be removed is logged and skipped,
        so the others still go."""
        removed = []
        for port in await self.ports_of(instance_uid):
            try:
                await self._vsctl_run("--if-exists", "del-port", port)
            except process.CommandError as exc:
                log.warning("cannot remove OVS port %s of %s: %s", port, instance_uid, exc)
                continue
            removed.append(port)
        return removed


class OvsNetworkDriver:
    """Every NIC on the one bridge, in its Network's local VLAN."""

    def __init__(
        self, bridge: OvsBridge, vlans: LocalVlans, providers: dict[str, OvsBridge] | None = None
    ) -> None:
        """`providers`: each physical network's bridge (the node admin's)."""
        self.bridge = bridge
        self.vlans = vlans
        self.providers = providers or {}
        self._bridge_ready = asyncio.Lock()
        self._tags = asyncio.Lock()  # tags are given and released one change at a time

    async def ensure_node(self) -> None:
        """Checked on every plug and by the periodic check, never cached: someone may delete
        the bridge (ovs-vsctl del-br) while the agent runs."""
        async with self._bridge_ready:
            try:
                if await self.bridge.ensure():
                    log.info("OVS bridge %s was missing: made it", self.bridge.name)
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"OVS bridge {self.bridge.name} cannot be ensured: {exc}",
                ) from exc

    async def plug(self, uid: str, nics: Sequence[Nic]) -> tuple[NicBinding, ...]:
        if nics:
            await self.ensure_node()
        bindings = []
        for index, nic in enumerate(nics):
            if nic.network_type is NetworkType.OVERLAY:
                async with self._tags:
                    tag = await asyncio.to_thread(self.vlans.tag_of, nic.network_uid)
                bindings.append(NicBinding(bridge=self.bridge.name, vlan_tag=tag))
            else:
                bindings.append(await self._provider(index, nic))
        return tuple(bindings)

    async def _provider(self, index: int, nic: Nic) -> NicBinding:
        """A vlan NIC on its physical network's bridge with the VLAN id as its tag; a flat
        one untagged."""
        where = f"NIC {index} (Network {nic.network})"
        bridge = self.providers.get(nic.physical_network or "")
        if bridge is None:
            mapped = ", ".join(sorted(self.providers)) or "none"
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED,
                f"{where}: physical network {nic.physical_network} has no bridge on this node "
                f"(agent config network.physical_networks maps {mapped})",
            )
        try:
            present = await bridge.exists()
        except (process.CommandError, OSError) as exc:
            raise ProvisioningError(GuestFailure.NETWORK_SETUP_FAILED, f"{where}: {exc}") from exc
        if not present:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED,
                f"{where}: bridge {bridge.name} of physical network {nic.physical_network} "
                "does not exist (the node admin makes it, with its uplink)",
            )
        tag = nic.segmentation_id if nic.network_type is NetworkType.VLAN else None
        return NicBinding(bridge=bridge.name, vlan_tag=tag)

    async def unplug(self, uid: str) -> None:
        """Remove the guest's ports; a Network none of whose ports is left on the node
        gives its tag back."""
        async with self._tags:
            try:
                before = await self.bridge.port_tags()
                removed = await self.bridge.remove_ports(uid)
                left = {tag for port, tag in before.items() if port not in removed}
            except (process.CommandError, OSError) as exc:
                log.warning("guest %s: cannot list its OVS ports: %s", uid, exc)
                return
            freed = {before.get(port) for port in removed} - left - {None}
            released = await asyncio.to_thread(self.vlans.release, {t for t in freed if t})
            for network in released:
                log.info("network %s: no guest left on this node; its local VLAN is free",
                         network)  # fmt: skip

    async def check(self) -> None:
        await self.ensure_node()
