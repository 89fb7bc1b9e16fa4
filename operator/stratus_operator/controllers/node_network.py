"""Which nodes host each Network, and each one's share of it: the other hosting nodes and
their guests' MACs (Neutron's l2population) and the subnets it answers DHCP for. Pure: the
caller supplies the facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter

from stratus_api.network_wire import DhcpSubnet, DnsName, NodeNetworkSpec, OverlayPeer
from stratus_api.v1alpha1 import Instance, Network
from stratus_api.v1alpha1.network import NetworkType, Subnet
from stratus_operator.controllers.tallies import Grouped, SortedBag


@dataclass(frozen=True)
class GuestShare:
    """What one Instance brings to a Network: its node (None: not placed yet), its NICs'
    MACs there, and its names for DNS (built here, once per change of the Instance, not
    once per round for every guest)."""

    node: str | None
    macs: tuple[str, ...]
    names: tuple[DnsName, ...]


def share_of(network: str, instance: Instance) -> GuestShare | None:
    """The Instance's share of the Network named `network` (of its namespace), from its
    status; None while it is being deleted or has no status."""
    status = instance.status
    if status is None or instance.metadata.deletion_timestamp:
        return None
    on = [i for i in status.interfaces if i.network == network]
    name = instance.metadata.name or ""
    return GuestShare(
        node=status.node or None,
        macs=tuple(sorted({i.mac for i in on if i.mac})),
        names=tuple(
            # Not validated again: the name and addresses of a valid Instance.
            DnsName.model_construct(name=name, address=ip)
            for ip in sorted({i.ip for i in on if i.ip and ":" not in i.ip})
        ),
    )


def macs_by_node() -> Grouped[GuestShare, str]:
    """node -> the MACs of the Network's NICs placed there, kept share by share."""
    return Grouped(attrgetter("node"), attrgetter("macs"), str)


def dns_names() -> SortedBag[GuestShare, DnsName]:
    """The Instances' names and IPv4 addresses on the Network, every node's, sorted: what
    its DHCP servers answer in DNS; kept share by share."""
    return SortedBag(attrgetter("names"), attrgetter("name", "address"))


def dhcp_subnets(network: Network) -> list[Subnet]:
    """The subnets whose guests get DHCP answers from their nodes: IPv4 ones with dhcp on."""
    return [s for s in network.spec.subnets if s.dhcp and s.network.version == 4]


def node_specs(
    network: Network,
    hosting: Mapping[str, list[str]],
    endpoints: Mapping[str, str],
    dhcp_addresses: Mapping[str, Mapping[str, str]] | None = None,
    names: list[DnsName] | None = None,
) -> dict[str, NodeNetworkSpec]:
    """Each hosting node's share of the Network. An overlay's peers are the other hosting
    nodes that have a tunnel endpoint; a node without one is nobody's peer (its guests stay
    local), and vlan and flat Networks have none (the physical network carries them).
    `dhcp_addresses`: node -> subnet CIDR -> its DHCP server's address there; `names`:
    what a node with a DHCP server answers in DNS."""
    dhcp_addresses = dhcp_addresses or {}
    spec = network.spec
    overlay = spec.type is NetworkType.OVERLAY
    segment = spec.segmentation_id or (network.status.segmentation_id if network.status else None)
    shares = {}
    for node in sorted(hosting):
        peers = [
            OverlayPeer(endpoint=endpoints[other], macs=hosting[other])
            for other in sorted(hosting)
            if overlay and other != node and other in endpoints
        ]
        dhcp = [
            DhcpSubnet(cidr=subnet.cidr, server_address=address, gateway=subnet.gateway,
                       dns_servers=list(subnet.dns_servers or ()))
            for subnet in dhcp_subnets(network)
            if (address := dhcp_addresses.get(node, {}).get(subnet.cidr))
        ]  # fmt: skip
        shares[node] = NodeNetworkSpec(
            uid=network.metadata.uid or "",
            namespace=network.metadata.namespace or "",
            name=network.metadata.name or "",
            type=spec.type,
            segmentation_id=segment,
            physical_network=spec.physical_network,
            mtu=spec.effective_mtu(),
            peers=peers,
            dhcp=dhcp,
            names=list(names or ()) if dhcp else [],
        )  # fmt: skip
    return shares
