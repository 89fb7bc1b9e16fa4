"""Tell each node hosting a Network what it needs beyond its guests' NICs: the other
nodes hosting it and their guests' MACs, so overlay traffic is flooded only to them, and the
address of its DHCP server in each subnet with DHCP on (controllers/node_network.py). The
addresses come from the Network's address ledger and are kept in status.dhcpServers.
Sent when a node's share changes and again every resync interval, in case a node lost what
it was told; a node that stops hosting the Network is told to
forget it."""

from __future__ import annotations

import logging

from stratus_api.v1alpha1 import Network
from stratus_api.v1alpha1.network import DhcpServer, NetworkStatus
from stratus_operator.controllers import node_network
from stratus_operator.controllers.ipam import IpamError
from stratus_operator.controllers.router import node_of, router_mac, uses
from stratus_operator.services import allocations
from stratus_operator.services.memberships import Membership
from stratus_operator.services.node_shares import NETWORKS, tell_nodes
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World, instance_on_network, key_of

log = logging.getLogger(__name__)


async def publish(network: Network, world: World, runtime: Runtime, *, resync: bool) -> None:
    """Send each node whose share of `network` changed (every hosting node when `resync`)
    its share; tell nodes that left to forget it. A node that does not answer is tried
    again on the next round."""
    uid = network.metadata.uid or ""
    guests = membership(network, world, runtime, whole=resync)
    with_guests = guests.tally("macs", node_network.macs_by_node).items()
    hosting = dict(with_guests)
    routers = router_ports(network, world, runtime)
    for node, mac in routers:
        hosting[node] = sorted({*hosting.get(node, []), mac})
    if network.metadata.deletion_timestamp:
        hosting = with_guests = {}
    endpoints = {}
    for node in hosting:
        hypervisor = world.hypervisor(node)
        if hypervisor is not None and hypervisor.status and hypervisor.status.tunnel_endpoint:
            endpoints[node] = hypervisor.status.tunnel_endpoint
    async with runtime.decisions:
        # Only nodes with guests answer DHCP: a router's node needs no server (nor an
        # address of the pool for one).
        servers = dhcp_servers(network, with_guests, world, runtime)
    await _record_dhcp_servers(network, servers, runtime)
    # Built again only when an input changed: the specs carry every guest's MAC and name.
    inputs = (guests.version, tuple(routers), sorted(endpoints.items()),
              sorted((node, sorted(s.items())) for node, s in servers.items()),
              network.metadata.generation, network.status and network.status.segmentation_id,
              bool(network.metadata.deletion_timestamp))  # fmt: skip
    built = runtime.node_network_built.get(uid)
    if built is not None and built[0] == inputs:
        wanted = built[1]
    else:
        names = guests.tally("names", node_network.dns_names).items()
        wanted = node_network.node_specs(network, hosting, endpoints, servers, names)
        runtime.node_network_built[uid] = (inputs, wanted)
    told = runtime.node_networks.setdefault(uid, {})
    await tell_nodes(
        f"network {network.metadata.namespace}/{network.metadata.name}", uid, wanted, told,
        world, runtime, NETWORKS, resync=resync,
    )  # fmt: skip
    if not told:
        runtime.node_networks.pop(uid, None)


def membership(
    network: Network, world: World, runtime: Runtime, *, whole: bool = False
) -> Membership[node_network.GuestShare]:
    """The Network's guests and what each brings, kept up to date from their events."""
    key, name = key_of(network), network.metadata.name or ""
    return runtime.memberships.refresh(
        instance_on_network(*key), world, lambda: world.network_users(key),
        lambda instance: node_network.share_of(name, instance), whole=whole,
    )  # fmt: skip


def router_ports(network: Network, world: World, runtime: Runtime) -> list[tuple[str, str]]:
    """(node, MAC) of each Router port on the Network: its node hosts the Network too."""
    key = key_of(network)
    found = []
    for router in world.routers():
        node = node_of(router, runtime.router_nodes)
        if node is None or router.metadata.deletion_timestamp or not uses(router, key):
            continue
        found.append((node, router_mac(router.metadata.uid or "", network.metadata.uid or "")))
    return found


def dhcp_servers(
    network: Network, hosting: dict[str, list[str]], world: World, runtime: Runtime
) -> dict[str, dict[str, str]]:
    """node -> subnet CIDR -> the address of its DHCP server there: one per hosting node and
    subnet with DHCP on, held in the Network's ledger; nodes that left give theirs back.
    The caller holds runtime.decisions."""
    ledger = allocations.ledger(network, world, runtime)
    subnets = node_network.dhcp_subnets(network)
    had = {s.node for s in network.status.dhcp_servers} if network.status else set()
    for node in had - set(hosting):
        for subnet in network.spec.subnets:
            ledger.release(allocations.dhcp_owner(node, subnet.cidr))
    servers: dict[str, dict[str, str]] = {}
    for node in hosting:
        for subnet in subnets:
            try:
                address = ledger.allocate_service(allocations.dhcp_owner(node, subnet.cidr), subnet)
            except IpamError as exc:  # the guests keep their seed's static addresses
                log.debug("network %s: no DHCP server on node %s: %s",
                            network.metadata.name, node, exc)  # fmt: skip
                continue
            servers.setdefault(node, {})[subnet.cidr] = address
    return servers


async def _record_dhcp_servers(
    network: Network, servers: dict[str, dict[str, str]], runtime: Runtime
) -> None:
    """status.dhcpServers as `servers` says, written only when it changed."""
    wanted = [DhcpServer(node=node, addresses=list(by_cidr.values()))
              for node, by_cidr in sorted(servers.items())]  # fmt: skip
    if network.status is not None and network.status.dhcp_servers == wanted:
        return
    if network.status is None and not wanted:
        return

    def recorded(status: NetworkStatus, _generation: int) -> NetworkStatus:
        return status.model_copy(update={"dhcp_servers": wanted})

    generation = network.metadata.generation or 0
    await runtime.status.write(
        ObjectRef.of(network), network.status, generation, recorded, NetworkStatus
    )
