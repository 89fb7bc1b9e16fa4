"""Instances end to end: schedule, resolve, dispatch, delete, and follow agent reports.

No kopf here: handlers call these with models, a World and the Runtime, and map the
exceptions to kopf's retry semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stratus_api.guest import GuestState, GuestStatus, Nic, NodeInventory
from stratus_api.v1alpha1 import Image, Instance
from stratus_api.v1alpha1.image import ImagePhase, ImageStatus
from stratus_api.v1alpha1.instance import InstancePhase, InstanceStatus, InterfaceStatus
from stratus_operator.agent_client import AgentClient
from stratus_operator.controllers import conditions, ipam, scheduler
from stratus_operator.controllers.instance import (
    READY,
    SCHEDULED,
    InstanceProblem,
    Size,
    check_image,
    guest_spec,
    nic_for,
    resolve_size,
    with_guest_status,
)
from stratus_operator.runtime import Runtime
from stratus_operator.world import World

log = logging.getLogger(__name__)
IMAGE_FAILURES = {"ImageChecksumMismatch", "ImageFormatMismatch", "ImageUnreadable",
                  "ImageHasBackingFile", "ImageFormatUnsupported"}  # fmt: skip


def size_of(instance: Instance, world: World) -> Size | None:
    try:
        return resolve_size(instance, world.instance_type(instance.spec.instance_type))
    except InstanceProblem:
        return None


def allocated(node: str, world: World, runtime: Runtime, *, skip: str = "") -> tuple[int, int]:
    """CPU and memory of the Instances placed on `node`: watched state plus fresh claims."""
    cpu = memory = 0
    seen = set()
    for other in world.instances():
        uid = other.metadata.uid or ""
        seen.add(uid)
        if uid == skip or other.status is None or other.status.node != node:
            continue
        size = size_of(other, world)
        if size is not None:
            cpu, memory = cpu + size.cpu, memory + size.memory_bytes
    for uid, (claimed_node, claimed_cpu, claimed_memory) in runtime.claims.placements.items():
        if uid not in seen and uid != skip and claimed_node == node:
            cpu, memory = cpu + claimed_cpu, memory + claimed_memory
    return cpu, memory


def _schedule(instance: Instance, size: Size, world: World, runtime: Runtime) -> str:
    uid = instance.metadata.uid or ""
    candidates = []
    for hv in world.hypervisors():
        name = hv.metadata.name or ""
        status = hv.status
        capacity = status.allocatable or status.capacity if status else None
        used_cpu, used_memory = allocated(name, world, runtime, skip=uid)
        candidates.append(
            scheduler.Candidate(
                name=name,
                labels=hv.metadata.labels,
                ready=status is not None and conditions.is_true(status.conditions, READY),
                schedulable=hv.spec.schedulable,
                cpu_free=(capacity.cpu if capacity else 0) - used_cpu,
                memory_free_bytes=(capacity.memory.bytes if capacity else 0) - used_memory,
            )
        )
    request = scheduler.Request(size.cpu, size.memory_bytes, instance.spec.node_selector or {})
    chosen = scheduler.pick(request, candidates)
    runtime.claims.placements[uid] = (chosen.name, size.cpu, size.memory_bytes)
    return chosen.name


def _nics(
    instance: Instance, world: World, runtime: Runtime
) -> tuple[list[InterfaceStatus], list[Nic]]:
    namespace, uid = instance.metadata.namespace or "", instance.metadata.uid or ""
    own = {i.network: i for i in (instance.status.interfaces if instance.status else [])}
    interfaces, nics = [], []
    for index, attachment in enumerate(instance.spec.networks):
        field = f"spec.networks[{index}]"
        network = world.network((namespace, attachment.name))
        if network is None:
            raise InstanceProblem(
                "NetworkNotFound", f"{field}.name: Network {attachment.name} not found",
                field=f"{field}.name",
            )  # fmt: skip
        key = f"{namespace}/{attachment.name}"
        claimed = runtime.claims.addresses.setdefault(key, {})
        used_ips, used_macs = set(), set()
        for other in world.instances():
            if other.metadata.uid == uid or other.metadata.namespace != namespace:
                continue
            for iface in other.status.interfaces if other.status else []:
                if iface.network == attachment.name:
                    used_ips.update([iface.ip] if iface.ip else [])
                    used_macs.update([iface.mac] if iface.mac else [])
        for owner, (ip, mac) in claimed.items():
            if owner != uid:
                used_ips.add(ip)
                used_macs.add(mac)
        previous = own.get(attachment.name)
        if previous and previous.ip and previous.mac:
            ip, mac = previous.ip, previous.mac
        elif uid in claimed:
            ip, mac = claimed[uid]
        else:
            try:
                allocation = ipam.allocate(network.spec, used_ips, attachment.ip, f"{field}.ip")
            except ipam.IpamError as exc:
                raise InstanceProblem(
                    "AddressUnavailable", f"{exc.field}: {exc}", field=exc.field,
                    retry=attachment.ip is None,
                ) from exc  # fmt: skip
            ip, mac = allocation.address, attachment.mac or ipam.mac_for(uid, index, used_macs)
        claimed[uid] = (ip, mac)
        allocation = ipam.allocate(network.spec, used_ips - {ip}, ip, f"{field}.ip")
        nics.append(nic_for(network, allocation, mac))
        interfaces.append(InterfaceStatus(network=attachment.name, ip=ip, mac=mac))
    return interfaces, nics


async def _user_data(instance: Instance, runtime: Runtime) -> bytes | None:
    spec = instance.spec
    if spec.user_data_secret_ref is None:
        return spec.user_data.encode() if spec.user_data is not None else None
    ref, namespace = spec.user_data_secret_ref, instance.metadata.namespace or ""
    data = await runtime.kube.secret_data(namespace, ref.name)
    if data is None or ref.key not in data:
        what = f"Secret {ref.name}" if data is None else f"key {ref.key} in Secret {ref.name}"
        raise InstanceProblem(
            "UserDataNotFound", f"spec.userDataSecretRef: {what} not found",
            field="spec.userDataSecretRef",
        )  # fmt: skip
    return data[ref.key]


StatusChange = Callable[[InstanceStatus, int], InstanceStatus]


async def write_status(instance: Instance, runtime: Runtime, change: StatusChange) -> None:
    """Apply `change` to the Instance's current status (read fresh) and write it."""

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        fresh = Instance.model_validate(obj)
        if fresh.metadata.uid != instance.metadata.uid:
            return None  # deleted and re-created under the same name meanwhile
        generation = fresh.metadata.generation or 0
        return change(fresh.status or InstanceStatus(), generation).to_wire()

    await runtime.kube.update_status(
        "instances", instance.metadata.namespace, instance.metadata.name or "", mutate
    )


async def reconcile(instance: Instance, world: World, runtime: Runtime) -> StatusChange:
    """Bring the Instance's guest to its spec; return the change to make to its status.

    Raises InstanceProblem, scheduler.Unschedulable or agent errors; the caller decides about
    retries and records them with `with_problem` / `unschedulable`.
    """
    status = instance.status or InstanceStatus()
    meta = instance.metadata
    size = resolve_size(instance, world.instance_type(instance.spec.instance_type))
    if instance.spec.boot.image is None:
        raise InstanceProblem(
            "BootVolumeUnsupported", "spec.boot.volume: booting from a Volume is not supported yet",
            field="spec.boot.volume", retry=False,
        )  # fmt: skip
    if instance.spec.volumes:
        raise InstanceProblem(
            "VolumesUnsupported", "spec.volumes: attaching Volumes is not supported yet",
            field="spec.volumes", retry=False,
        )  # fmt: skip
    image = check_image(
        instance, world.image((meta.namespace or "", instance.spec.boot.image)), size
    )
    async with runtime.claims.lock:
        node = status.node or _schedule(instance, size, world, runtime)
        interfaces, nics = _nics(instance, world, runtime)
    hypervisor = world.hypervisor(node)
    if hypervisor is None:
        raise InstanceProblem("HypervisorGone", f"status.node: Hypervisor {node} no longer exists")
    spec = guest_spec(instance, size, image, nics, await _user_data(instance, runtime))
    client = await runtime.agents.client(hypervisor)
    reported = await client.ensure(spec)

    def dispatched(current: InstanceStatus, generation: int) -> InstanceStatus:
        updated = current.model_copy(
            update={
                "node": node,
                "interfaces": interfaces,
                "conditions": conditions.set_condition(
                    current.conditions, SCHEDULED, True, "Scheduled", f"placed on {node}",
                    generation,
                ),
            }
        )  # fmt: skip
        # The PUT's answer is the guest as it was when the spec arrived; the agent reports
        # what follows as events, which may be written before this. So the answer counts
        # only if it is about this spec, and then only a real state, or a first one.
        about_this_spec = (reported.generation or 0) >= spec.generation
        ready = conditions.condition(updated.conditions, READY)
        first = ready is None or updated.phase in (InstancePhase.PENDING, InstancePhase.SCHEDULING)
        if about_this_spec and (reported.state is not GuestState.PROVISIONING or first):
            updated = with_guest_status(updated, reported, generation)
        return updated

    return dispatched


def with_problem(problem: InstanceProblem) -> StatusChange:
    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        phase = status.phase if problem.retry else InstancePhase.FAILED
        return status.model_copy(
            update={
                "phase": phase,
                "conditions": conditions.set_condition(
                    status.conditions, READY, False, problem.reason, str(problem), generation
                ),
            }
        )

    return change


def unschedulable(why: str) -> StatusChange:
    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        return status.model_copy(
            update={
                "phase": InstancePhase.SCHEDULING,
                "conditions": conditions.set_condition(
                    status.conditions, SCHEDULED, False, "Unschedulable", why, generation
                ),
            }
        )

    return change


async def remove(instance: Instance, world: World, runtime: Runtime) -> None:
    """Delete the guest on its node (if any) and release what it held."""
    uid = instance.metadata.uid or ""
    node = instance.status.node if instance.status else None
    node = node or runtime.claims.placements.get(uid, ("",))[0]
    hypervisor = world.hypervisor(node) if node else None
    if hypervisor is not None:
        client = await runtime.agents.client(hypervisor)
        await client.delete(uid)
    runtime.claims.release(uid)


async def apply_report(guest: GuestStatus, world: World, runtime: Runtime) -> None:
    """An agent reported a guest: update its Instance (and its Image, if the image failed)."""
    instance = world.instance(guest.uid)
    if instance is None or instance.metadata.deletion_timestamp:
        return
    known = instance.status or InstanceStatus()
    if with_guest_status(known, guest, instance.metadata.generation or 0) != known:
        # Only news costs API calls: resyncs report every guest every few seconds.
        await write_status(
            instance,
            runtime,
            lambda status, generation: with_guest_status(status, guest, generation),
        )
    if guest.state is GuestState.FAILED and guest.reason in IMAGE_FAILURES:
        await _fail_image(instance, guest, world, runtime)


async def _fail_image(instance: Instance, guest: GuestStatus, world: World, rt: Runtime) -> None:
    name = instance.spec.boot.image or ""
    image = world.image((instance.metadata.namespace or "", name))
    if image is None or (image.status and image.status.phase is ImagePhase.FAILED):
        return

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        fresh = Image.model_validate(obj)
        status = fresh.status or ImageStatus()
        if status.phase is ImagePhase.FAILED:
            return None
        return status.model_copy(
            update={
                "phase": ImagePhase.FAILED,
                "conditions": conditions.set_condition(
                    status.conditions, READY, False, guest.reason, guest.message,
                    fresh.metadata.generation,
                ),
            }
        ).to_wire()  # fmt: skip

    await rt.kube.update_status("images", image.metadata.namespace, name, mutate)


async def resync(
    node: str, inventory: NodeInventory, client: AgentClient, world: World, runtime: Runtime
) -> list[Instance]:
    """After (re)connecting to a node: report every guest, delete guests of no Instance, and
    return the Instances placed here whose guest is missing (to dispatch again)."""
    on_node = {
        i.metadata.uid: i
        for i in world.instances()
        if i.status is not None and i.status.node == node
    }
    for guest in inventory.guests:
        if world.instance(guest.uid) is None:
            log.info("node %s: deleting guest %s, which belongs to no Instance", node, guest.uid)
            await client.delete(guest.uid)
        else:
            await apply_report(guest, world, runtime)
    present = {guest.uid for guest in inventory.guests}
    return [i for uid, i in on_node.items() if uid not in present]
