"""Address rules for NICs: reserved addresses, MAC checks and derivation. Pure; the
per-Network ledger (addressing.py) keeps what is in use."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from stratus_api.v1alpha1.network import IPAddress, NetworkSpec, Subnet, parse_cidr

MAC_PREFIX = "52:54:00"  # QEMU's locally administered range


class IpamError(Exception):
    """The request cannot be met; `field` names the Instance field to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class AddressInUse(IpamError):
    """The address asked for is another owner's."""


@dataclass(frozen=True)
class Allocation:
    address: str
    prefix_length: int
    gateway: str | None
    dns_servers: tuple[str, ...]


def reserved(subnet: Subnet) -> set[IPAddress]:
    """Addresses of a subnet never handed out: network, broadcast, gateway."""
    network = subnet.network
    out: set[IPAddress] = {network.network_address}
    if network.version == 4 and network.prefixlen < 31:
        out.add(network.broadcast_address)
    if subnet.gateway:
        out.add(ipaddress.ip_address(subnet.gateway))
    return out


def pool_size(spec: NetworkSpec) -> int:
    """How many addresses the Network can hand out: its pools (a subnet without pools is
    one), less the reserved addresses inside them."""
    total = 0
    for subnet in spec.subnets:
        pools = [parse_cidr(p) for p in subnet.allocation_pools or []] or [subnet.network]
        taken = reserved(subnet)
        total += sum(p.num_addresses - sum(1 for a in taken if a in p) for p in pools)
    return total


def check_mac(mac: str, used: set[str], field: str) -> str:
    """A fixed MAC, refused as a fixed IP is: when another NIC of the network has it, or it
    cannot be a NIC's (all zeros, multicast)."""
    octets = [int(part, 16) for part in mac.split(":")]
    if not any(octets):
        raise IpamError(field, f"{mac} is not a usable MAC address (all zeros)")
    if octets[0] & 1:
        raise IpamError(field, f"{mac} is a multicast MAC address")
    if mac in used:
        raise IpamError(field, f"{mac} is already in use on this network")
    return mac


def mac_for(uid: str, index: int, used: set[str]) -> str:
    """A MAC derived from the Instance UID, so a retry picks the same one; re-derived on the
    rare collision with one in use."""
    for attempt in range(1000):
        digest = hashlib.sha256(f"{uid}/{index}/{attempt}".encode()).digest()
        mac = f"{MAC_PREFIX}:{digest[0]:02x}:{digest[1]:02x}:{digest[2]:02x}"
        if mac not in used:
            return mac
    raise IpamError("spec.networks", "no free MAC address")  # pragma: no cover - 2^24 space
