"""FloatingIPs as plain data: which Router maps a FloatingIP onto which fixed address, and
the status that says so. Pure: the caller looks up the Instance, the Routers and the
external Network, and holds the address.

A FloatingIP leads to one NIC of its Instance: the one spec.nic names, else the first (in
spec order) on a Network that a Router joins and leads out through the FloatingIP's
external Network. That Router maps it (DNAT in, SNAT out) on its node, as Neutron's L3
agent does: the mapping is part of the Router's node spec, so it moves with the Router.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import FloatingIP, Instance, Router
from stratus_api.v1alpha1.floatingip import FloatingIPStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers.problem import Problem, failing
from stratus_operator.controllers.router import external_key

NETWORK_FIELD = "spec.network"
ADDRESS_FIELD = "spec.address"
INSTANCE_FIELD = "spec.instance"
NIC_FIELD = "spec.nic"


def floating_key(floating: FloatingIP) -> tuple[str, str]:
    """(namespace, name) of the FloatingIP's external Network."""
    namespace = floating.spec.network_namespace or floating.metadata.namespace or ""
    return (namespace, floating.spec.network)


@dataclass(frozen=True)
class Target:
    """Where a FloatingIP leads: `fixed`, the Instance's address on Network `nic`, mapped
    by `router`."""

    router: Router
    nic: str
    fixed: str


def _router_for(
    nic: str, namespace: str, key: tuple[str, str], routers: Iterable[Router]
) -> Router | None:
    """The Router (first by name) that joins Network `nic` and leads out through `key`."""
    found = [
        r for r in routers
        if r.metadata.namespace == namespace and external_key(r) == key
        and any(n.name == nic for n in r.spec.networks)
    ]  # fmt: skip
    return min(found, key=lambda r: r.metadata.name or "", default=None)


def target(floating: FloatingIP, instance: Instance | None, routers: Iterable[Router]) -> Target:
    """Where the FloatingIP (which names an Instance) leads; a Problem naming the field when
    it cannot lead there (yet)."""
    name, namespace = floating.spec.instance, floating.metadata.namespace or ""
    assert name is not None
    if instance is None:
        raise Problem(
            Reason.INSTANCE_NOT_FOUND, f"{INSTANCE_FIELD}: Instance {name} not found", waiting=True
        )
    nics = [n.name for n in instance.spec.networks]
    if floating.spec.nic is not None and floating.spec.nic not in nics:
        raise Problem(
            Reason.NIC_NOT_FOUND,
            f"{NIC_FIELD}: Instance {name} has no NIC on Network {floating.spec.nic} "
            f"(its NICs: {', '.join(nics) or 'none'})",
        )
    key = floating_key(floating)
    candidates = [floating.spec.nic] if floating.spec.nic is not None else nics
    routers = list(routers)
    chosen = next(
        ((nic, r) for nic in candidates if (r := _router_for(nic, namespace, key, routers))), None
    )
    if chosen is None:
        field = NIC_FIELD if floating.spec.nic is not None else INSTANCE_FIELD
        on = " or ".join(candidates) or "none"
        raise Problem(
            Reason.NO_ROUTER,
            f"{field}: no Router joins Network {on} (Instance {name}'s NICs) and leads out "
            f"through Network {key[0]}/{key[1]}",
            waiting=True,
        )
    nic, router = chosen
    status = instance.status
    fixed = next(
        (i.ip for i in (status.interfaces if status else []) if i.network == nic and i.ip), None
    )
    if fixed is None:
        raise Problem(
            Reason.FIXED_ADDRESS_PENDING,
            f"{INSTANCE_FIELD}: Instance {name} has no address on Network {nic} yet",
            waiting=True,
        )
    if ipaddress.ip_address(fixed).version != 4:
        raise Problem(
            Reason.FIXED_ADDRESS_PENDING,
            f"{INSTANCE_FIELD}: Instance {name}'s address on Network {nic} is {fixed}, not "
            "IPv4: floating addresses map IPv4 only",
        )
    if not (router.status and conditions.is_true(router.status.conditions, conditions.READY)):
        raise Problem(
            Reason.ROUTER_NOT_READY,
            f"{INSTANCE_FIELD}: Router {router.metadata.name}, which would map it, is not Ready",
            waiting=True,
        )
    return Target(router, nic, fixed)


def check_ipv4(address: str, network: str) -> None:
    if ipaddress.ip_address(address).version != 4:
        raise Problem(
            Reason.ADDRESS_UNAVAILABLE,
            f"{ADDRESS_FIELD}: {address} is not IPv4; Network {network} must give floating "
            "addresses from an IPv4 subnet",
        )


FloatingChange = Callable[[FloatingIPStatus, int], FloatingIPStatus]


def mapped(address: str, found: Target | None, node: str | None) -> FloatingChange:
    """The status of a FloatingIP that holds `address`, mapped by `found` (None: leads
    nowhere, as asked)."""

    def change(status: FloatingIPStatus, generation: int) -> FloatingIPStatus:
        if found is None:
            reason, message = Reason.ALLOCATED, f"{address} is held and leads nowhere"
        else:
            reason = Reason.MAPPED
            message = (
                f"{address} leads to {found.fixed} through Router {found.router.metadata.name}"
            )
        return status.model_copy(update={
            "address": address,
            "fixed_address": found.fixed if found else None,
            "router": found.router.metadata.name if found else None,
            "node": node if found else None,
            "observed_generation": generation,
            "conditions": conditions.with_progress(
                status.conditions, ready=True, reason=reason, message=message,
                generation=generation,
            ),
        })  # fmt: skip

    return change


def unmapped(address: str | None, problem: Problem) -> FloatingChange:
    """The status of a FloatingIP that cannot lead where it should: the address it holds
    (None: none yet), and `problem`."""
    fail: FloatingChange = failing(problem)

    def change(status: FloatingIPStatus, generation: int) -> FloatingIPStatus:
        cleared = status.model_copy(
            update={"address": address, "fixed_address": None, "router": None, "node": None}
        )
        return fail(cleared, generation)

    return change
