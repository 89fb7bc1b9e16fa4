"""Where an Instance runs and which addresses its NICs get: the ledgers in the Runtime, fed
from the World once and then kept in step. The caller holds `runtime.decisions`, so
concurrent creates see each other's decisions and get the answers of one at a time."""

from __future__ import annotations

import ipaddress

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import Instance, Network
from stratus_api.v1alpha1.instance import InterfaceStatus
from stratus_api.v1alpha1.network import Subnet
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_operator.controllers import conditions, node_network, placement, scheduler, waiters
from stratus_operator.controllers.addressing import Address, NetworkLedger
from stratus_operator.controllers.floating_ip import floating_key
from stratus_operator.controllers.instance import InstanceProblem, Size, resolve_size
from stratus_operator.controllers.ipam import IpamError
from stratus_operator.controllers.router import external_key
from stratus_operator.controllers.volume import served_backends
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.world import World


def size_of(instance: Instance, world: World) -> placement.Usage | None:
    try:
        size = resolve_size(instance, world.instance_type(instance.spec.instance_type))
    except InstanceProblem:
        return None
    return placement.Usage(size.cpu, size.memory_bytes)


def seed(world: World, runtime: Runtime) -> None:
    """The placements earlier runs made, from the watched Instances (once per process)."""
    if runtime.seeded:
        return
    for instance in world.instances():
        node = instance.status.node if instance.status else None
        size = size_of(instance, world) if node else None
        if node and size is not None:
            runtime.placements.place(instance.metadata.uid or "", node, size)
    runtime.seeded = True


def schedule(
    instance: Instance,
    size: Size,
    world: World,
    runtime: Runtime,
    required: str | None = None,
    backends: frozenset[VolumeBackend] = frozenset(),
    physical_networks: frozenset[str] = frozenset(),
) -> str:
    """The node the Instance is on, or a new placement on the best fitting node (`required`:
    the one where its local Volumes are; `backends`: those its unbound local Volumes need)."""
    uid = instance.metadata.uid or ""
    seed(world, runtime)
    known = (instance.status.node if instance.status else None) or runtime.placements.node_of(uid)
    if known and required is not None and known != required:
        # Placed already: moving it is not the scheduler's to do; the user picks another
        # Volume (or one that is not bound yet).
        raise InstanceProblem(
            Reason.VOLUMES_ON_DIFFERENT_NODES,
            f"spec.volumes: the Instance runs on {known}, its local Volumes are on {required}",
            field="spec.volumes", stalled=True,
        )  # fmt: skip
    if known:
        return known
    candidates = []
    for hv in world.hypervisors():
        name = hv.metadata.name or ""
        free, used = placement.allocatable(hv), runtime.placements.used(name)
        ready = hv.status is not None and conditions.is_true(hv.status.conditions, conditions.READY)
        candidates.append(
            scheduler.Candidate(
                name=name,
                labels=hv.metadata.labels,
                ready=ready,
                schedulable=hv.spec.schedulable,
                cpu_free=free.cpu - used.cpu,
                memory_free_bytes=free.memory_bytes - used.memory_bytes,
                backends=served_backends(hv),
                physical_networks=frozenset(hv.status.physical_networks if hv.status else ()),
            )
        )
    request = scheduler.Request(
        size.cpu, size.memory_bytes, instance.spec.node_selector or {}, required, backends,
        physical_networks,
    )  # fmt: skip
    try:
        chosen = scheduler.pick(request, candidates)
    except scheduler.Unschedulable as exc:
        runtime.metrics.scheduled(exc.rejections)
        raise
    runtime.metrics.scheduled(None)
    runtime.placements.place(uid, chosen.name, placement.Usage(size.cpu, size.memory_bytes))
    return chosen.name


def physical_networks(instance: Instance, world: World) -> frozenset[str]:
    """The physical networks of the Instance's vlan and flat Networks: its node needs them."""
    namespace = instance.metadata.namespace or ""
    found = (world.network((namespace, nic.name)) for nic in instance.spec.networks)
    return frozenset(n.spec.physical_network for n in found if n and n.spec.physical_network)


def ledger(network: Network, world: World, runtime: Runtime) -> NetworkLedger:
    """The Network's address ledger, built from its NICs' status on first use."""
    namespace, name = network.metadata.namespace or "", network.metadata.name or ""
    key = (namespace, name, network.metadata.uid or "")
    found = runtime.addresses.get(key)
    if found is None:
        found = NetworkLedger(network.spec)
        for instance in world.instances():
            if instance.metadata.namespace != namespace or instance.status is None:
                continue
            for iface in instance.status.interfaces:
                if iface.network == name and iface.ip and iface.mac:
                    found.hold(instance.metadata.uid or "", Address(iface.ip, iface.mac))
        for router in world.routers():
            status = router.status
            if status and status.external_address and external_key(router) == (namespace, name):
                owner = router_owner(router.metadata.uid or "")
                found.hold(owner, Address(status.external_address, ""))
        for floating in world.floating_ips():
            held = floating.status.address if floating.status else None
            if held and floating_key(floating) == (namespace, name):
                found.hold(floating_owner(floating.metadata.uid or ""), Address(held, ""))
        for server in network.status.dhcp_servers if network.status else []:
            for address in server.addresses:
                subnet = subnet_of(network, address)
                if subnet is not None:
                    found.hold(dhcp_owner(server.node, subnet.cidr), Address(address, ""))
        runtime.addresses[key] = found
    return found


def resolver(
    network: Network, ip: str | None, node: str, world: World, runtime: Runtime
) -> str | None:
    """The DHCP server of `node` in the subnet of `ip`, which answers the Network's names in
    DNS: its address, held now if the Network's daemon has not yet (it holds the same one);
    None without DHCP there. The caller holds runtime.decisions."""
    if ip is None:
        return None
    address = ipaddress.ip_address(ip)
    for subnet in node_network.dhcp_subnets(network):
        if address in subnet.network:
            try:
                return ledger(network, world, runtime).allocate_service(
                    dhcp_owner(node, subnet.cidr), subnet
                )
            except IpamError:
                return None  # the subnet is full: the guest keeps the subnet's servers
    return None


def dhcp_owner(node: str, cidr: str) -> str:
    """Whose address a node's DHCP server holds in a subnet, in the Network's ledger."""
    return f"dhcp/{node}/{cidr}"


def router_owner(uid: str) -> str:
    """Whose address a Router's external leg holds, in its external Network's ledger."""
    return f"router/{uid}"


def floating_owner(uid: str) -> str:
    """Whose address a FloatingIP holds, in its external Network's ledger."""
    return f"floatingip/{uid}"


def subnet_of(network: Network, address: str) -> Subnet | None:
    ip = ipaddress.ip_address(address)
    return next((s for s in network.spec.subnets if ip in s.network), None)


def addresses(instance: Instance, world: World, runtime: Runtime) -> list[tuple[Network, Address]]:
    """Each NIC's Network and address; an address is allocated once per NIC and kept."""
    namespace, uid = instance.metadata.namespace or "", instance.metadata.uid or ""
    own = {i.network: i for i in (instance.status.interfaces if instance.status else [])}
    out = []
    for index, attachment in enumerate(instance.spec.networks):
        field = f"spec.networks[{index}]"
        network = world.network((namespace, attachment.name))
        on = (waiters.NETWORK, namespace, attachment.name)
        if network is None:
            raise InstanceProblem(
                Reason.NETWORK_NOT_FOUND, f"{field}.name: Network {attachment.name} not found",
                field=f"{field}.name", waits_on=on,
            )  # fmt: skip
        stalled = conditions.condition(network.status.conditions if network.status else [],
                                       conditions.STALLED)  # fmt: skip
        if stalled is not None and stalled.status == "True":
            raise InstanceProblem(
                Reason.NETWORK_NOT_READY,
                f"{field}.name: Network {attachment.name} cannot be used: {stalled.message}",
                field=f"{field}.name", waits_on=on,
            )  # fmt: skip
        book = ledger(network, world, runtime)
        previous = own.get(attachment.name)
        if previous is not None and previous.ip and previous.mac and book.held(uid) is None:
            book.hold(uid, Address(previous.ip, previous.mac))
        try:
            address = book.allocate(uid, index, attachment.ip, attachment.mac, field)
        except IpamError as exc:
            # A full pool may drain; a fixed address someone else holds needs an edit.
            raise InstanceProblem(
                Reason.ADDRESS_UNAVAILABLE, f"{exc.field}: {exc}", field=exc.field,
                retry=exc.field.endswith(".ip") and attachment.ip is None,
            ) from exc  # fmt: skip
        out.append((network, address))
    return out


def interfaces(allocated: list[tuple[Network, Address]]) -> list[InterfaceStatus]:
    return [
        InterfaceStatus(network=network.metadata.name or "", ip=address.ip, mac=address.mac)
        for network, address in allocated
    ]


def release(uid: str, runtime: Runtime) -> None:
    runtime.placements.release(uid)
    release_addresses(uid, runtime)


def release_addresses(owner: str, runtime: Runtime, keep: Network | None = None) -> None:
    """Give back what `owner` holds in every Network's ledger but `keep`'s."""
    for (_, _, network_uid), book in runtime.addresses.items():
        if keep is None or network_uid != keep.metadata.uid:
            book.release(owner)
