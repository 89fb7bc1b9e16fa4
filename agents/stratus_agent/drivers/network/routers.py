"""Routers on this node: one network namespace per router, as Neutron's L3 agent makes them.

A router joins Networks. In its namespace it has one OVS internal port per joined Network
(`qr...`, on the bridge the Network's guests are on, tagged with the Network's local VLAN
there, untagged for a flat one) holding the gateway address of each of the Network's
subnets, and IPv4 forwarding on: the kernel routes between the joined subnets. A router
with an external gateway also has a port on the external (provider) Network (`qg...`), a
default route via the external subnet's gateway and, with SNAT, iptables rules in its own
nat chain rewriting the source of whatever leaves that port from a joined subnet to the
port's first address.

Why namespaces: each router gets a routing table, neighbour table and firewall of its own,
so routers whose subnets overlap never see each other's routes, and removing a router is
deleting its namespace (and its ports). Nothing runs in the namespace: the kernel does the
forwarding, so a router survives an agent restart untouched, and `ensure` only compares and
repairs. Names are hashed with `node_tag`, so two simulated nodes on one kernel never share
a device or namespace.

IPv4 only: IPv6 addresses are left out (no IPv6 forwarding, no router advertisements).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from stratus_agent import process
from stratus_agent.drivers.network import netns_ports
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.guest import MAC_PATTERN
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

ROUTER_ID = "stratus-router"  # on each router port's OVS Interface: the router's UID
NETWORK_ID = "stratus-router-network"  # ... and the Network the port is on
SNAT_CHAIN = "stratus-snat"  # the router's own nat chain, jumped to from POSTROUTING
DNAT_CHAIN = "stratus-dnat"  # ... and from PREROUTING and OUTPUT
_MAC = re.compile(MAC_PATTERN)
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # an OVS bridge is also a device
_NODE_TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class RouterPort:
    """The router's leg on one Network: an OVS internal port on `bridge`, tagged
    `vlan_tag` (None: untagged, a flat Network), with `mac` and `addresses` (the subnets'
    gateway addresses, "address/prefixlen"; IPv6 ones are left out). Checked here: every
    field becomes an argument of ovs-vsctl or ip."""

    network_uid: str
    bridge: str
    vlan_tag: int | None
    mtu: int
    mac: str
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if not naming.is_uid(self.network_uid):
            raise ValueError(f"router port: {self.network_uid!r} is not a Network UID")
        where = f"router port on Network {self.network_uid}"
        if not _BRIDGE.fullmatch(self.bridge):
            raise ValueError(f"{where}: {self.bridge!r} is not a bridge name")
        if self.vlan_tag is not None and not 0 <= self.vlan_tag <= 4095:
            raise ValueError(f"{where}: VLAN tag {self.vlan_tag} is not in 0-4095")
        if not 68 <= self.mtu <= 65535:
            raise ValueError(f"{where}: MTU {self.mtu} is not in 68-65535")
        if not _MAC.fullmatch(self.mac):
            raise ValueError(f"{where}: {self.mac!r} is not a lower-case MAC address")
        for address in self.addresses:
            if "/" not in address:
                raise ValueError(f"{where}: {address!r} has no prefix length")
            ipaddress.ip_interface(address)  # ValueError names the bad address

    @property
    def interfaces(self) -> list[ipaddress.IPv4Interface]:
        """The IPv4 addresses, in the order given."""
        found = []
        for address in self.addresses:
            interface = ipaddress.ip_interface(address)
            if isinstance(interface, ipaddress.IPv4Interface) and interface not in found:
                found.append(interface)
        return found


@dataclass(frozen=True)
class Floating:
    """A floating address of the external port, mapped one-to-one onto `fixed`, a guest's
    address on a joined subnet."""

    address: ipaddress.IPv4Address
    fixed: ipaddress.IPv4Address


@dataclass(frozen=True)
class ExternalGateway:
    """The router's leg on an external (provider) Network: default route via `gateway`
    (None: no default route) and, with `snat`, the joined subnets' traffic leaving through
    it gets the port's first address as its source. Each of `floating` is an extra
    address of the port (a /32), its traffic sent on to its fixed address (DNAT), and what
    that fixed address sends out leaves with the floating one as its source (SNAT), with
    or without `snat`."""

    port: RouterPort
    gateway: str | None
    snat: bool
    floating: tuple[Floating, ...] = ()

    def __post_init__(self) -> None:
        where = f"external gateway on Network {self.port.network_uid}"
        if self.gateway is not None:
            address = ipaddress.ip_address(self.gateway)
            if not any(address in i.network for i in self.port.interfaces):
                raise ValueError(f"{where}: gateway {address} is in none of its subnets")
        if (self.snat or self.floating) and not self.port.interfaces:
            raise ValueError(f"{where}: SNAT needs an IPv4 address on the port")
        for mapped in self.floating:
            if not any(mapped.address in i.network for i in self.port.interfaces):
                raise ValueError(f"{where}: floating {mapped.address} is in none of its subnets")
        for attribute in ("address", "fixed"):
            values = [getattr(mapped, attribute) for mapped in self.floating]
            if len(set(values)) != len(values):
                raise ValueError(f"{where}: a floating {attribute} address is mapped twice")

    @property
    def addresses(self) -> set[str]:
        """The port's addresses: its own and the floating ones."""
        own = {i.with_prefixlen for i in self.port.interfaces}
        return own | {f"{mapped.address}/32" for mapped in self.floating}


# Names and rules: pure functions of (node tag, router UID, ...).


def namespace_name(node_tag: str, router_uid: str) -> str:
    """Namespace names have no 15-character limit: this one says whose it is, and `sweep`
    reads the router back from it."""
    return f"router-{node_tag}-{router_uid}"


def port_name(node_tag: str, router_uid: str, network_uid: str) -> str:
    """The router's port on a joined Network."""
    return netns_ports.hashed_name("qr", node_tag, router_uid, network_uid)


def gateway_port_name(node_tag: str, router_uid: str) -> str:
    """The router's port on its external Network (one at most)."""
    return netns_ports.hashed_name("qg", node_tag, router_uid)


def snat_rules(
    gateway_port: str, ports: Sequence[RouterPort], external: ExternalGateway | None
) -> list[str]:
    """The router's source NAT chain, as `iptables -S` prints it (so the chain read back
    compares equal): each floating address's fixed one first, then one rule per joined
    subnet (none without SNAT)."""
    if external is None:
        return []
    rules = [
        f"-A {SNAT_CHAIN} -s {f.fixed}/32 -o {gateway_port} -j SNAT --to-source {f.address}"
        for f in sorted(external.floating, key=lambda f: f.fixed)
    ]
    if external.snat:
        source = external.port.interfaces[0].ip
        subnets = sorted({i.network for port in ports for i in port.interfaces})
        rules += [
            f"-A {SNAT_CHAIN} -s {subnet} -o {gateway_port} -j SNAT --to-source {source}"
            for subnet in subnets
        ]
    return rules


def dnat_rules(external: ExternalGateway | None) -> list[str]:
    """The router's destination NAT chain, as `iptables -S` prints it: each floating
    address sent on to its fixed one, whichever port it came in on."""
    if external is None:
        return []
    return [
        f"-A {DNAT_CHAIN} -d {f.address}/32 -j DNAT --to-destination {f.fixed}"
        for f in sorted(external.floating, key=lambda f: f.address)
    ]


def _check(router_uid: str, ports: Sequence[RouterPort], external: ExternalGateway | None) -> None:
    """What the dataclasses cannot check alone: one port per Network, no subnet joined
    twice. ValueError before anything is touched."""
    if not naming.is_uid(router_uid):
        raise ValueError(f"{router_uid!r} is not a router UID")
    every = [*ports, *([external.port] if external else [])]
    networks = [port.network_uid for port in every]
    if len(set(networks)) != len(networks):
        raise ValueError(f"router {router_uid}: a Network is joined twice in {networks}")
    seen: dict[ipaddress.IPv4Network, str] = {}
    for port in every:
        for subnet in {i.network for i in port.interfaces}:
            if subnet in seen:
                raise ValueError(
                    f"router {router_uid}: subnet {subnet} is on Networks {seen[subnet]} "
                    f"and {port.network_uid}"
                )
            seen[subnet] = port.network_uid


class Routers:
    """The routers of this node; `node_tag` (e.g. its integration bridge) is hashed into
    every device name and set in every namespace name."""

    def __init__(self, state_dir: Path, node_tag: str, vsctl: str = "ovs-vsctl") -> None:
        if not _NODE_TAG.fullmatch(node_tag):
            raise ValueError(f"{node_tag!r} is not a node tag (letters, digits, _ . -)")
        # Routers keep no files (the kernel and OVS hold all their state); the directory is
        # where they would go.
        self.root = state_dir / "routers"
        self.node_tag = node_tag
        self._vsctl = vsctl
        # One change at a time: ensure/remove/sweep of one router must never interleave.
        self._lock = asyncio.Lock()

    def namespace(self, router_uid: str) -> str:
        return namespace_name(self.node_tag, router_uid)

    def port_name(self, router_uid: str, network_uid: str) -> str:
        return port_name(self.node_tag, router_uid, network_uid)

    def gateway_port_name(self, router_uid: str) -> str:
        return gateway_port_name(self.node_tag, router_uid)

    async def ensure(
        self, router_uid: str, ports: Sequence[RouterPort], external: ExternalGateway | None
    ) -> None:
        """Route between the joined Networks (and out through `external`), making or
        repairing whatever is missing and removing the ports of Networks no longer joined,
        an address or a NAT rule no longer wanted. Invalid input raises ValueError before
        anything is touched; a failing command ProvisioningError(NETWORK_SETUP_FAILED)."""
        _check(router_uid, ports, external)
        namespace = self.namespace(router_uid)
        wanted = {self.port_name(router_uid, port.network_uid): port for port in ports}
        gateway_port = self.gateway_port_name(router_uid)
        if external is not None:
            wanted[gateway_port] = external.port
        chains = {
            SNAT_CHAIN: (("POSTROUTING",), snat_rules(gateway_port, ports, external)),
            DNAT_CHAIN: (("PREROUTING", "OUTPUT"), dnat_rules(external)),
        }
        async with self._lock:
            try:
                await netns_ports.ensure_namespace(namespace)
                await netns_ports.ip("-n", namespace, "link", "set", "dev", "lo", "up")
                await netns_ports.ip("netns", "exec", namespace,
                                     "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")  # fmt: skip
                for name in sorted(await self._ports_of(router_uid) - set(wanted)):
                    await netns_ports.remove_port(self._vsctl, name)
                    log.info("router %s: removed port %s", router_uid, name)
                for name, port in wanted.items():
                    await netns_ports.ensure_internal_port(
                        self._vsctl, port.bridge, name, namespace, vlan_tag=port.vlan_tag,
                        mtu=port.mtu, mac=port.mac,
                        external_ids={ROUTER_ID: router_uid, NETWORK_ID: port.network_uid},
                    )  # fmt: skip
                    addresses = {i.with_prefixlen for i in port.interfaces}
                    if name == gateway_port and external is not None:
                        addresses = external.addresses
                    gone = await netns_ports.ensure_addresses(namespace, name, addresses)
                    await self._forget_connections(namespace, gone)
                gateway = external.gateway if external is not None else None
                await self._ensure_default_route(namespace, gateway_port, gateway)
                for chain, (hooks, rules) in chains.items():
                    await self._ensure_chain(router_uid, namespace, chain, hooks, rules)
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"router {router_uid} on {self.node_tag}: {exc}",
                ) from exc

    async def remove(self, router_uid: str) -> None:
        """Remove the router's ports and namespace (with its routes and rules); nothing if
        there are none. ProvisioningError(NETWORK_SETUP_FAILED) if one cannot be removed."""
        if not naming.is_uid(router_uid):
            raise ValueError(f"{router_uid!r} is not a router UID")
        async with self._lock:
            try:
                for name in sorted(await self._ports_of(router_uid)):
                    await netns_ports.remove_port(self._vsctl, name)
                await netns_ports.remove_namespace(self.namespace(router_uid))
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"router {router_uid} on {self.node_tag}: {exc}",
                ) from exc

    async def sweep(self, keep: Collection[str]) -> list[str]:
        """Remove every router of this node not in `keep` (what a crash or a missed DELETE
        left: namespaces, ports on any bridge); the UIDs removed. A router that cannot be
        removed is logged and skipped."""
        found = set((await self._ports_by_router()).values())
        prefix = namespace_name(self.node_tag, "")
        found |= {
            name.removeprefix(prefix) for name in await netns_ports.namespaces()
            if name.startswith(prefix) and naming.is_uid(name.removeprefix(prefix))
        }  # fmt: skip
        removed = []
        for router_uid in sorted(found - set(keep)):
            try:
                await self.remove(router_uid)
            except ProvisioningError as exc:
                log.warning("router %s: cannot remove its leftovers: %s", router_uid, exc)
                continue
            log.info("router %s: removed its leftovers", router_uid)
            removed.append(router_uid)
        return removed

    # The steps.

    async def _ports_by_router(self) -> dict[str, str]:
        """This node's router ports, on any bridge: port name -> router UID. A port is this
        node's when its name is the one this node tag gives it."""
        found = {}
        for name, ids in (await netns_ports.ports_with_external_id(self._vsctl, ROUTER_ID)).items():
            router_uid = ids[ROUTER_ID]
            if not naming.is_uid(router_uid):
                continue
            ours = {self.gateway_port_name(router_uid)}
            if naming.is_uid(ids.get(NETWORK_ID, "")):
                ours.add(self.port_name(router_uid, ids[NETWORK_ID]))
            if name in ours:
                found[name] = router_uid
        return found

    async def _ports_of(self, router_uid: str) -> set[str]:
        return {name for name, uid in (await self._ports_by_router()).items() if uid == router_uid}

    async def _ensure_default_route(self, namespace: str, port: str, gateway: str | None) -> None:
        if gateway is not None:
            await netns_ports.ip("-n", namespace, "route", "replace", "default",
                                 "via", gateway, "dev", port)  # fmt: skip
            return
        out = (await netns_ports.ip("-n", namespace, "-j", "-4", "route", "show", "default")).stdout
        for _ in json.loads(out or "[]"):
            await netns_ports.ip("-n", namespace, "route", "del", "default")

    async def _iptables(self, namespace: str, *args: str, stdin: str | None = None) -> str:
        argv = ("ip", "netns", "exec", namespace, *args)
        return (await process.run(*argv, stdin=stdin, timeout=30)).stdout

    async def _ensure_chain(
        self, router_uid: str, namespace: str, chain: str, hooks: Sequence[str],
        rules: list[str],
    ) -> None:  # fmt: skip
        """Exactly `rules` in the router's nat chain `chain`, jumped to once from each of
        `hooks`; no chain and no jump when there are none. Rewritten (in one
        iptables-restore transaction, so no packet sees half a chain) only when it differs,
        so an unchanged chain keeps its counters."""
        current = (
            await self._iptables(namespace, "iptables", "-w", "-t", "nat", "-S")
        ).splitlines()
        exists = f"-N {chain}" in current
        jumps = {hook: current.count(f"-A {hook} -j {chain}") for hook in hooks}
        present = [line for line in current if line.startswith(f"-A {chain} ")]
        lines: list[str] = []
        if rules:
            if exists and set(jumps.values()) == {1} and present == rules:
                return
            lines = [f":{chain} - [0:0]", *rules]  # declaring the chain flushes it
            for hook, count in jumps.items():
                extra = [f"-D {hook} -j {chain}"] * (count - 1)
                lines += extra if count else [f"-A {hook} -j {chain}"]
        elif exists or any(jumps.values()):
            lines = [f"-D {hook} -j {chain}" for hook, count in jumps.items() for _ in range(count)]
            lines += [f"-F {chain}", f"-X {chain}"] if exists else []
        else:
            return
        text = "\n".join(["*nat", *lines, "COMMIT", ""])
        await self._iptables(namespace, "iptables-restore", "-w", "--noflush", stdin=text)
        log.info("router %s: %d rules in %s", router_uid, len(rules), chain)

    async def _forget_connections(self, namespace: str, removed: Collection[str]) -> None:
        """Drop the tracked connections of addresses the router no longer has (a floating
        address taken away): without this, a connection made through it before would go
        on through the NAT its conntrack entry remembers."""
        for address in sorted(removed):
            ip = address.split("/")[0]
            for direction in ("--orig-dst", "--reply-dst"):
                # Exit status 1 when there was nothing to delete.
                await process.run("ip", "netns", "exec", namespace, "conntrack", "-D",
                                  direction, ip, timeout=30, check=False)  # fmt: skip
