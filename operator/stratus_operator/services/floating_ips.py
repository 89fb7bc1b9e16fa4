"""FloatingIPs end to end: hold the address in the external Network's ledger, find the
Router that maps it onto the Instance, and have that Router built again with it (the
mapping is part of the Router's node spec, see routers.floating_of); give it back on
delete.

`runtime.floating` is what the Routers map. It changes only here, and a change is undone
when the Router cannot be built with it, so the next attempt builds it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import FloatingIP, Network
from stratus_api.v1alpha1.floatingip import FloatingIPStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers import floating_ip as plan
from stratus_operator.controllers.floating_ip import FloatingChange, Target
from stratus_operator.controllers.ipam import AddressInUse, IpamError
from stratus_operator.controllers.problem import Problem
from stratus_operator.controllers.router import external_key, external_network
from stratus_operator.services import allocations, routers
from stratus_operator.services.runtime import Binding, Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


def _network(floating: FloatingIP, world: World) -> Network:
    key = plan.floating_key(floating)
    return external_network(world.network(key), plan.NETWORK_FIELD, key)


def _hold(floating: FloatingIP, network: Network, world: World, runtime: Runtime) -> str:
    """The FloatingIP's address, held in its Network's ledger. The caller holds
    runtime.decisions."""
    ledger = allocations.ledger(network, world, runtime)
    owner = allocations.floating_owner(floating.metadata.uid or "")
    wanted = floating.spec.address
    try:
        address = ledger.allocate_address(owner, wanted, plan.ADDRESS_FIELD)
    except AddressInUse as exc:
        raise Problem(Reason.ADDRESS_IN_USE, f"{plan.ADDRESS_FIELD}: {exc}") from None
    except IpamError as exc:
        if wanted is None:
            message = f"{plan.NETWORK_FIELD}: {exc}"
            raise Problem(Reason.POOL_EXHAUSTED, message, waiting=True) from None
        raise Problem(Reason.ADDRESS_UNAVAILABLE, f"{plan.ADDRESS_FIELD}: {exc}") from None
    plan.check_ipv4(address, network.metadata.name or "")
    return address


def held(floating: FloatingIP, world: World, runtime: Runtime) -> str | None:
    """The address the FloatingIP holds (None: none)."""
    network = world.network(plan.floating_key(floating))
    if network is None:
        return None
    found = allocations.ledger(network, world, runtime).held(
        allocations.floating_owner(floating.metadata.uid or "")
    )
    return found.ip if found is not None else None


async def reconcile(floating: FloatingIP, world: World, runtime: Runtime) -> FloatingChange:
    """Hold the address and have it mapped where the spec says; the status change to
    write. A Problem (after the mapping, if any, was taken away) when it cannot lead
    there; AgentError when the Router's node does not take it (retried)."""
    uid = floating.metadata.uid or ""
    async with runtime.lock(uid):
        try:
            network = _network(floating, world)
            async with runtime.decisions:
                address = _hold(floating, network, world, runtime)
            found = None
            if floating.spec.instance is not None:
                key = (floating.metadata.namespace or "", floating.spec.instance)
                found = plan.target(floating, world.instance_named(key), world.routers())
                check_not_taken(uid, found, runtime.floating)
        except Problem:
            await _map(uid, None, world, runtime)
            raise
        binding = Binding(found.router.metadata.uid or "", address, found.fixed) if found else None
        await _map(uid, binding, world, runtime)
    node = routers.node_of(found.router, runtime) if found else None
    return plan.mapped(address, found, node)


def check_not_taken(uid: str, found: Target, mapped: Mapping[str, Binding]) -> None:
    """One floating address per fixed one: a Problem when another FloatingIP (of `mapped`,
    FloatingIP UID -> Binding) already maps onto `found`."""
    router_uid = found.router.metadata.uid
    for other, binding in mapped.items():
        if other != uid and binding.router_uid == router_uid and binding.fixed == found.fixed:
            raise Problem(
                Reason.FIXED_ADDRESS_TAKEN,
                f"{plan.INSTANCE_FIELD}: {found.fixed} already has floating address "
                f"{binding.address}; one fixed address takes one",
                waiting=True,
            )


async def _map(uid: str, binding: Binding | None, world: World, runtime: Runtime) -> None:
    """Make `binding` the FloatingIP's mapping (None: none) and build the Routers it
    leaves and joins; undone when one cannot be built."""
    old = runtime.floating.get(uid)
    if old == binding:
        return
    if binding is None:
        del runtime.floating[uid]
    else:
        runtime.floating[uid] = binding
    try:
        for router_uid in dict.fromkeys(b.router_uid for b in (old, binding) if b is not None):
            await routers.rebuild(router_uid, world, runtime)
    except Exception:
        if old is None:
            runtime.floating.pop(uid, None)
        else:
            runtime.floating[uid] = old
        raise


def failed(
    exc: Exception, floating: FloatingIP, world: World, runtime: Runtime
) -> FloatingChange | None:
    """The status change for an error out of `reconcile` (None: see routers.problem_of)."""
    problem = routers.problem_of(exc)
    return plan.unmapped(held(floating, world, runtime), problem) if problem is not None else None


async def remove(floating: FloatingIP, world: World, runtime: Runtime) -> None:
    """Take the mapping away (AgentError when the Router's node does not answer: the
    finalizer keeps the FloatingIP until it does) and give the address back."""
    uid = floating.metadata.uid or ""
    async with runtime.lock(uid):
        await _map(uid, None, world, runtime)
    async with runtime.decisions:
        allocations.release_addresses(allocations.floating_owner(uid), runtime)
    runtime.status.forget(uid)
    runtime.locks.pop(uid, None)


def inputs(floating: FloatingIP, world: World, runtime: Runtime) -> tuple[object, ...]:
    """What the mapping is made from besides the FloatingIP's own spec: its Instance's
    NICs and addresses, and the Routers that lead out through its Network (where they
    run, what they join, whether they are Ready). When this changes, it is made again."""
    namespace, key = floating.metadata.namespace or "", plan.floating_key(floating)
    name = floating.spec.instance
    instance = world.instance_named((namespace, name)) if name is not None else None
    nics = None
    if instance is not None:
        status = instance.status
        nics = (
            instance.metadata.uid,
            tuple(n.name for n in instance.spec.networks),
            tuple((i.network, i.ip) for i in status.interfaces) if status else (),
        )
    network = world.network(key)
    leading = sorted(
        (r.metadata.uid or "", tuple(n.name for n in r.spec.networks), routers.node_of(r, runtime),
         bool(r.status and conditions.is_true(r.status.conditions, conditions.READY)))
        for r in world.routers()
        if r.metadata.namespace == namespace and external_key(r) == key
    )  # fmt: skip
    return (network and network.metadata.uid, nics, tuple(leading))


async def write_status(floating: FloatingIP, runtime: Runtime, change: FloatingChange) -> None:
    await runtime.status.write(
        ObjectRef.of(floating), floating.status, floating.metadata.generation or 0, change,
        FloatingIPStatus,
    )  # fmt: skip
