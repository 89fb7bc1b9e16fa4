"""The OVS network driver: one Open vSwitch bridge on the node, through ovs-vsctl, with a
local VLAN tag per Network on it (local_vlans.py), so Networks are isolated on the node; with
a tunnel configured, overlay Networks reach their guests on other nodes (tunnels.py); each
overlay Network with DHCP on in its node spec gets a DHCP server for its local guests
(dhcp.py), with their NICs as reservations (guest_nics.py); routers this node is the active
node of get a namespace each (routers.py) with a port where each joined Network is here.

libvirt plugs each NIC itself (`<virtualport type='openvswitch'/>`, `<vlan>` with the tag)
and tags the OVS Interface with external_ids:vm-id = the domain UUID, which is the Instance
UID; that tag is how leftover ports of a guest are found and removed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from stratus_agent import process
from stratus_agent.base import NicBinding
from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_agent.drivers.network.dhcp import DhcpHost, DhcpServers
from stratus_agent.drivers.network.guest_nics import GuestNic, GuestNics
from stratus_agent.drivers.network.local_vlans import LocalVlans
from stratus_agent.drivers.network.port_security import PortSecurity
from stratus_agent.drivers.network.routers import (
    ExternalGateway,
    Floating,
    RouterPort,
    Routers,
)
from stratus_agent.drivers.network.spec_files import SpecFiles
from stratus_agent.drivers.network.tunnels import OverlaySegment, TunnelBridge
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.guest import Nic
from stratus_api.network_wire import NodeNetworkSpec
from stratus_api.reasons import GuestFailure
from stratus_api.router_wire import NodeRouterSpec, RouterPortSpec
from stratus_api.security_group_wire import NodeSecurityGroupSpec
from stratus_api.v1alpha1.network import NetworkType

log = logging.getLogger(__name__)
T = TypeVar("T")


class OvsNetworkDriver:
    """Every NIC on the one bridge, in its Network's local VLAN."""

    def __init__(
        self,
        bridge: OvsBridge,
        vlans: LocalVlans,
        providers: dict[str, OvsBridge] | None = None,
        *,
        specs: SpecFiles[NodeNetworkSpec],
        tunnel: TunnelBridge | None = None,
        local_ip: str | None = None,
        dhcp: dict[str, DhcpServers] | None = None,
        guest_nics: GuestNics | None = None,
        routers: Routers | None = None,
        router_specs: SpecFiles[NodeRouterSpec] | None = None,
        security: PortSecurity | None = None,
    ) -> None:
        """`providers`: each physical network's bridge (the node admin's). `specs`: where
        node network specs are kept (read now: blocking). `tunnel`: the overlay to other
        nodes, reached at `local_ip` (None: overlay Networks stay on the node). `dhcp`: the
        DHCP servers on each bridge (integration and providers'), by bridge name."""
        self.bridge = bridge
        self.vlans = vlans
        self.providers = providers or {}
        self.tunnel = tunnel
        self.local_ip = local_ip
        self._spec_files = specs
        self._specs = specs.load()
        self._bridge_ready = asyncio.Lock()
        self._tags = asyncio.Lock()  # tags are given and released one change at a time
        self._overlay = asyncio.Lock()  # the tunnel bridge is rebuilt one change at a time
        self.dhcp = dhcp or {}
        self._guest_nics = guest_nics
        self._dhcp_lock = asyncio.Lock()
        self.routers = routers
        self._router_files = router_specs
        self._routers = router_specs.load() if router_specs is not None else {}
        self.security = security

    async def ensure_node(self) -> None:
        """The integration bridge, and the tunnel bridge with its ports and flows. Checked
        by the periodic check, never cached: someone may delete a bridge (ovs-vsctl del-br)
        or its flows while the agent runs."""
        await self._ensure_bridge()
        await self._sync_overlay()
        await self._sync_dhcp(set(self._served()) if self._guest_nics else set(), sweep=True)
        await self._sync_routers()
        await self._sync_security(strict=True)

    async def _ensure_bridge(self) -> None:
        async with self._bridge_ready:
            try:
                if await self.bridge.ensure():
                    log.info("OVS bridge %s was missing: made it", self.bridge.name)
                    if self.security is not None:
                        self.security.bridge_made()
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"OVS bridge {self.bridge.name} cannot be ensured: {exc}",
                ) from exc

    async def plug(self, uid: str, nics: Sequence[Nic]) -> tuple[NicBinding, ...]:
        if nics:
            await self._ensure_bridge()
        bindings = []
        for index, nic in enumerate(nics):
            if nic.network_type is NetworkType.OVERLAY:
                async with self._tags:
                    tag = await asyncio.to_thread(self.vlans.tag_of, nic.network_uid)
                bindings.append(self._binding(self.bridge, tag))
            else:
                bindings.append(await self._provider(index, nic))
        if any(nic.network_type is NetworkType.OVERLAY for nic in nics):
            await self._sync_overlay()  # a Network new on the node gets its flows
        await self._record_nics(uid, nics)
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
        return self._binding(bridge, tag)

    @staticmethod
    def _binding(bridge: OvsBridge, tag: int | None) -> NicBinding:
        return NicBinding(
            bridge=bridge.name, vlan_tag=tag, host_checksum=bridge.datapath_type != "netdev"
        )

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
        if released:
            try:
                await self._sync_overlay()  # their flows go with their tags
            except ProvisioningError as exc:
                log.warning("guest %s unplugged, overlay not updated yet: %s", uid, exc)
        await self._record_nics(uid, ())

    async def check(self) -> None:
        await self.ensure_node()

    async def ensure_network(self, spec: NodeNetworkSpec) -> None:
        """Keep the Network's node spec (replacing the one before) and rebuild the overlay
        with it; kept even when the overlay cannot be rebuilt now (the periodic check
        tries again)."""
        await asyncio.to_thread(self._spec_files.save, spec.uid, spec)
        self._specs[spec.uid] = spec
        await self._sync_overlay()
        await self._sync_dhcp({spec.uid})

    async def remove_network(self, uid: str) -> bool:
        """Forget the Network's node spec and its overlay flows; True if there was one."""
        removed = await asyncio.to_thread(self._spec_files.remove, uid)
        held = self._specs.pop(uid, None) is not None
        await self._sync_overlay()
        await self._sync_dhcp({uid})
        return removed or held

    def networks(self) -> list[str]:
        return sorted(self._specs)

    def network(self, uid: str) -> NodeNetworkSpec | None:
        return self._specs.get(uid)

    def _segments(self) -> list[OverlaySegment]:
        """The overlay Networks with a guest here (a local tag) and a node spec."""
        tags = self.vlans.tags()
        segments = []
        for uid, spec in self._specs.items():
            tag = tags.get(uid)
            if spec.type is NetworkType.OVERLAY and spec.segmentation_id and tag is not None:
                peers = tuple(p for p in spec.peers if p.endpoint != self.local_ip)
                segments.append(OverlaySegment(spec.segmentation_id, tag, peers))
        return segments

    async def _sync_overlay(self) -> None:
        if self.tunnel is None:
            return
        async with self._overlay:
            try:
                await self.tunnel.ensure()
                await self.tunnel.apply(self._segments())
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"tunnel bridge {self.tunnel.bridge.name} cannot be ensured: {exc}",
                ) from exc

    async def _record_nics(self, uid: str, nics: Sequence[Nic]) -> None:
        if self._guest_nics is None:
            return
        book = self._guest_nics
        found = tuple(
            GuestNic(
                n.network_uid, n.mac, n.address, naming.tap_name(uid, index),
                # Filtered on the integration bridge only, where overlay NICs are.
                tuple(n.security_groups)
                if n.security_groups is not None and n.network_type is NetworkType.OVERLAY
                else None,
            )
            for index, n in enumerate(nics)
        )  # fmt: skip
        changed = await asyncio.to_thread(book.record, uid, found)
        await self._sync_dhcp(changed)
        await self._sync_security()

    async def _sync_dhcp(self, network_uids: set[str], *, sweep: bool = False) -> None:
        """A DHCP server for each of these Networks that has one here (a local guest, DHCP
        subnets in its spec), with its guests' reservations; none for the others. Failures
        are logged, not raised: the guests have their static addresses from the seed, and
        the periodic check tries again."""
        if not self.dhcp or self._guest_nics is None:
            return
        async with self._dhcp_lock:
            served = self._served()
            for uid in sorted(network_uids):
                try:
                    await self._sync_dhcp_of(uid, served.get(uid))
                except (ProvisioningError, ValueError) as exc:
                    log.warning("network %s: DHCP server not in order yet: %s", uid, exc)
            if sweep:
                for servers in self.dhcp.values():
                    for leftover in await servers.sweep(served):
                        log.info("network %s: removed its leftover DHCP server", leftover)
        await self._sync_security()  # a new DHCP port is dropped until the table knows it

    def _served(self) -> dict[str, tuple[OvsBridge, int | None]]:
        """The Networks with a DHCP server here, with the bridge and tag its port gets: the
        integration bridge and the local VLAN for an overlay Network with a local guest, the
        provider bridge and the VLAN id (flat: untagged) for the others with one."""
        assert self._guest_nics is not None
        tags = self.vlans.tags()
        found: dict[str, tuple[OvsBridge, int | None]] = {}
        for uid, spec in self._specs.items():
            if not spec.dhcp:
                continue
            if spec.type is NetworkType.OVERLAY:
                if uid in tags:
                    found[uid] = (self.bridge, tags[uid])
            elif self._guest_nics.on_network(uid):
                bridge = self.providers.get(spec.physical_network or "")
                if bridge is not None:
                    vlan = spec.segmentation_id if spec.type is NetworkType.VLAN else None
                    found[uid] = (bridge, vlan)
        return found

    async def _sync_dhcp_of(self, uid: str, where: tuple[OvsBridge, int | None] | None) -> None:
        assert self._guest_nics is not None
        spec = self._specs.get(uid)
        for name, servers in self.dhcp.items():
            if spec is None or where is None or where[0].name != name:
                await servers.remove(uid)  # not served there (any more)
                continue
            nics = self._guest_nics.on_network(uid)
            hosts = [DhcpHost(nic.mac, nic.address) for nic in nics if nic.address]
            await servers.ensure(
                uid, where[1], spec.mtu, spec.dhcp, hosts, spec.names, spec.namespace
            )

    # Security groups.

    async def ensure_security_group(self, spec: NodeSecurityGroupSpec) -> None:
        await self._require_security().ensure(spec)

    async def remove_security_group(self, uid: str) -> bool:
        return await self._require_security().remove(uid)

    def security_group_uids(self) -> list[str]:
        return self.security.uids() if self.security is not None else []

    def security_group(self, uid: str) -> NodeSecurityGroupSpec | None:
        return self.security.spec(uid) if self.security is not None else None

    async def secure(self, uid: str) -> None:
        await self._sync_security()

    def _require_security(self) -> PortSecurity:
        if self.security is None:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED, "this agent filters no ports"
            )
        return self.security

    async def _sync_security(self, *, strict: bool = False) -> None:
        """The firewall table again; a failure is logged (`strict`: raised) and the periodic
        check tries again, while new ports stay closed."""
        if self.security is None:
            return
        try:
            await self.security.sync()
        except ProvisioningError as exc:
            if strict:
                raise
            log.warning("%s", exc)

    # Routers.

    async def ensure_router(self, spec: NodeRouterSpec) -> None:
        """Keep the router's node spec (replacing the one before) and build it: a port
        where each of its Networks is on this node (their node specs say where). Kept even
        when it cannot be built now (the periodic check tries again)."""
        routers, files = self._require_routers()
        await asyncio.to_thread(files.save, spec.uid, spec)
        self._routers[spec.uid] = spec
        await self._build_router(routers, spec)

    async def remove_router(self, uid: str) -> bool:
        """This node is the router's node no more: remove it and forget its spec; True if
        there was one. A local VLAN its ports alone held is freed."""
        routers, files = self._require_routers()
        held = self._routers.pop(uid, None) is not None
        removed = await asyncio.to_thread(files.remove, uid)
        await self._releasing_tags(lambda: routers.remove(uid))
        return removed or held

    def router_uids(self) -> list[str]:
        return sorted(self._routers)

    def router(self, uid: str) -> NodeRouterSpec | None:
        return self._routers.get(uid)

    def _require_routers(self) -> tuple[Routers, SpecFiles[NodeRouterSpec]]:
        if self.routers is None or self._router_files is None:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED, "this agent builds no routers"
            )
        return self.routers, self._router_files

    async def _build_router(self, routers: Routers, spec: NodeRouterSpec) -> None:
        tagged = self.vlans.tags()
        ports = [await self._router_port(spec, port) for port in spec.ports]
        external = None
        if spec.external is not None:
            gateway = spec.external
            floating = tuple(
                Floating(ipaddress.IPv4Address(f.address), ipaddress.IPv4Address(f.fixed))
                for f in spec.floating
            )
            external = ExternalGateway(
                await self._router_port(spec, gateway), gateway.gateway, gateway.snat, floating
            )
        if self.vlans.tags() != tagged:
            # A Network new on the node through this router gets its overlay flows (only
            # then: the periodic check rebuilds every router, and syncs the overlay itself).
            await self._sync_overlay()
        try:
            await self._releasing_tags(lambda: routers.ensure(spec.uid, ports, external))
        except ValueError as exc:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED, f"router {spec.namespace}/{spec.name}: {exc}"
            ) from exc
        await self._sync_security()  # its new ports are dropped until the table knows them

    async def _router_port(self, spec: NodeRouterSpec, port: RouterPortSpec) -> RouterPort:
        """Where the router's port on `port.network` goes: the integration bridge in the
        Network's local VLAN (given now if the Network had none here), or its provider
        bridge with its VLAN id (flat: untagged)."""
        network = self._specs.get(port.network)
        where = f"router {spec.namespace}/{spec.name}"
        if network is None:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED,
                f"{where}: Network {port.network} has no node spec here yet",
            )
        if network.type is NetworkType.OVERLAY:
            async with self._tags:
                tag: int | None = await asyncio.to_thread(self.vlans.tag_of, network.uid)
            bridge = self.bridge.name
        else:
            provider = self.providers.get(network.physical_network or "")
            if provider is None:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"{where}: physical network {network.physical_network} of Network "
                    f"{network.namespace}/{network.name} has no bridge on this node",
                )
            bridge = provider.name
            tag = network.segmentation_id if network.type is NetworkType.VLAN else None
        return RouterPort(port.network, bridge, tag, network.mtu, port.mac, tuple(port.addresses))

    async def _releasing_tags(self, change: Callable[[], Awaitable[T]]) -> T:
        """Run `change` (which removes router ports); a local VLAN no port carries any
        more afterwards is freed, with its overlay flows. Only tags of removed ports are
        looked at, so a tag just given to a guest that libvirt has not plugged yet stays.
        `change` is started only once the tags are read (a bridge that is gone fails
        first, and nothing is left half begun)."""
        async with self._tags:
            before = await self.bridge.port_tags()
            try:
                result = await change()
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(GuestFailure.NETWORK_SETUP_FAILED, str(exc)) from exc
            after = await self.bridge.port_tags()
            gone = {tag for port, tag in before.items() if port not in after} - set(after.values())
            released = await asyncio.to_thread(self.vlans.release, {t for t in gone if t})
        if released:
            await self._sync_overlay()
        return result

    async def _sync_routers(self) -> None:
        """Periodic: rebuild every kept router (repairing drift) and remove routers of this
        node that no spec names. Failures are logged; the next check tries again."""
        if self.routers is None:
            return
        for spec in list(self._routers.values()):
            try:
                await self._build_router(self.routers, spec)
            except ProvisioningError as exc:
                log.warning("router %s/%s not in order yet: %s", spec.namespace, spec.name, exc)
        routers, kept = self.routers, set(self._routers)
        for uid in await self._releasing_tags(lambda: routers.sweep(kept)):
            log.info("router %s: removed its leftovers (no spec names it)", uid)
