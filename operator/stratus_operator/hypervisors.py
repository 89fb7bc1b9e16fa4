"""Hypervisors: health-check each agent and keep Ready, capacity and allocations current."""

from __future__ import annotations

from stratus_api.guest import NodeInventory
from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1 import Hypervisor
from stratus_api.v1alpha1.hypervisor import HypervisorStatus, Resources, VirtType
from stratus_operator import instances
from stratus_operator.agent_client import AgentError, AgentUnauthorized
from stratus_operator.controllers import conditions, placement
from stratus_operator.controllers.instance import READY
from stratus_operator.runtime import AgentNotConfigured, Runtime
from stratus_operator.world import World


async def health(
    hypervisor: Hypervisor, world: World, runtime: Runtime
) -> tuple[HypervisorStatus, NodeInventory | None]:
    """The Hypervisor's status after asking its agent how it is, and the node's inventory
    when the agent answered."""
    status = hypervisor.status or HypervisorStatus()
    name = hypervisor.metadata.name or ""
    generation = hypervisor.metadata.generation
    used = instances.usage(world, runtime).get(name, placement.Usage())
    status = status.model_copy(
        update={"allocated": Resources(cpu=used.cpu, memory=ByteQuantity(used.memory_bytes)),
                "observed_generation": generation}
    )  # fmt: skip
    try:
        client = await runtime.agents.client(hypervisor, refresh=True)  # token rotation
        inventory = await client.inventory()
    except AgentNotConfigured as exc:
        reason, message = "AgentNotConfigured", str(exc)
    except AgentUnauthorized as exc:
        reason, message = "AgentUnauthorized", f"{exc} (check spec.tokenSecretRef)"
    except AgentError as exc:
        reason, message = "AgentUnreachable", str(exc)
    else:
        capacity = Resources(cpu=inventory.cpu, memory=ByteQuantity(inventory.memory_bytes))
        virt = VirtType(inventory.virt_type) if inventory.virt_type != "fake" else VirtType.QEMU
        reported = status.model_copy(update={"capacity": capacity})
        free = placement.allocatable(hypervisor.model_copy(update={"status": reported}))
        allocatable = Resources(cpu=free.cpu, memory=ByteQuantity(free.memory_bytes))
        return status.model_copy(
            update={
                "virt_type": virt,
                "capacity": capacity,
                "allocatable": allocatable,
                "heartbeat": conditions.now(),
                "conditions": conditions.set_condition(
                    status.conditions, READY, True, "AgentReady",
                    f"agent answers; {len(inventory.guests)} guests", generation,
                ),
            }
        ), inventory  # fmt: skip
    failed = conditions.set_condition(status.conditions, READY, False, reason, message, generation)
    return status.model_copy(update={"conditions": failed}), None
