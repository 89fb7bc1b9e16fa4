"""Security groups on the integration bridge: a stateful firewall in OpenFlow over Open
vSwitch's conntrack, as Neutron's openvswitch firewall driver builds one. The bridge's whole
flow table is computed from state and applied with `replace-flows`, which sends only the
difference, so applying it again is cheap and repairs what someone else changed.

Ports. A *guarded* port is a guest NIC filtered by its security groups; an *open* port is
anything else on the bridge: an access port in its Network's local VLAN (DHCP, router, an
unfiltered guest) or a trunk (the link to the tunnel bridge, whose frames carry that VLAN in
their 802.1Q header); a *pending* port is a guarded NIC libvirt has not plugged yet.

Registers. reg5 = the guarded port a packet comes from (egress) or goes to (ingress), by its
OpenFlow port; reg6 = the local VLAN, which is also the conntrack zone, so Networks with equal
CIDRs never share a connection.

Tables:
   0 CLASSIFY    By in_port. Guarded: reg5, reg6 -> 10. Open access port: reg6 -> 30. Trunk
                 with a VLAN header: reg6 = its VID -> 30. Anything else (a port plugged
                 since the last apply, a tagged frame on an access port, an untagged one on
                 a trunk) is dropped: the firewall fails closed.
  10 EGRESS      Anti-spoofing. ARP only with the port's MAC and address, IPv4 only from
                 them (IPv4 -> conntrack -> 11); DHCP requests (any source address) -> 20;
                 DHCP server replies and everything else (IPv6 too) dropped.
  11 EGRESS_CT   Invalid dropped; established and related -> 20; new: the port's egress
                 rules -> 20, else dropped.
  20 EGRESS_OUT  Unicast to a guarded port's MAC in the same VLAN -> that port's ingress (40),
                 so the receiver's rules apply too; to a pending port's MAC dropped. Else a
                 new connection is committed, and NORMAL switches the frame in its VLAN.
  30 DISPATCH    From open ports: unicast to a guarded port's MAC in the VLAN -> reg5, VLAN
                 header popped -> 40 (NORMAL learns the sender first, see 31); to a pending
                 port's MAC dropped; the rest (broadcast too, unfiltered) NORMAL.
  31 LEARN       Called in a clone from 30 (see below).
  40 INGRESS     ARP and DHCP server replies out to the port; IPv4 -> conntrack (unless it is
                 tracked already: it came from a guarded port, in the same zone) -> 41; the
                 rest dropped.
  41 INGRESS_CT  Invalid dropped; established and related out; new: the port's ingress rules
                 commit the connection and send it out, else dropped.

A new connection is committed only where it is finally let through: in 20 when it leaves
for NORMAL, in 41 when the receiving guarded port accepts it. Committed on egress already, a
connection the receiver refused would stay in their shared zone, and the receiver could
"answer" it (its packets a reply: established) past its own egress rules and the sender's
ingress rules. Between guarded ports the ingress side uses the egress side's lookup (same
zone, same packet) rather than a second one.

Frames that 30 sends straight to a guarded port never meet NORMAL, so it would never learn
where their senders are (a host behind the tunnel, a router port) and would flood the
guest's replies to them to every port of the VLAN, guarded ones too. So 30 first hands a copy
to 31, which gives it the sender's own MAC as destination and runs NORMAL on it: NORMAL learns
the sender's port, finds the destination there and drops the copy. A sender using a guarded
port's MAC, or a multicast one, is not learned: NORMAL could then send that copy somewhere
(a guarded port, every port) without any filter.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from stratus_agent import process
from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_api.security_group_wire import (
    PORT_PROTOCOLS,
    Direction,
    NodeRule,
    NodeSecurityGroupSpec,
    Protocol,
)

CLASSIFY, EGRESS, EGRESS_CT, EGRESS_OUT = 0, 10, 11, 20
DISPATCH, LEARN, INGRESS, INGRESS_CT = 30, 31, 40, 41
NORMAL_ONLY = "table=0,priority=0,actions=NORMAL"

ZONE = "zone=NXM_NX_REG6[0..15]"
TO_PORT = "output:NXM_NX_REG5[]"
TAGGED, UNTAGGED = "vlan_tci=0x1000/0x1000", "vlan_tci=0x0000/0x1000"
UNICAST_SRC = "dl_src=00:00:00:00:00:00/01:00:00:00:00:00"
NEW = "ct_state=+new-est+trk"
MATCH_OF = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.ICMP: "icmp", Protocol.ANY: "ip"}
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
P = TypeVar("P")


@dataclass(frozen=True)
class GuardedPort:
    """A guest NIC filtered by its security groups (keys "namespace/name"); `address`: its
    IPv4 address (None: it may send from any)."""

    ofport: int
    tag: int
    mac: str
    address: str | None
    groups: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(self.ofport, self.tag, self.mac)
        if self.address is not None:
            ipaddress.IPv4Address(self.address)  # ValueError if not


@dataclass(frozen=True)
class OpenPort:
    """Any other port on the bridge: an access port in VLAN `tag`, or a trunk (None)."""

    ofport: int
    tag: int | None

    def __post_init__(self) -> None:
        _check(self.ofport, self.tag)


@dataclass(frozen=True)
class PendingPort:
    """A guarded NIC whose OVS port is not on the bridge yet (libvirt adds it when the
    guest starts): frames for its MAC are dropped, not switched to it unfiltered."""

    tag: int
    mac: str

    def __post_init__(self) -> None:
        _check(None, self.tag, self.mac)


def _check(ofport: int | None, tag: int | None, mac: str | None = None) -> None:
    """Only well-formed values go into flow text."""
    if ofport is not None and ofport <= 0:
        raise ValueError(f"not an OpenFlow port: {ofport}")
    if tag is not None and not 1 <= tag <= 4094:
        raise ValueError(f"not a local VLAN: {tag}")
    if mac is not None and not MAC.fullmatch(mac):
        raise ValueError(f"not a MAC address: {mac!r}")


@dataclass(frozen=True)
class _Flow:
    table: int
    priority: int
    match: str
    actions: str

    def sort_key(self) -> tuple[int, int, str, str]:
        return self.table, -self.priority, self.match, self.actions

    def __str__(self) -> str:
        match = f"{self.match}," if self.match else ""
        return f"table={self.table},priority={self.priority},{match}actions={self.actions}"


def port_masks(first: int, last: int) -> list[tuple[int, int]]:
    """Ports `first`..`last` as the fewest aligned value/mask pairs (each a power-of-two
    block), for tp_dst=value/mask."""
    if not 0 <= first <= last <= 0xFFFF:
        raise ValueError(f"not a port range: {first}-{last}")
    pairs = []
    value = first
    while value <= last:
        size = value & -value if value else 0x10000  # the largest block aligned at value
        while value + size - 1 > last:
            size >>= 1
        pairs.append((value, 0xFFFF & ~(size - 1)))
        value += size
    return pairs


def flow_table(
    guarded: Sequence[GuardedPort],
    open_ports: Sequence[OpenPort],
    pending: Sequence[PendingPort],
    groups: Mapping[str, NodeSecurityGroupSpec],
) -> list[str]:
    """The integration bridge's whole flow table, sorted (table, then highest priority
    first). Without guarded or pending ports it is plain switching, as with no firewall."""
    if not guarded and not pending:
        return [NORMAL_ONLY]
    ports = _unique(guarded, key=lambda p: p.ofport)
    taken = {p.ofport for p in ports}
    opens = [p for p in _unique(open_ports, key=lambda p: p.ofport) if p.ofport not in taken]
    # One guarded port per MAC in a VLAN (the first); pending MACs only where none is.
    by_mac = {(p.tag, p.mac.lower()): p for p in reversed(ports)}
    waiting = sorted({(p.tag, p.mac.lower()) for p in pending} - set(by_mac))

    flows: set[_Flow] = set()
    flows.update(_classify(ports, opens))
    flows.update(_fixed())
    for port in ports:
        flows.update(_egress(port))
        flows.update(_rules(port, groups))
    for (tag, mac), port in by_mac.items():
        to_port = f"load:{port.ofport}->NXM_NX_REG5[]"
        flows.add(_Flow(EGRESS_OUT, 100, f"reg6={tag},dl_dst={mac}",
                        f"{to_port},resubmit(,{INGRESS})"))  # fmt: skip
        learn, ingress = f"clone(resubmit(,{LEARN}))", f"resubmit(,{INGRESS})"
        flows.add(_Flow(DISPATCH, 100, f"reg6={tag},dl_dst={mac},{TAGGED}",
                        f"{learn},{to_port},pop_vlan,{ingress}"))  # fmt: skip
        flows.add(_Flow(DISPATCH, 100, f"reg6={tag},dl_dst={mac},{UNTAGGED}",
                        f"{learn},{to_port},{ingress}"))  # fmt: skip
        flows.add(_Flow(LEARN, 100, f"reg6={tag},dl_src={mac}", "drop"))
    for tag, mac in waiting:
        flows.add(_Flow(EGRESS_OUT, 90, f"reg6={tag},dl_dst={mac}", "drop"))
        flows.add(_Flow(DISPATCH, 90, f"reg6={tag},dl_dst={mac}", "drop"))
    return [str(flow) for flow in sorted(flows, key=_Flow.sort_key)]


def _classify(ports: Sequence[GuardedPort], opens: Sequence[OpenPort]) -> Iterator[_Flow]:
    for port in ports:
        yield _Flow(
            CLASSIFY, 100, f"in_port={port.ofport},{UNTAGGED}",
            f"load:{port.ofport}->NXM_NX_REG5[],load:{port.tag}->NXM_NX_REG6[],"
            f"resubmit(,{EGRESS})",
        )  # fmt: skip
    for open_port in opens:
        if open_port.tag is None:
            yield _Flow(
                CLASSIFY, 100, f"in_port={open_port.ofport},{TAGGED}",
                f"move:NXM_OF_VLAN_TCI[0..11]->NXM_NX_REG6[0..11],resubmit(,{DISPATCH})",
            )  # fmt: skip
        else:
            yield _Flow(
                CLASSIFY, 100, f"in_port={open_port.ofport},{UNTAGGED}",
                f"load:{open_port.tag}->NXM_NX_REG6[],resubmit(,{DISPATCH})",
            )  # fmt: skip


def _fixed() -> list[_Flow]:
    """The flows every port shares; each table ends in a default."""
    to_ingress_ct = f"resubmit(,{INGRESS_CT})"
    return [
        _Flow(CLASSIFY, 0, "", "drop"),
        _Flow(EGRESS, 0, "", "drop"),
        _Flow(EGRESS_CT, 100, "ct_state=+inv+trk", "drop"),
        _Flow(EGRESS_CT, 90, "ct_state=+est+trk", f"resubmit(,{EGRESS_OUT})"),
        _Flow(EGRESS_CT, 80, "ct_state=+rel+trk", f"resubmit(,{EGRESS_OUT})"),
        _Flow(EGRESS_CT, 0, "", "drop"),
        _Flow(EGRESS_OUT, 10, "ct_state=+new+trk,ip", f"ct(commit,{ZONE}),NORMAL"),
        _Flow(EGRESS_OUT, 0, "", "NORMAL"),
        _Flow(DISPATCH, 0, "", "NORMAL"),
        _Flow(LEARN, 50, UNICAST_SRC, "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],NORMAL"),
        _Flow(LEARN, 0, "", "drop"),
        _Flow(INGRESS, 100, "arp", TO_PORT),
        _Flow(INGRESS, 100, "udp,tp_src=67,tp_dst=68", TO_PORT),
        _Flow(INGRESS, 90, "ct_state=-trk,ip", f"ct(table={INGRESS_CT},{ZONE})"),
        _Flow(INGRESS, 90, "ct_state=+trk,ip", to_ingress_ct),
        _Flow(INGRESS, 0, "", "drop"),
        _Flow(INGRESS_CT, 100, "ct_state=+inv+trk", "drop"),
        _Flow(INGRESS_CT, 90, "ct_state=+est+trk", TO_PORT),
        _Flow(INGRESS_CT, 80, "ct_state=+rel+trk", TO_PORT),
        _Flow(INGRESS_CT, 0, "", "drop"),
    ]


def _egress(port: GuardedPort) -> list[_Flow]:
    """Table 10 for one port: what it may send at all."""
    mac, own = port.mac.lower(), f"reg5={port.ofport}"
    spa = f",arp_spa={port.address}" if port.address else ""
    src = f",nw_src={port.address}" if port.address else ""
    to_out = f"resubmit(,{EGRESS_OUT})"
    return [
        _Flow(EGRESS, 100, f"{own},udp,dl_src={mac},tp_src=68,tp_dst=67", to_out),
        _Flow(EGRESS, 90, f"{own},udp,tp_src=67", "drop"),  # no DHCP server in a guest
        _Flow(EGRESS, 80, f"{own},arp,dl_src={mac},arp_sha={mac}{spa}", to_out),
        _Flow(EGRESS, 80, f"{own},ip,dl_src={mac}{src}", f"ct(table={EGRESS_CT},{ZONE})"),
    ]


def _rules(port: GuardedPort, groups: Mapping[str, NodeSecurityGroupSpec]) -> Iterator[_Flow]:
    """The port's rules: the union of its groups' (a group not held contributes none)."""
    for key in port.groups:
        spec = groups.get(key)
        for rule in spec.rules if spec is not None else ():
            ingress = rule.direction is Direction.INGRESS
            table, accept = (
                (INGRESS_CT, f"ct(commit,{ZONE}),{TO_PORT}")
                if ingress
                else (EGRESS_CT, f"resubmit(,{EGRESS_OUT})")  # committed in 20, see above
            )
            for match in _rule_matches(rule, "nw_src" if ingress else "nw_dst"):
                yield _Flow(table, 50, f"reg5={port.ofport},{NEW},{match}", accept)


def _rule_matches(rule: NodeRule, remote_field: str) -> Iterator[str]:
    """One match per remote network and port block; none without remotes."""
    ports = [""]
    if rule.protocol in PORT_PROTOCOLS and rule.port_min is not None:
        last = rule.port_max if rule.port_max is not None else rule.port_min
        ports = [f",tp_dst={_masked(v, m)}" for v, m in port_masks(rule.port_min, last)]
    for remote in rule.remotes:
        network = ipaddress.ip_network(remote, strict=False)
        if network.version != 4:
            continue  # only IPv4 is filtered (and let through)
        where = f",{remote_field}={network.with_prefixlen}" if network.prefixlen else ""
        for tp in ports:
            yield f"{MATCH_OF[rule.protocol]}{where}{tp}"


def _masked(value: int, mask: int) -> str:
    return str(value) if mask == 0xFFFF else f"0x{value:04x}/0x{mask:04x}"


def _unique(items: Iterable[P], key: Callable[[P], int]) -> list[P]:
    """The first item of each key, in order."""
    seen: set[int] = set()
    found = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            found.append(item)
    return found


class Firewall:
    """Applies flow tables to the integration bridge (the module owns its whole table)."""

    def __init__(self, bridge: OvsBridge, ofctl: str = "ovs-ofctl") -> None:
        self.bridge = bridge
        self.ofctl = ofctl

    async def ofports(self) -> dict[str, int]:
        """Each interface on the bridge with its OpenFlow port (those that have one)."""
        # One call, two commands: every Interface's ofport, then the bridge's own ones.
        out = await self.bridge.vsctl(
            "--format=json", "--columns=name,ofport", "list", "Interface",
            "--", "list-ifaces", self.bridge.name,
        )  # fmt: skip
        table, _, names = out.partition("\n")
        on_bridge = set(names.split())
        numbers = {}
        for name, ofport in json.loads(table)["data"]:
            if name in on_bridge and isinstance(ofport, int) and ofport > 0:
                numbers[name] = ofport
        return numbers

    async def apply(self, flows: list[str]) -> None:
        """Replace the bridge's flow table with `flows` (only the difference is sent)."""
        # OpenFlow 1.3: over 1.0, ovs-ofctl's replace-flows takes no flow naming a table.
        await process.run(
            self.ofctl, "-O", "OpenFlow13", "replace-flows", self.bridge.name, "-",
            stdin="\n".join(flows) + "\n", timeout=30,
        )  # fmt: skip
