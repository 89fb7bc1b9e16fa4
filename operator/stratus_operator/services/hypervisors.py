"""Hypervisors: health-check each agent, keep Ready, capacity and allocations current, and
hold the node level-triggered against its Instances."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from stratus_api.guest import NodeInventory
from stratus_api.quantity import ByteQuantity
from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import Hypervisor, Instance
from stratus_api.v1alpha1.hypervisor import HypervisorStatus, Resources, StoragePool, VirtType
from stratus_api.v1alpha1.instance import InstanceStatus
from stratus_api.volume_wire import PoolUsage
from stratus_operator.controllers import conditions, placement
from stratus_operator.controllers.instance import StatusChange
from stratus_operator.services import allocations, ceph, instances, routers
from stratus_operator.services.agent_client import (
    AgentClient,
    AgentError,
    AgentRejected,
    AgentUnauthorized,
)
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """What one health check found."""

    inventory: NodeInventory | None
    reason: str = Reason.AGENT_READY
    message: str = ""
    pools: tuple[PoolUsage, ...] = ()


async def probe(hypervisor: Hypervisor, runtime: Runtime) -> Probe:
    try:
        client = await runtime.agents.client(hypervisor, refresh=True)  # token rotation
        inventory = await client.inventory()
        try:
            pools = tuple((await client.volumes()).pools)
        except AgentRejected:  # an agent that holds no volumes
            pools = ()
        return Probe(inventory, pools=pools)
    except AgentNotConfigured as exc:
        return Probe(None, Reason.AGENT_NOT_CONFIGURED, str(exc))
    except AgentUnauthorized as exc:
        return Probe(None, Reason.AGENT_UNAUTHORIZED, f"{exc} (check spec.tokenSecretRef)")
    except AgentError as exc:
        return Probe(None, Reason.AGENT_UNREACHABLE, str(exc))


def storage_pool(pool: PoolUsage) -> StoragePool:
    return StoragePool(
        backend=pool.backend,
        location=pool.pool,
        capacity=ByteQuantity(pool.capacity_bytes),
        provisioned=ByteQuantity(pool.used_bytes),
        free=ByteQuantity(pool.free_bytes),
    )


def with_probe(
    hypervisor: Hypervisor, found: Probe, used: placement.Usage
) -> Callable[[HypervisorStatus, int], HypervisorStatus]:
    """The status change a health check makes."""

    def change(status: HypervisorStatus, generation: int) -> HypervisorStatus:
        update: dict[str, object] = {
            "allocated": Resources(cpu=used.cpu, memory=ByteQuantity(used.memory_bytes)),
            "observed_generation": generation,
        }
        inventory = found.inventory
        if inventory is None:
            update["conditions"] = conditions.set_condition(
                status.conditions, conditions.READY, False, found.reason, found.message, generation
            )
            return status.model_copy(update=update)
        capacity = Resources(cpu=inventory.cpu, memory=ByteQuantity(inventory.memory_bytes))
        reported = status.model_copy(update={"capacity": capacity})
        free = placement.allocatable(hypervisor.model_copy(update={"status": reported}))
        virt = VirtType(inventory.virt_type) if inventory.virt_type != "fake" else VirtType.QEMU
        update |= {
            # The node's own pools; a Ceph pool's figures go to its CephPool.
            "storage": [storage_pool(p) for p in found.pools if p.pool_uid is None],
            "physical_networks": sorted(inventory.physical_networks),
            "tunnel_endpoint": inventory.tunnel_endpoint,
            "virt_type": virt,
            "capacity": capacity,
            "allocatable": Resources(cpu=free.cpu, memory=ByteQuantity(free.memory_bytes)),
            "heartbeat": conditions.now(),
            "conditions": conditions.set_condition(
                status.conditions, conditions.READY, True, Reason.AGENT_READY,
                f"agent answers; {len(inventory.guests)} guests", generation,
            ),
        }  # fmt: skip
        return status.model_copy(update=update)

    return change


async def check(hypervisor: Hypervisor, world: World, runtime: Runtime) -> None:
    """One health check: status and Events; when the agent answers, the node against the
    Instances (guests of no Instance go, Instances missing their guest are dispatched);
    when it does not, its Instances say so."""
    name = hypervisor.metadata.name or ""
    allocations.seed(world, runtime)
    placed = instances.placed_on(name, world)
    found = await probe(hypervisor, runtime)
    await runtime.status.write(
        ObjectRef.of(hypervisor), hypervisor.status, hypervisor.metadata.generation or 0,
        with_probe(hypervisor, found, runtime.placements.used(name)), HypervisorStatus,
    )  # fmt: skip
    for pool in found.pools:
        if pool.pool_uid is not None:
            await ceph.report_usage(pool, name, world, runtime)
    if found.inventory is None:
        for instance in world.instances_on(name):
            await instances.write_status(
                ObjectRef.of(instance), instance.status, instance.metadata.generation or 0,
                runtime, node_unreachable(name, found.message),
            )  # fmt: skip
        return
    if hypervisor.metadata.deletion_timestamp:
        return
    client = await runtime.agents.client(hypervisor)
    await resync(name, placed, found.inventory, client, world, runtime)


async def resync(
    name: str, placed: set[str], inventory: NodeInventory, client: AgentClient, world: World,
    runtime: Runtime,
) -> None:  # fmt: skip
    for instance in await instances.resync(name, placed, inventory, client, world, runtime):
        await redispatch(instance, world, runtime)
    try:
        await routers.forget_strays(name, client, world, runtime)
    except AgentError as exc:  # an agent that builds no routers holds none
        log.debug("node %s: routers not listed: %s", name, exc)


def node_unreachable(node: str, why: str) -> StatusChange:
    """Ready turns Unknown: nobody can say how the guest is while its node does not answer."""

    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        return status.model_copy(
            update={
                "conditions": conditions.with_progress(
                    status.conditions, ready=None, reason=Reason.NODE_UNREACHABLE,
                    message=f"Hypervisor {node} does not answer: {why}",
                    generation=status.observed_generation or generation, reconciling=True,
                )
            }
        )  # fmt: skip

    return change


async def redispatch(instance: Instance, world: World, runtime: Runtime) -> None:
    """A guest placed on this node is missing there (node wiped, agent state lost): ensure it
    again and record what happened."""
    if instance.metadata.deletion_timestamp:
        return
    try:
        change = await instances.reconcile(instance, world, runtime)
    except Exception as exc:
        failure = instances.failed(exc)
        if failure is None:
            log.exception("instance %s: dispatch after resync failed", instance.metadata.name)
            return
        change = failure
    await instances.write_status(
        ObjectRef.of(instance), instance.status, instance.metadata.generation or 0,
        runtime, change,
    )  # fmt: skip
