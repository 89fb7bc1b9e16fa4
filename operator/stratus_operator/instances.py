"""Instances end to end: schedule, resolve, dispatch, delete, and follow agent reports.

No kopf here: handlers call these with models, a World and the Runtime, and map the
exceptions to kopf's retry semantics (handlers/errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratus_api.guest import MAX_USER_DATA_BYTES, GuestState, GuestStatus, Nic, NodeInventory
from stratus_api.reasons import IMAGE_FAILURES
from stratus_api.v1alpha1 import Image, Instance
from stratus_api.v1alpha1.base import Condition
from stratus_api.v1alpha1.image import ImagePhase, ImageStatus
from stratus_api.v1alpha1.instance import (
    InstancePhase,
    InstanceStatus,
    InterfaceStatus,
    RunStrategy,
)
from stratus_api.validation import FieldProblem
from stratus_operator import events
from stratus_operator.agent_client import (
    AgentClient,
    AgentError,
    AgentRejected,
    AgentUnauthorized,
)
from stratus_operator.controllers import conditions, ipam, placement, scheduler
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
from stratus_operator.runtime import AgentNotConfigured, Runtime
from stratus_operator.world import World

log = logging.getLogger(__name__)

StatusChange = Callable[[InstanceStatus, int], InstanceStatus]


@dataclass(frozen=True)
class InstanceRef:
    """Which Instance a status write is for: enough to find it, even when its spec cannot
    be parsed."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, instance: Instance) -> InstanceRef:
        meta = instance.metadata
        return cls(meta.namespace or "", meta.name or "", meta.uid or "")

    @classmethod
    def of_body(cls, body: Mapping[str, Any]) -> InstanceRef:
        meta = body.get("metadata") or {}
        return cls(meta.get("namespace") or "", meta.get("name") or "", meta.get("uid") or "")


def size_of(instance: Instance, world: World) -> Size | None:
    try:
        return resolve_size(instance, world.instance_type(instance.spec.instance_type))
    except InstanceProblem:
        return None


def usage(world: World, runtime: Runtime) -> dict[str, placement.Usage]:
    """CPU and memory in use per node: watched placements plus fresh claims."""

    def placed() -> Any:
        for other in world.instances():
            node = other.status.node if other.status else None
            size = size_of(other, world) if node else None
            if node and size is not None:
                yield other.metadata.uid or "", node, placement.Usage(size.cpu, size.memory_bytes)

    return placement.usage_by_node(placed(), runtime.claims.placements)


def _schedule(instance: Instance, size: Size, world: World, runtime: Runtime) -> str:
    """Pick a node and claim the resources; the caller holds the claims lock, so concurrent
    creates see each other's claims and get the same answer as one at a time."""
    uid = instance.metadata.uid or ""
    used = usage(world, runtime)
    candidates = []
    for hv in world.hypervisors():
        name = hv.metadata.name or ""
        ready = hv.status is not None and conditions.is_true(hv.status.conditions, READY)
        free = placement.allocatable(hv)
        taken = used.get(name, placement.Usage())
        candidates.append(
            scheduler.Candidate(
                name=name,
                labels=hv.metadata.labels,
                ready=ready,
                schedulable=hv.spec.schedulable,
                cpu_free=free.cpu - taken.cpu,
                memory_free_bytes=free.memory_bytes - taken.memory_bytes,
            )
        )
    request = scheduler.Request(size.cpu, size.memory_bytes, instance.spec.node_selector or {})
    chosen = scheduler.pick(request, candidates)
    runtime.claims.placements[uid] = (chosen.name, placement.Usage(size.cpu, size.memory_bytes))
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
                mac = ipam.mac_for(uid, index, used_macs)
                if attachment.mac is not None:
                    mac = ipam.check_mac(attachment.mac, used_macs, f"{field}.mac")
            except ipam.IpamError as exc:
                raise InstanceProblem(
                    "AddressUnavailable", f"{exc.field}: {exc}", field=exc.field,
                    retry=attachment.ip is None and exc.field.endswith(".ip"),
                ) from exc  # fmt: skip
            ip = allocation.address
        claimed[uid] = (ip, mac)
        allocation = ipam.allocate(network.spec, used_ips - {ip}, ip, f"{field}.ip")
        nics.append(nic_for(network, allocation, mac))
        interfaces.append(InterfaceStatus(network=attachment.name, ip=ip, mac=mac))
    return interfaces, nics


async def _user_data(instance: Instance, runtime: Runtime) -> bytes | None:
    spec = instance.spec
    if spec.user_data_secret_ref is None:
        data = spec.user_data.encode() if spec.user_data is not None else None
        where = "spec.userData"
    else:
        ref, namespace = spec.user_data_secret_ref, instance.metadata.namespace or ""
        secret = await runtime.kube.secret_data(namespace, ref.name)
        if secret is None or ref.key not in secret:
            what = f"Secret {ref.name}" if secret is None else f"key {ref.key} in Secret {ref.name}"
            raise InstanceProblem(
                "UserDataNotFound", f"spec.userDataSecretRef: {what} not found",
                field="spec.userDataSecretRef",
            )  # fmt: skip
        data, where = secret[ref.key], f"spec.userDataSecretRef: key {ref.key} of Secret {ref.name}"
    if data is not None and len(data) > MAX_USER_DATA_BYTES:
        # Checked here, not left to the agent's 413: the user gets the field and the limit,
        # and the retry (a fixed Secret is picked up) costs one Secret read, not a PUT.
        raise InstanceProblem(
            "UserDataTooLarge",
            f"{where} holds {len(data)} bytes; user-data is limited to {MAX_USER_DATA_BYTES} "
            "bytes (gzip it, or fetch the rest from the guest)",
            field=where.partition(":")[0], stalled=True,
        )  # fmt: skip
    return data


async def write_status(ref: InstanceRef, runtime: Runtime, change: StatusChange) -> None:
    """Apply `change` to the Instance's current status (read fresh), write it, and record
    an Event when a failure appears or Ready turns True."""
    before: list[Condition] = []
    after: list[Condition] = []

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj.get("metadata") or {}
        if meta.get("uid") != ref.uid:
            return None  # deleted and re-created under the same name meanwhile
        current = InstanceStatus.model_validate(obj.get("status") or {})
        updated = change(current, meta.get("generation") or 0)
        before[:], after[:] = current.conditions, updated.conditions
        return updated.to_wire()

    written = await runtime.kube.update_status("instances", ref.namespace, ref.name, mutate)
    if written is not None:
        involved = events.involved("Instance", ref.namespace, ref.name, ref.uid)
        await runtime.events.transition(involved, before, after)


async def reconcile(instance: Instance, world: World, runtime: Runtime) -> StatusChange:
    """Bring the Instance's guest to its spec; return the change to make to its status.

    Raises InstanceProblem, scheduler.Unschedulable or agent errors; `failed` turns them
    into a status change, handlers/errors.py into kopf's retry semantics.
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
    user_data = await _user_data(instance, runtime)
    async with runtime.claims.lock:
        node = status.node or _schedule(instance, size, world, runtime)
        interfaces, nics = _nics(instance, world, runtime)
    hypervisor = world.hypervisor(node)
    if hypervisor is None:
        raise InstanceProblem("HypervisorGone", f"status.node: Hypervisor {node} no longer exists")
    spec = guest_spec(instance, size, image, nics, user_data)
    client = await runtime.agents.client(hypervisor)
    reported = await client.ensure(spec)
    wanted_running = instance.spec.run_strategy is RunStrategy.ALWAYS

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
        ready = conditions.condition(updated.conditions, conditions.READY)
        first = ready is None or updated.phase in (InstancePhase.PENDING, InstancePhase.SCHEDULING)
        if about_this_spec and (reported.state is not GuestState.PROVISIONING or first):
            updated = with_guest_status(updated, reported, generation, wanted_running)
        return updated

    return dispatched


def _failing(
    reason: str, message: str, *, stalled: bool, phase: InstancePhase | None = None
) -> StatusChange:
    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        return status.model_copy(
            update={
                "phase": phase or (InstancePhase.FAILED if stalled else status.phase),
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=reason, message=message,
                    generation=generation, reconciling=not stalled, stalled=stalled,
                ),
            }
        )  # fmt: skip

    return change


def with_problem(problem: InstanceProblem) -> StatusChange:
    return _failing(problem.reason, str(problem), stalled=problem.needs_user)


def unschedulable(why: str) -> StatusChange:
    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        waiting = _failing("Unschedulable", why, stalled=False, phase=InstancePhase.SCHEDULING)
        updated = waiting(status, generation)
        return updated.model_copy(
            update={
                "conditions": conditions.set_condition(
                    updated.conditions, SCHEDULED, False, "Unschedulable", why, generation
                )
            }
        )

    return change


def invalid(problems: Sequence[FieldProblem]) -> StatusChange:
    """The operator cannot read the Instance (admission and the models disagree): say which
    field, stall, and leave the guest alone."""
    detail = "; ".join(str(problem) for problem in problems) or "the spec cannot be read"
    return _failing("InvalidSpec", detail, stalled=True, phase=None)


def failed(exc: Exception) -> StatusChange | None:
    """The status change for an error out of `reconcile`; None for unknown errors, which
    keep their stack trace and are retried."""
    if isinstance(exc, InstanceProblem):
        return with_problem(exc)
    if isinstance(exc, scheduler.Unschedulable):
        return unschedulable(str(exc))
    if isinstance(exc, AgentRejected):
        return _failing("AgentRejected", str(exc), stalled=True)
    if isinstance(exc, AgentUnauthorized):
        return _failing("AgentUnauthorized", str(exc), stalled=False)
    if isinstance(exc, AgentError | AgentNotConfigured):
        return _failing("AgentUnavailable", str(exc), stalled=False)
    return None


async def remove(uid: str, node: str | None, world: World, runtime: Runtime) -> None:
    """Delete the guest on its node (if any) and release what it held."""
    node = node or runtime.claims.placements.get(uid, ("", None))[0]
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
    wanted_running = instance.spec.run_strategy is RunStrategy.ALWAYS
    known = instance.status or InstanceStatus()
    if with_guest_status(known, guest, instance.metadata.generation or 0, wanted_running) != known:
        # Only news costs API calls: resyncs report every guest every few seconds.
        await write_status(
            InstanceRef.of(instance),
            runtime,
            lambda status, generation: with_guest_status(status, guest, generation, wanted_running),
        )
    if guest.state is GuestState.FAILED and guest.reason in IMAGE_FAILURES:
        await _fail_image(instance, guest, world, runtime)


async def _fail_image(instance: Instance, guest: GuestStatus, world: World, rt: Runtime) -> None:
    name = instance.spec.boot.image or ""
    image = world.image((instance.metadata.namespace or "", name))
    if image is None or (image.status and image.status.phase is ImagePhase.FAILED):
        return
    before: list[Condition] = []

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        fresh = Image.model_validate(obj)
        status = fresh.status or ImageStatus()
        if status.phase is ImagePhase.FAILED:
            return None
        before[:] = status.conditions
        return status.model_copy(
            update={
                "phase": ImagePhase.FAILED,
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=guest.reason, message=guest.message,
                    generation=fresh.metadata.generation, stalled=True,
                ),
            }
        ).to_wire()  # fmt: skip

    written = await rt.kube.update_status("images", image.metadata.namespace, name, mutate)
    if written is not None:
        ref = events.involved("Image", image.metadata.namespace, name, image.metadata.uid or "")
        after = ImageStatus.model_validate(written).conditions
        await rt.events.transition(ref, before, after)


async def resync(
    node: str, inventory: NodeInventory, client: AgentClient, world: World, runtime: Runtime
) -> list[Instance]:
    """After (re)connecting to a node: report every guest, delete guests of no Instance, and
    return the Instances placed here whose guest is missing (to dispatch again).

    A guest is deleted only when no Instance of its UID exists at all, parsed or not: an
    Instance the operator cannot read still owns its guest.
    """
    on_node = {
        i.metadata.uid: i
        for i in world.instances()
        if i.status is not None and i.status.node == node
    }
    for guest in inventory.guests:
        if world.has_instance(guest.uid):
            await apply_report(guest, world, runtime)
            continue
        log.info("node %s: deleting guest %s, which belongs to no Instance", node, guest.uid)
        try:
            await client.delete(guest.uid)
        except AgentError as exc:
            # One entry the node cannot delete must not stop the resync of the others.
            log.warning("node %s: guest %s not deleted, skipped: %s", node, guest.uid, exc)
    present = {guest.uid for guest in inventory.guests}
    return [i for uid, i in on_node.items() if uid not in present]
