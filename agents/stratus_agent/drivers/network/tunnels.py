"""The VXLAN overlay between nodes, as Neutron's OVS agent builds it: a tunnel bridge joined
to the integration bridge by a trunk link (frames cross it tagged with their Network's local
VLAN), one VXLAN port per other node in use, and a flow table computed whole from state.

Outbound (table 1), a frame's local tag says its Network: known unicast goes to the one node
holding that MAC (l2population: the operator sends the MACs, nothing is learned), anything
else floods to the nodes hosting the Network only. Inbound (table 4), the VNI says the
Network and gets the local tag back. The table is applied with `replace-flows`, which sends
only the difference, so applying it again is cheap and repairs what someone else changed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratus_agent import process
from stratus_agent.config import TunnelConfig
from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_agent.errors import ProvisioningError
from stratus_api.network_wire import VXLAN_PORT, OverlayPeer
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

# Marks the VXLAN ports the agent made, with the endpoint each reaches: others are left be.
ENDPOINT_KEY = "stratus-tunnel-endpoint"
FROM_LINK, OUTBOUND, INBOUND = 0, 1, 4  # tables, as Neutron numbers its own


@dataclass(frozen=True)
class OverlaySegment:
    """One overlay Network on the tunnel bridge: its VNI, its local VLAN on this node and
    the other nodes hosting it."""

    vni: int
    tag: int
    peers: tuple[OverlayPeer, ...]


def endpoints_of(segments: Iterable[OverlaySegment]) -> list[str]:
    """Every remote endpoint some segment needs a VXLAN port to."""
    return sorted({peer.endpoint for segment in segments for peer in segment.peers})


def port_name(endpoint: str) -> str:
    """The VXLAN port to `endpoint`: at most 15 characters, the same on every node."""
    address = ipaddress.ip_address(endpoint)
    if address.version == 4:
        return f"vxlan-{int(address):08x}"
    return f"vxlan6-{hashlib.sha256(address.packed).hexdigest()[:8]}"


def flow_table(
    segments: Sequence[OverlaySegment], link_port: int, tunnel_ports: Mapping[str, int]
) -> list[str]:
    """The tunnel bridge's whole flow table. `tunnel_ports`: each endpoint's VXLAN port
    number; a peer without one gets nothing (its port is not ready yet)."""
    flows = [f"table={FROM_LINK},priority=1,in_port={link_port},actions=resubmit(,{OUTBOUND})"]
    flows += [
        f"table={FROM_LINK},priority=1,in_port={port},actions=resubmit(,{INBOUND})"
        for port in sorted(set(tunnel_ports.values()))
    ]
    flows.append(f"table={FROM_LINK},priority=0,actions=drop")
    for segment in sorted(segments, key=lambda s: s.vni):
        flows += _outbound(segment, tunnel_ports)
        flows.append(
            f"table={INBOUND},priority=1,tun_id={segment.vni},"
            f"actions=mod_vlan_vid:{segment.tag},output:{link_port}"
        )
    flows += [
        f"table={OUTBOUND},priority=0,actions=drop",
        f"table={INBOUND},priority=0,actions=drop",
    ]
    return flows


def _outbound(segment: OverlaySegment, tunnel_ports: Mapping[str, int]) -> list[str]:
    into_tunnel = f"strip_vlan,set_tunnel:{segment.vni}"
    flows, seen = [], set()
    ports = []
    for peer in sorted(segment.peers, key=lambda p: p.endpoint):
        port = tunnel_ports.get(peer.endpoint)
        if port is None:
            continue
        ports.append(port)
        for mac in sorted(mac.lower() for mac in peer.macs):
            if mac in seen:  # two peers claim it: the first keeps it, one flow per match
                continue
            seen.add(mac)
            flows.append(
                f"table={OUTBOUND},priority=2,dl_vlan={segment.tag},dl_dst={mac},"
                f"actions={into_tunnel},output:{port}"
            )
    if ports:
        outputs = ",".join(f"output:{port}" for port in sorted(set(ports)))
        flows.append(
            f"table={OUTBOUND},priority=1,dl_vlan={segment.tag},actions={into_tunnel},{outputs}"
        )
    return flows


class TunnelBridge:
    """The tunnel bridge of one node and its link to the integration bridge."""

    def __init__(self, config: TunnelConfig, integration: OvsBridge, vsctl: str) -> None:
        self.config = config
        self.integration = integration
        self.bridge = OvsBridge(config.bridge, integration.datapath_type, vsctl, config.ovsdb)
        if config.link is not None:
            self.int_port, self.tun_port = config.link.int_port, config.link.tun_port
        else:
            # Named after the bridge each leads to, so two nodes' names never clash.
            self.int_port, self.tun_port = f"patch-{config.bridge}", f"patch-{integration.name}"

    @property
    def _ofctl_target(self) -> str:
        if self.config.rundir is None:
            return self.bridge.name
        return f"unix:{self.config.rundir / f'{self.bridge.name}.mgmt'}"

    async def ensure(self) -> None:
        """The bridge and the link, made where missing (someone may delete either)."""
        # secure: without our flows the bridge drops rather than floods between nodes.
        if await self.bridge.ensure("fail_mode=secure", "protocols=OpenFlow13"):
            log.info("tunnel bridge %s was missing: made it", self.bridge.name)
        patch = self.config.link is None
        for bridge, port, peer in (
            (self.integration, self.int_port, self.tun_port),
            (self.bridge, self.tun_port, self.int_port),
        ):
            settings = ("--", "set", "Interface", port, "type=patch", f"options:peer={peer}")
            # The integration side is a trunk: no tag, frames keep their local VLAN.
            await bridge.vsctl("--may-exist", "add-port", bridge.name, port,
                               *(settings if patch else ()))  # fmt: skip

    async def apply(self, segments: Sequence[OverlaySegment]) -> None:
        """VXLAN ports to exactly the endpoints in use, then the flow table."""
        wanted = endpoints_of(segments)
        have = await self._tunnel_ports()
        await self._set_ports(wanted, have)
        numbers = await self._ofports([self.tun_port, *(port_name(e) for e in wanted)])
        link = numbers.get(self.tun_port)
        if link is None:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED,
                f"tunnel bridge {self.bridge.name}: link port {self.tun_port} has no OpenFlow "
                "port (does the device exist?)",
            )
        ports = {e: n for e in wanted if (n := numbers.get(port_name(e))) is not None}
        flows = flow_table(segments, link, ports)
        await process.run(
            self.config.ofctl, "-O", "OpenFlow13", "replace-flows", self._ofctl_target, "-",
            stdin="\n".join(flows) + "\n", timeout=30,
        )  # fmt: skip

    async def _tunnel_ports(self) -> dict[str, str]:
        """Our VXLAN ports on the bridge: port name -> endpoint."""
        out = await self.bridge.vsctl(
            "--format=json", "--columns=name,external_ids", "find", "Interface", "type=vxlan"
        )
        on_bridge = set(await self.bridge.ports())
        found = {}
        for name, external_ids in json.loads(out)["data"]:
            endpoint = _ovsdb_map(external_ids).get(ENDPOINT_KEY)
            if name in on_bridge and endpoint:
                found[name] = endpoint
        return found

    async def _set_ports(self, wanted: list[str], have: dict[str, str]) -> None:
        """Add and remove VXLAN ports in one transaction."""
        args: list[str] = []
        for name, endpoint in sorted(have.items()):
            if endpoint not in wanted or port_name(endpoint) != name:
                args += ["--", "--if-exists", "del-port", self.bridge.name, name]
        for endpoint in wanted:
            name = port_name(endpoint)
            if have.get(name) == endpoint:
                continue
            # No options:local_ip: with it, userspace tunnelling wants the source to be a
            # local route too, which nodes sharing a kernel (simulated ones) cannot give.
            options = [f"options:remote_ip={_quoted(endpoint)}", "options:key=flow"]
            if self.config.dst_port != VXLAN_PORT:
                options.append(f"options:dst_port={self.config.dst_port}")
            args += [
                "--", "--may-exist", "add-port", self.bridge.name, name,
                "--", "set", "Interface", name, "type=vxlan", *options,
                f"external_ids:{ENDPOINT_KEY}={_quoted(endpoint)}",
            ]  # fmt: skip
        if args:
            await self.bridge.vsctl(*args[1:])

    async def _ofports(self, names: list[str]) -> dict[str, int]:
        """OpenFlow port numbers of these interfaces (those that have one)."""
        out = await self.bridge.vsctl("--format=json", "--columns=name,ofport", "list", "Interface")
        numbers = {}
        for name, ofport in json.loads(out)["data"]:
            if name in names and isinstance(ofport, int) and ofport > 0:
                numbers[name] = ofport
        return numbers


def _ovsdb_map(value: Any) -> dict[str, str]:
    """An OVSDB JSON map (["map", [[k, v], ...]]) as a dict."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {str(k): str(v) for k, v in value[1]}
    return {}


def _quoted(value: str) -> str:
    # An IPv6 address holds colons, which ovs-vsctl would read as a key:value separator.
    return f'"{value}"'
