"""Addresses per Network: a typed ledger of the IPs and MACs its NICs hold.

Built once per Network from the Instances' status (what earlier runs handed out), then kept
in step as NICs are allocated and released, so one allocation costs the same on a Network
with 10 or 10,000 NICs: a cursor walks the pools, and the first free address after it wins.
Pure: the caller supplies the facts and keeps the ledger.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from stratus_api.v1alpha1.network import (
    IPAddress,
    NetworkSpec,
    Subnet,
    check_fixed_ip,
    parse_cidr,
)
from stratus_operator.controllers import ipam


@dataclass(frozen=True)
class Address:
    ip: str
    mac: str


class NetworkLedger:
    """One Network's NIC addresses, by Instance UID (one NIC per Network per Instance)."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self._held: dict[str, Address] = {}
        self._ips: set[str] = set()
        self._macs: set[str] = set()
        self._cursor = 0
        # Every subnet's pools in the spec's order, walked by one cursor: once a subnet is
        # full, addresses come from the next.
        self._pools = [
            pool
            for subnet in spec.subnets
            for pool in [parse_cidr(p) for p in subnet.allocation_pools or []] or [subnet.network]
        ]
        self._reserved = {str(a) for subnet in spec.subnets for a in ipam.reserved(subnet)}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, uid: str) -> Address | None:
        return self._held.get(uid)

    def hold(self, uid: str, address: Address) -> None:
        """Record an address handed out earlier (rebuilding from status)."""
        self.release(uid)
        self._held[uid] = address
        self._ips.add(address.ip)
        self._macs.add(address.mac)

    def release(self, uid: str) -> None:
        address = self._held.pop(uid, None)
        if address is not None:
            self._ips.discard(address.ip)
            self._macs.discard(address.mac)

    def allocate(
        self, uid: str, index: int, fixed_ip: str | None, fixed_mac: str | None, field: str
    ) -> Address:
        """The NIC's address: the one it holds, else a new one (fixed or the next free);
        IpamError names the field when it cannot be had."""
        known = self._held.get(uid)
        if known is not None:
            return known
        ip = self._fixed_ip(fixed_ip, f"{field}.ip") if fixed_ip else self._next_free(f"{field}.ip")
        if fixed_mac is not None:
            mac = ipam.check_mac(fixed_mac, self._macs, f"{field}.mac")
        else:
            mac = ipam.mac_for(uid, index, self._macs)
        address = Address(ip, mac)
        self.hold(uid, address)
        return address

    def allocate_address(self, owner: str, wanted: str | None, field: str) -> str:
        """An address without a MAC (a floating one): `wanted` (IpamError naming `field`
        when it is outside the pools or held by another), else the one `owner` holds, else
        the next free one. A different `wanted` replaces the one held."""
        known = self._held.get(owner)
        if known is not None and (wanted is None or _same(wanted, known.ip)):
            return known.ip
        ip = self._fixed_ip(wanted, field) if wanted else self._next_free(field)
        self.hold(owner, Address(ip, ""))
        return ip

    def allocate_service(self, owner: str, subnet: Subnet) -> str:
        """An address for a node's service port (a DHCP server) in `subnet`: the one
        `owner` holds, else the highest free one of the subnet's pools, far from where
        Instances' addresses start. IpamError when the subnet is full."""
        known = self._held.get(owner)
        if known is not None:
            return known.ip
        pools = [parse_cidr(p) for p in subnet.allocation_pools or []] or [subnet.network]
        for pool in reversed(pools):
            # Among any len(taken) + 1 consecutive candidates one is free, if any is.
            for step in range(min(pool.num_addresses, len(self._ips) + len(self._reserved) + 1)):
                candidate = str(pool.broadcast_address - step)
                if candidate not in self._ips and candidate not in self._reserved:
                    self.hold(owner, Address(candidate, ""))
                    return candidate
        raise ipam.IpamError("spec.subnets", f"no free address left in {subnet.cidr}")

    def _fixed_ip(self, fixed: str, field: str) -> str:
        problem = check_fixed_ip(self.spec, fixed)
        if problem is not None:
            raise ipam.IpamError(field, problem)
        if str(ipaddress.ip_address(fixed)) in self._ips:
            raise ipam.AddressInUse(field, f"{fixed} is already in use on this network")
        return str(ipaddress.ip_address(fixed))

    def _next_free(self, field: str) -> str:
        total = sum(pool.num_addresses for pool in self._pools)
        # Among any len(taken) + 1 consecutive candidates one is free, if any is.
        for step in range(min(total, len(self._ips) + len(self._reserved) + 1)):
            candidate = str(self._address_at((self._cursor + step) % total))
            if candidate not in self._ips and candidate not in self._reserved:
                self._cursor = (self._cursor + step + 1) % total
                return candidate
        cidrs = ", ".join(subnet.cidr for subnet in self.spec.subnets)
        raise ipam.IpamError(field, f"no free address left in {cidrs}")

    def _address_at(self, index: int) -> IPAddress:
        for pool in self._pools:
            if index < pool.num_addresses:
                return pool.network_address + index
            index -= pool.num_addresses
        raise IndexError(index)  # pragma: no cover - index is taken modulo the total


def _same(one: str, other: str) -> bool:
    return ipaddress.ip_address(one) == ipaddress.ip_address(other)


def describe(spec: NetworkSpec, ip: str) -> ipam.Allocation:
    """Prefix, gateway and DNS servers of the subnet holding `ip`."""
    address = ipaddress.ip_address(ip)
    subnet = next(s for s in spec.subnets if address in s.network)
    return ipam.Allocation(
        ip, subnet.network.prefixlen, subnet.gateway, tuple(subnet.dns_servers or ())
    )
