"""Routers end to end: check what a Router joins, place it on one node, hold its external
address, make sure the node knows its Networks, and send it the router (PUT
/v1/routers/{uid}); move it when its node is lost; delete it from its node.

A Router has one active node, kept in status.node, and in `runtime.router_nodes` from
the moment it is placed (before status says so), so node_networks.py counts that node as
hosting the Router's Networks: the node must hold their node specs before it can build
the router's ports. A node that comes back after its Routers moved away is told to forget
them (forget_strays, from the Hypervisor's health check).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from stratus_api.reasons import Reason
from stratus_api.router_wire import FloatingAddressSpec
from stratus_api.v1alpha1 import Network, Router
from stratus_api.v1alpha1.router import RouterStatus
from stratus_operator.controllers import router as plan
from stratus_operator.controllers.ipam import IpamError
from stratus_operator.controllers.problem import Problem, failing
from stratus_operator.controllers.router import External
from stratus_operator.services import allocations, node_networks, node_shares
from stratus_operator.services.agent_client import AgentClient, AgentError, AgentRejected
from stratus_operator.services.runtime import AgentNotConfigured, Binding, Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)
RouterChange = Callable[[RouterStatus, int], RouterStatus]


def problem_of(exc: Exception) -> Problem | None:
    """What an error out of building a Router (or a FloatingIP it maps) says in status;
    None for unknown errors (kept with their stack trace, retried)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, AgentRejected):
        return Problem(Reason.AGENT_REJECTED, str(exc))
    if isinstance(exc, AgentError | AgentNotConfigured):
        return Problem(Reason.AGENT_UNAVAILABLE, str(exc), waiting=True)
    return None


def failed(exc: Exception) -> RouterChange | None:
    """The status change for an error out of `reconcile` (None: see problem_of)."""
    problem = problem_of(exc)
    return failing(problem) if problem is not None else None


def node_of(router: Router, runtime: Runtime) -> str | None:
    return plan.node_of(router, runtime.router_nodes)


def external_network(router: Router, world: World) -> Network | None:
    key = plan.external_key(router)
    return world.network(key) if key is not None else None


def _looked_up(router: Router, world: World) -> list[Network | None]:
    """The Router's Networks as the World has them (None: not there), the external last."""
    namespace = router.metadata.namespace or ""
    found = [world.network((namespace, n.name)) for n in router.spec.networks]
    return [*found, external_network(router, world)]


async def reconcile(router: Router, world: World, runtime: Runtime) -> RouterChange:
    """Build the Router on its node; the status change to write. Problem when it
    cannot be built (the change is `failing(problem)`), AgentError when the node
    does not take it (retried)."""
    uid, namespace = router.metadata.uid or "", router.metadata.namespace or ""
    *found, external_found = _looked_up(router, world)
    networks = plan.joined(router, found)
    outside = None
    if router.spec.external_gateway is not None:
        outside = plan.check_external(router, external_found, networks)
    others = Counter(
        node for r in world.routers() if r.metadata.uid != uid and (node := node_of(r, runtime))
    )
    node = plan.candidates(router, world.hypervisors(), outside, others)[0]
    async with runtime.decisions:
        external = _hold_external(router, outside, world, runtime)
    previous = node_of(router, runtime)
    runtime.router_nodes[uid] = node
    # The node learns the Networks (their local VLANs, its overlay peers) before the router.
    for network in [*networks, *([outside] if outside is not None else [])]:
        await node_networks.publish(network, world, runtime, resync=False)
    hypervisor = world.hypervisor(node)
    assert hypervisor is not None  # a candidate
    client = await runtime.agents.client(hypervisor)
    # The floating addresses are read and sent under the lock: of two builds (a FloatingIP
    # added while the Router moves), the node gets the newer list last.
    async with runtime.lock(uid):
        floating = floating_of(uid, world, runtime) if external is not None else []
        await client.ensure_router(plan.node_spec(router, networks, external, floating))
    if previous is not None and previous != node:
        await _forget_on(previous, uid, world, runtime)
        log.info("router %s/%s moved from %s to %s", namespace, router.metadata.name,
                 previous, node)  # fmt: skip
    return plan.routed(node, networks, external)


def floating_of(uid: str, world: World, runtime: Runtime) -> list[FloatingAddressSpec]:
    """The floating addresses the Router maps; the first call of the process reads them
    from the FloatingIPs' status (what the last run mapped)."""
    if not runtime.floating_seeded:
        by_name = {(r.metadata.namespace, r.metadata.name): r.metadata.uid for r in world.routers()}
        for found in world.floating_ips():
            status, namespace = found.status, found.metadata.namespace
            router_uid = by_name.get((namespace, status.router)) if status else None
            if status and status.address and status.fixed_address and router_uid:
                binding = Binding(router_uid, status.address, status.fixed_address)
                runtime.floating.setdefault(found.metadata.uid or "", binding)
        runtime.floating_seeded = True
    return sorted(
        (FloatingAddressSpec(address=b.address, fixed=b.fixed)
         for b in runtime.floating.values() if b.router_uid == uid),
        key=lambda f: f.address,
    )  # fmt: skip


async def rebuild(uid: str, world: World, runtime: Runtime) -> None:
    """Build the Router `uid` again (its floating addresses changed) and write its status;
    nothing when it is gone or being deleted. What `reconcile` raises otherwise."""
    router = next((r for r in world.routers() if r.metadata.uid == uid), None)
    if router is None or router.metadata.deletion_timestamp:
        return
    await write_status(router, runtime, await reconcile(router, world, runtime))


def _hold_external(
    router: Router, outside: Network | None, world: World, runtime: Runtime
) -> External | None:
    """The Router's address on its external Network, held in that Network's ledger (the
    one it had, else the highest free one of the first IPv4 subnet with a gateway); any it
    held on another external Network is given back. The caller holds runtime.decisions."""
    uid = router.metadata.uid or ""
    kept = None
    if outside is not None:
        ledger = allocations.ledger(outside, world, runtime)
        subnet = next(
            (s for s in outside.spec.subnets if s.gateway and s.network.version == 4), None
        )
        if subnet is None:
            raise Problem(
                Reason.NO_GATEWAY,
                f"{plan.EXTERNAL_FIELD}: Network {outside.metadata.name} has no IPv4 subnet "
                "with a gateway to route out through",
            )
        try:
            address = ledger.allocate_service(allocations.router_owner(uid), subnet)
        except IpamError as exc:
            raise Problem(
                Reason.ADDRESS_UNAVAILABLE, f"{plan.EXTERNAL_FIELD}: {exc}", waiting=True
            ) from None
        kept = External(outside, f"{address}/{subnet.network.prefixlen}")
    allocations.release_addresses(allocations.router_owner(uid), runtime, keep=outside)
    return kept


async def remove(router: Router, world: World, runtime: Runtime) -> None:
    """Delete the router from its node and give back its external address; AgentError
    when the node does not answer (the finalizer keeps the Router until it does)."""
    uid = router.metadata.uid or ""
    node = node_of(router, runtime)
    if node is not None:
        await _forget_on(node, uid, world, runtime, strict=True)
    runtime.router_nodes.pop(uid, None)
    async with runtime.decisions:
        allocations.release_addresses(allocations.router_owner(uid), runtime)
    runtime.status.forget(uid)
    runtime.locks.pop(uid, None)
    for network in _networks_of(router, world):
        await node_networks.publish(network, world, runtime, resync=False)


def _networks_of(router: Router, world: World) -> list[Network]:
    return [n for n in _looked_up(router, world) if n is not None]


async def _forget_on(
    node: str, uid: str, world: World, runtime: Runtime, *, strict: bool = False
) -> None:
    hypervisor = world.hypervisor(node)
    if hypervisor is None:
        return  # the node is gone, and its routers with it
    try:
        client = await runtime.agents.client(hypervisor)
        await client.forget_router(uid)
    except (AgentError, AgentNotConfigured) as exc:
        if strict:
            raise
        # The node's health check tells it once it answers again (forget_strays).
        log.warning("router %s: node %s was not told to remove it yet: %s", uid, node, exc)


async def forget_strays(node: str, client: AgentClient, world: World, runtime: Runtime) -> None:
    """After (re)connecting to a node: remove the routers it holds that are not its own
    (moved away while it was lost, or deleted meanwhile)."""
    ours = {r.metadata.uid for r in world.routers() if node_of(r, runtime) == node}
    for uid in await client.routers():
        if uid not in ours:
            log.info("node %s: removing router %s, which runs elsewhere or is gone", node, uid)
            try:
                await client.forget_router(uid)
            except AgentError as exc:
                log.warning("node %s: router %s not removed, tried again: %s", node, uid, exc)


def inputs(router: Router, world: World) -> tuple[object, ...]:
    """What the Router is built from besides its own spec: its Networks, each by UID and
    generation and whether it is Ready. When this changes, the Router is built again."""
    return tuple(
        (n.metadata.uid, n.metadata.generation, n.status and n.status.segmentation_id)
        if n is not None else None
        for n in _looked_up(router, world)
    )  # fmt: skip


def node_lost(router: Router, world: World, runtime: Runtime) -> bool:
    """Whether the Router's node is gone or not Ready (it should move)."""
    node = node_of(router, runtime)
    if node is None:
        return False
    hypervisor = world.hypervisor(node)
    return hypervisor is None or not node_shares.ready(hypervisor)


async def write_status(router: Router, runtime: Runtime, change: RouterChange) -> None:
    await runtime.status.write(
        ObjectRef.of(router), router.status, router.metadata.generation or 0, change,
        RouterStatus,
    )  # fmt: skip
