"""Routers as plain data: what a Router's node builds (its ports, their MACs and addresses,
its external leg), where it runs, and the status that says so. Pure: the caller looks up
the Networks and Hypervisors.

A Router answers on the gateway address of every IPv4 subnet of each joined Network; the
subnets of all of them (and the external one's) must not overlap, since one routing table
holds them. Its MAC on each Network is derived from the two UIDs (Neutron's fa:16:3e
prefix), so it is the same on every node and after every restart, and never a guest's
(52:54:00).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from stratus_api.reasons import Reason
from stratus_api.router_wire import (
    ExternalPortSpec,
    FloatingAddressSpec,
    NodeRouterSpec,
    RouterPortSpec,
)
from stratus_api.v1alpha1 import Hypervisor, Network, Router
from stratus_api.v1alpha1.router import RouterInterface, RouterStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers.problem import Problem

EXTERNAL_FIELD = "spec.externalGateway.network"


def node_of(router: Router, placed: Mapping[str, str]) -> str | None:
    """The Router's node: where this process placed it (`placed`: UID -> node), before its
    status says so, else its status."""
    return placed.get(router.metadata.uid or "") or (router.status.node if router.status else None)


def external_key(router: Router) -> tuple[str, str] | None:
    """(namespace, name) of the Router's external Network, if it has an external gateway."""
    gateway = router.spec.external_gateway
    if gateway is None:
        return None
    return (gateway.namespace or router.metadata.namespace or "", gateway.network)


def uses(router: Router, key: tuple[str, str]) -> bool:
    """Whether the Router has a port on the Network `key`: joined, or its way out."""
    namespace, name = key
    joined = router.metadata.namespace == namespace and any(
        n.name == name for n in router.spec.networks
    )
    return joined or external_key(router) == key


def router_mac(router_uid: str, network_uid: str) -> str:
    digest = hashlib.sha256(f"{router_uid}\0{network_uid}".encode()).digest()
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


def gateway_interfaces(network: Network) -> list[str]:
    """ip/prefixlen of the Network's IPv4 subnets' gateways."""
    found = []
    for subnet in network.spec.subnets:
        cidr = subnet.network
        if subnet.gateway is not None and cidr.version == 4:
            found.append(f"{subnet.gateway}/{cidr.prefixlen}")
    return found


def _ready(network: Network) -> bool:
    status = network.status
    return status is not None and conditions.is_true(status.conditions, conditions.READY)


@dataclass(frozen=True)
class External:
    """The Router's leg out: its Network and its address there (ip/prefixlen)."""

    network: Network
    address: str


def joined(router: Router, found: Sequence[Network | None]) -> list[Network]:
    """The Router's Networks (`found`: looked up in spec order), checked: each there and
    Ready, each with a gateway, none overlapping another. Problem otherwise."""
    networks = []
    for index, (wanted, network) in enumerate(zip(router.spec.networks, found, strict=True)):
        field = f"spec.networks[{index}].name"
        if network is None:
            message = f"{field}: Network {wanted.name} not found"
            raise Problem(Reason.NETWORK_NOT_FOUND, message, waiting=True)
        if not _ready(network):
            message = f"{field}: Network {wanted.name} is not Ready"
            raise Problem(Reason.NETWORK_NOT_READY, message, waiting=True)
        if not gateway_interfaces(network):
            raise Problem(
                Reason.NO_GATEWAY,
                f"{field}: Network {wanted.name} has no IPv4 subnet with a gateway for the "
                "Router to answer on (set spec.subnets[].gateway)",
            )
        networks.append(network)
    _no_overlap([(f"spec.networks[{i}].name", n) for i, n in enumerate(networks)])
    return networks


def check_external(router: Router, network: Network | None, joined: Sequence[Network]) -> Network:
    """The external gateway's Network, checked: there, external, Ready, not overlapping
    the joined ones."""
    key = external_key(router)
    assert key is not None
    found = external_network(network, EXTERNAL_FIELD, key)
    named = [(f"spec.networks[{i}].name", n) for i, n in enumerate(joined)]
    _no_overlap([*named, (EXTERNAL_FIELD, found)])
    return found


def external_network(network: Network | None, field: str, key: tuple[str, str]) -> Network:
    """`network` (looked up by `key`), checked: there, external and Ready; a Problem
    naming `field` otherwise."""
    namespace, name = key
    if network is None:
        raise Problem(
            Reason.NETWORK_NOT_FOUND, f"{field}: Network {namespace}/{name} not found", waiting=True
        )
    if not network.spec.external:
        raise Problem(
            Reason.NETWORK_NOT_EXTERNAL,
            f"{field}: Network {namespace}/{name} is not external (its spec.external is false)",
        )
    if not _ready(network):
        raise Problem(
            Reason.NETWORK_NOT_READY, f"{field}: Network {namespace}/{name} is not Ready",
            waiting=True,
        )  # fmt: skip
    return network


def _no_overlap(named: Sequence[tuple[str, Network]]) -> None:
    seen: list[tuple[str, Network, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for field, network in named:
        for subnet in network.spec.subnets:
            for other_field, other, cidr in seen:
                if subnet.network.overlaps(cidr) and other is not network:
                    raise Problem(
                        Reason.SUBNETS_OVERLAP,
                        f"{field}: subnet {subnet.cidr} of Network {network.metadata.name} "
                        f"overlaps {cidr} of Network {other.metadata.name} ({other_field}); "
                        "one Router cannot route both",
                    )
            seen.append((field, network, subnet.network))


def external_gateway_ip(network: Network, address: str) -> str | None:
    """The next hop out: the gateway of the external subnet holding `address`."""
    ip = ipaddress.ip_address(address)
    subnet = next((s for s in network.spec.subnets if ip in s.network), None)
    return subnet.gateway if subnet is not None else None


def node_spec(
    router: Router, networks: Sequence[Network], external: External | None,
    floating: Sequence[FloatingAddressSpec] = (),
) -> NodeRouterSpec:  # fmt: skip
    uid = router.metadata.uid or ""
    ports = [
        RouterPortSpec(
            network=n.metadata.uid or "",
            mac=router_mac(uid, n.metadata.uid or ""),
            addresses=gateway_interfaces(n),
        )
        for n in networks
    ]
    out = None
    if external is not None and router.spec.external_gateway is not None:
        network_uid = external.network.metadata.uid or ""
        out = ExternalPortSpec(
            network=network_uid, mac=router_mac(uid, network_uid), addresses=[external.address],
            gateway=external_gateway_ip(external.network, external.address.split("/")[0]),
            snat=router.spec.external_gateway.snat,
        )  # fmt: skip
    return NodeRouterSpec(
        uid=uid, namespace=router.metadata.namespace or "", name=router.metadata.name or "",
        generation=router.metadata.generation or 0, ports=ports, external=out,
        floating=list(floating) if out is not None else [],
    )  # fmt: skip


def candidates(
    router: Router, hypervisors: Iterable[Hypervisor], external: Network | None,
    routers_on: Mapping[str, int],
) -> list[str]:  # fmt: skip
    """Ready nodes that can hold the Router (the external Network's physical network there,
    when it has one), its current node first, then the least loaded; Problem when
    there is none."""
    physnet = external.spec.physical_network if external is not None else None
    ready = []
    for hypervisor in hypervisors:
        status = hypervisor.status
        if status is None or not conditions.is_true(status.conditions, conditions.READY):
            continue
        if physnet is not None and physnet not in (status.physical_networks or []):
            continue
        ready.append(hypervisor.metadata.name or "")
    if not ready:
        where = f" with physical network {physnet}" if physnet else ""
        message = f"no Ready Hypervisor{where} to run the Router on"
        raise Problem(Reason.UNSCHEDULABLE, message, waiting=True)
    current = router.status.node if router.status else None
    return sorted(ready, key=lambda node: (node != current, routers_on.get(node, 0), node))


def routed(
    node: str, networks: Sequence[Network], external: External | None
) -> Callable[[RouterStatus, int], RouterStatus]:
    def change(status: RouterStatus, generation: int) -> RouterStatus:
        out = ", ".join(n.metadata.name or "" for n in networks) or "no Network"
        return status.model_copy(update={
            "node": node,
            "external_address": external.address.split("/")[0] if external else None,
            "interfaces": [RouterInterface(network=n.metadata.name or "",
                                           addresses=gateway_interfaces(n)) for n in networks],
            "observed_generation": generation,
            "conditions": conditions.with_progress(
                status.conditions, ready=True, reason=Reason.ROUTING,
                message=f"routing {out} on {node}", generation=generation,
            ),
        })  # fmt: skip

    return change
