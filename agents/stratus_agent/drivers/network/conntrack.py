"""Connections the rules no longer allow, cut: after a rule is removed (or a remote group
loses a member, or a NIC leaves a group), the firewall's table lets no new connection of
that kind in, but conntrack still holds the ones it let in before, and their packets pass
as established. Like Neutron's openvswitch firewall driver, the agent then reads the zones
of the guarded ports (`ovs-appctl dpctl/dump-conntrack zone=N`) and deletes each entry
that the port's current rules would refuse (`dpctl/flush-conntrack zone=N TUPLE`).

Judged from the guarded port's side only: an entry towards its address against its
ingress rules, one from its address against its egress rules (a connection between two
guarded ports is judged by both).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from stratus_agent import process
from stratus_agent.drivers.network.firewall import GuardedPort
from stratus_api.security_group_wire import (
    PORT_PROTOCOLS,
    Direction,
    NodeSecurityGroupSpec,
    Protocol,
)

log = logging.getLogger(__name__)
NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.ICMP: 1}
_ENTRY = re.compile(r"^(?P<proto>\w+),orig=\((?P<orig>[^)]*)\),.*\bzone=(?P<zone>\d+)")
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}


@dataclass(frozen=True)
class Connection:
    """One conntrack entry's original direction, as flush-conntrack names it."""

    zone: int
    proto: int
    src: str
    dst: str
    fields: tuple[tuple[str, str], ...]  # sport/dport, or id/type/code

    @property
    def dport(self) -> int | None:
        value = dict(self.fields).get("dport")
        return int(value) if value is not None else None

    def tuple_text(self) -> str:
        """The original tuple as dpctl/flush-conntrack takes it."""
        names = {"sport": "ct_tp_src", "dport": "ct_tp_dst", "id": "icmp_id",
                 "type": "icmp_type", "code": "icmp_code"}  # fmt: skip
        parts = [f"ct_nw_src={self.src}", f"ct_nw_dst={self.dst}", f"ct_nw_proto={self.proto}"]
        parts += [f"{names[k]}={v}" for k, v in self.fields if k in names]
        return ",".join(parts)


def parse(dump: str) -> list[Connection]:
    """IPv4 tcp, udp and icmp entries of `dpctl/dump-conntrack`; other lines are skipped."""
    found = []
    for line in dump.splitlines():
        match = _ENTRY.match(line.strip())
        if match is None or match["proto"] not in _PROTO:
            continue
        fields = dict(item.split("=", 1) for item in match["orig"].split(",") if "=" in item)
        src, dst = fields.pop("src", None), fields.pop("dst", None)
        if src is None or dst is None or ":" in src:
            continue
        found.append(Connection(int(match["zone"]), _PROTO[match["proto"]], src, dst,
                                tuple(sorted(fields.items()))))  # fmt: skip
    return found


def allowed(
    connection: Connection, port: GuardedPort, groups: Mapping[str, NodeSecurityGroupSpec]
) -> bool:
    """Whether the port's rules let the connection start now (True when it is not the
    port's: neither end is its address)."""
    if port.address == connection.dst:
        direction, remote = Direction.INGRESS, connection.src
    elif port.address == connection.src:
        direction, remote = Direction.EGRESS, connection.dst
    else:
        return True
    address = ipaddress.ip_address(remote)
    for key in port.groups:
        spec = groups.get(key)
        for rule in spec.rules if spec is not None else ():
            if rule.direction is not direction:
                continue
            if rule.protocol is not Protocol.ANY and NUMBERS[rule.protocol] != connection.proto:
                continue
            if rule.protocol in PORT_PROTOCOLS and rule.port_min is not None:
                last = rule.port_max if rule.port_max is not None else rule.port_min
                if connection.dport is None or not rule.port_min <= connection.dport <= last:
                    continue
            if any(address in ipaddress.ip_network(r, strict=False) for r in rule.remotes):
                return True
    return False


def revoked(
    connections: Iterable[Connection],
    guarded: Sequence[GuardedPort],
    groups: Mapping[str, NodeSecurityGroupSpec],
) -> list[Connection]:
    """The connections some guarded port in their zone no longer allows."""
    by_zone: dict[int, list[GuardedPort]] = {}
    for port in guarded:
        if port.address:
            by_zone.setdefault(port.tag, []).append(port)
    return [
        c for c in connections
        if any(not allowed(c, port, groups) for port in by_zone.get(c.zone, ()))
    ]  # fmt: skip


class Conntrack:
    """The datapath's conntrack, through ovs-appctl (the vswitchd holding the bridge)."""

    def __init__(self, appctl: str = "ovs-appctl", target: str | None = None) -> None:
        """`target`: ovs-appctl's -t (None: the default ovs-vswitchd)."""
        self._appctl = (appctl, *(("-t", target) if target else ()))

    async def dump(self, zone: int) -> list[Connection]:
        out = await process.run(*self._appctl, "dpctl/dump-conntrack", f"zone={zone}", timeout=30)
        return parse(out.stdout)

    async def cut(
        self, guarded: Sequence[GuardedPort], groups: Mapping[str, NodeSecurityGroupSpec]
    ) -> int:
        """Delete the entries of the guarded ports' zones that their rules no longer allow;
        how many. An entry that cannot be deleted is logged and left (gone already)."""
        cut = 0
        for zone in sorted({p.tag for p in guarded}):
            for connection in revoked(await self.dump(zone), guarded, groups):
                try:
                    await process.run(*self._appctl, "dpctl/flush-conntrack", f"zone={zone}",
                                      connection.tuple_text(), timeout=30)  # fmt: skip
                except process.CommandError as exc:
                    log.info("conntrack entry %s not cut: %s", connection.tuple_text(), exc)
                    continue
                cut += 1
        return cut
