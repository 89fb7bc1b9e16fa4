"""Instances end to end: resolve, dispatch, delete, and follow agent reports.

No kopf here: handlers call these with models, a World and the Runtime, and map the
exceptions to kopf's retry semantics (handlers/errors.py). Where an Instance runs and its
addresses are decided in allocations.py; status changes are plain functions in
controllers/instance.py, written by the one status writer (status.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stratus_api.guest import MAX_USER_DATA_BYTES, GuestState, GuestStatus, NodeInventory
from stratus_api.reasons import IMAGE_FAILURES, Reason
from stratus_api.v1alpha1 import Instance
from stratus_api.v1alpha1.image import ImagePhase, ImageStatus
from stratus_api.v1alpha1.instance import InstancePhase, InstanceStatus
from stratus_operator.controllers import addressing, conditions, scheduler, waiters
from stratus_operator.controllers.instance import (
    SCHEDULED,
    InstanceProblem,
    StatusChange,
    Wanted,
    check_image,
    failing,
    guest_spec,
    nic_for,
    resolve_size,
    unschedulable,
    with_guest_status,
    with_problem,
)
from stratus_operator.controllers.security_group import nic_group_keys
from stratus_operator.services import allocations, security_groups, volumes
from stratus_operator.services.agent_client import (
    AgentClient,
    AgentError,
    AgentRejected,
    AgentUnauthorized,
)
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.settings import OperatorSettings
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


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
                Reason.USER_DATA_NOT_FOUND, f"spec.userDataSecretRef: {what} not found",
                field="spec.userDataSecretRef",
            )  # fmt: skip
        data, where = secret[ref.key], f"spec.userDataSecretRef: key {ref.key} of Secret {ref.name}"
    if data is not None and len(data) > MAX_USER_DATA_BYTES:
        # Checked here, not left to the agent's 413: the user gets the field and the limit,
        # and the retry (a fixed Secret is picked up) costs one Secret read, not a PUT.
        raise InstanceProblem(
            Reason.USER_DATA_TOO_LARGE,
            f"{where} holds {len(data)} bytes; user-data is limited to {MAX_USER_DATA_BYTES} "
            "bytes (gzip it, or fetch the rest from the guest)",
            field=where.partition(":")[0], stalled=True,
        )  # fmt: skip
    return data


async def write_body_status(
    body: Mapping[str, Any], runtime: Runtime, change: StatusChange
) -> None:
    """Write status for an Instance known by its raw body (its spec may be unreadable)."""
    meta = body.get("metadata") or {}
    kind, plural = Instance.crd.kind, Instance.crd.plural
    ref = ObjectRef(kind, plural, meta.get("namespace"), meta.get("name") or "",
                    meta.get("uid") or "")  # fmt: skip
    try:
        watched: InstanceStatus | None = InstanceStatus.model_validate(body.get("status") or {})
    except ValueError:
        watched = None
    await write_status(ref, watched, meta.get("generation") or 0, runtime, change)


async def write_status(
    ref: ObjectRef, watched: InstanceStatus | None, generation: int, runtime: Runtime,
    change: StatusChange,
) -> None:  # fmt: skip
    await runtime.status.write(ref, watched, generation, change, InstanceStatus)


async def reconcile(instance: Instance, world: World, runtime: Runtime) -> StatusChange:
    """Bring the Instance's guest to its spec; return the change to make to its status.

    Raises InstanceProblem, scheduler.Unschedulable or agent errors; `failed` turns them
    into a status change, handlers/errors.py into kopf's retry semantics.
    """
    meta = instance.metadata
    size = resolve_size(instance, world.instance_type(instance.spec.instance_type))
    boot_image = instance.spec.boot.image
    image = None
    if boot_image is not None:  # else the boot volume, first of the claimed Volumes
        image = check_image(instance, world.image((meta.namespace or "", boot_image)), size)
    user_data = await _user_data(instance, runtime)
    async with runtime.decisions:
        attached = volumes.claim(instance, world, runtime)
        required = volumes.required_node(attached, runtime)
        node = allocations.schedule(
            instance, size, world, runtime, required, volumes.unbound_backends(attached, runtime),
            allocations.physical_networks(instance, world),
        )  # fmt: skip
        allocated = allocations.addresses(instance, world, runtime)
        resolvers = [allocations.resolver(network, address.ip, node, world, runtime)
                     for network, address in allocated]  # fmt: skip
    await volumes.made_ready(instance, attached, node, world, runtime)
    interfaces = allocations.interfaces(allocated)
    nics = [
        nic_for(
            network, addressing.describe(network.spec, address.ip), address.mac,
            nic_group_keys(instance, attachment), resolver,
        )
        for (network, address), attachment, resolver in zip(
            allocated, instance.spec.networks, resolvers, strict=True
        )
    ]  # fmt: skip
    await security_groups.ensure_default(instance, world, runtime)
    hypervisor = world.hypervisor(node)
    if hypervisor is None:
        raise InstanceProblem(
            Reason.HYPERVISOR_GONE, f"status.node: Hypervisor {node} no longer exists"
        )
    ceph_access = await volumes.ceph_accesses(attached, world, runtime)
    spec = guest_spec(instance, size, image, nics, user_data, attached, ceph_access)
    client = await runtime.agents.client(hypervisor)
    reported = await client.ensure(spec)
    # Counted as applied now, not when written: the node's older events that arrive after
    # the answer (the Provisioning it sent before the guest settled) must not undo it.
    newest = runtime.newest(spec.uid, reported.sequence)
    await volumes.mark_attached(instance, attached, world, runtime)
    wanted = Wanted.of(instance)

    def dispatched(current: InstanceStatus, generation: int) -> InstanceStatus:
        updated = current.model_copy(
            update={
                "node": node,
                "interfaces": interfaces,
                "conditions": conditions.set_condition(
                    current.conditions, SCHEDULED, True, Reason.SCHEDULED, f"placed on {node}",
                    generation,
                ),
            }
        )  # fmt: skip
        # The PUT's answer is the guest as it was when the spec arrived; the agent reports
        # what follows as events, which may be written before this. So the answer counts
        # only if no newer event was applied and it is about this spec, and then only a
        # real state, or a first one.
        about_this_spec = newest and (reported.generation or 0) >= spec.generation
        ready = conditions.condition(updated.conditions, conditions.READY)
        first = ready is None or updated.phase in (InstancePhase.PENDING, InstancePhase.SCHEDULING)
        if about_this_spec and (reported.state is not GuestState.PROVISIONING or first):
            updated = with_guest_status(updated, reported, generation, wanted)
        return updated

    return dispatched


def failed(exc: Exception) -> StatusChange | None:
    """The status change for an error out of `reconcile`; None for unknown errors, which
    keep their stack trace and are retried."""
    if isinstance(exc, InstanceProblem):
        return with_problem(exc)
    if isinstance(exc, scheduler.Unschedulable):
        return unschedulable(str(exc))
    if isinstance(exc, AgentRejected):
        return failing(Reason.AGENT_REJECTED, str(exc), stalled=True)
    if isinstance(exc, AgentUnauthorized):
        return failing(Reason.AGENT_UNAUTHORIZED, str(exc), stalled=False)
    if isinstance(exc, AgentError | AgentNotConfigured):
        return failing(Reason.AGENT_UNAVAILABLE, str(exc), stalled=False)
    return None


def retry_delay(exc: Exception, attempt: int, settings: OperatorSettings) -> float | None:
    """Seconds before `reconcile` is tried again after `exc` (`attempt`: retries so far),
    or None when only a change to the Instance can help. handlers/errors.py gives kopf
    these; wakeups.py uses them for the Instances it runs itself."""
    retries = settings.retries
    if isinstance(exc, InstanceProblem):
        if not exc.retry:
            return None
        return retries.stalled_seconds if exc.needs_user else retries.backoff(attempt)
    if isinstance(exc, scheduler.Unschedulable):
        return settings.scheduling.retry_seconds
    if isinstance(exc, AgentRejected):
        return None  # the node refused the request itself: sending it again cannot help
    return retries.backoff(attempt)


def waits_on(exc: Exception) -> waiters.Dependency | None:
    """The object whose change may let the Instance progress, when `exc` is only waiting
    for one (nothing for the user to do meanwhile)."""
    if isinstance(exc, InstanceProblem) and exc.retry and not exc.needs_user:
        return exc.waits_on
    return None


async def remove(uid: str, node: str | None, world: World, runtime: Runtime) -> None:
    """Delete the guest on its node (if any) and release what it held."""
    node = node or runtime.placements.node_of(uid)
    hypervisor = world.hypervisor(node) if node else None
    if hypervisor is not None:
        client = await runtime.agents.client(hypervisor)
        await client.delete(uid)
    allocations.release(uid, runtime)
    await volumes.release(uid, world, runtime)
    runtime.status.forget(uid)
    runtime.reported.pop(uid, None)
    runtime.settled.pop(uid, None)
    runtime.memberships.forget(uid)


async def apply_report(guest: GuestStatus, world: World, runtime: Runtime) -> None:
    """An agent reported a guest: update its Instance (and its Image, if the image failed)."""
    instance = world.instance(guest.uid)
    if instance is None or instance.metadata.deletion_timestamp:
        return
    if not runtime.newest(guest.uid, guest.sequence):
        return  # older than a report already applied
    version = instance.metadata.resource_version
    said = {**guest.__dict__, "sequence": None}  # what the guest is, not when it was said
    if version is None or runtime.settled.get(guest.uid) != (version, said):
        wrote = await _apply_news(instance, guest, runtime)
        if version is not None and not wrote:  # a write makes a new version: look again then
            runtime.settled[guest.uid] = (version, said)
    if guest.state is GuestState.FAILED and guest.reason in IMAGE_FAILURES:
        await _fail_image(instance, guest, world, runtime)


async def _apply_news(instance: Instance, guest: GuestStatus, runtime: Runtime) -> bool:
    """Write what the report changes in the Instance's status; whether it changed any."""
    wanted, node = Wanted.of(instance), runtime.placements.node_of(guest.uid)
    known = instance.status or InstanceStatus()
    generation = instance.metadata.generation or 0
    if with_guest_status(known, guest, generation, wanted, node) == known:
        return False  # only news costs API calls: resyncs report every guest every 10 s
    await write_status(
        ObjectRef.of(instance), instance.status, generation, runtime,
        lambda status, generation: with_guest_status(status, guest, generation, wanted, node),
    )  # fmt: skip
    return True


async def _fail_image(instance: Instance, guest: GuestStatus, world: World, rt: Runtime) -> None:
    name = instance.spec.boot.image or ""
    image = world.image((instance.metadata.namespace or "", name))
    if image is None or (image.status and image.status.phase is ImagePhase.FAILED):
        return

    def failed_image(status: ImageStatus, generation: int) -> ImageStatus:
        if status.phase is ImagePhase.FAILED:
            return status
        return status.model_copy(
            update={
                "phase": ImagePhase.FAILED,
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=guest.reason, message=guest.message,
                    generation=generation, stalled=True,
                ),
            }
        )  # fmt: skip

    generation = image.metadata.generation or 0
    await rt.status.write(ObjectRef.of(image), image.status, generation, failed_image, ImageStatus)


def placed_on(node: str, world: World) -> set[str]:
    """UIDs of the Instances placed on `node`: taken before the node's inventory is read,
    so an Instance dispatched meanwhile is not taken for one whose guest went missing."""
    return {uid for i in world.instances_on(node) if (uid := i.metadata.uid)}


async def resync(
    node: str, placed: set[str], inventory: NodeInventory, client: AgentClient, world: World,
    runtime: Runtime,
) -> list[Instance]:  # fmt: skip
    """After (re)connecting to a node: report every guest, delete guests of no Instance, and
    return the Instances placed here (`placed`, from before the inventory was read) whose
    guest is missing, to dispatch again.

    A guest is deleted only when no Instance of its UID exists at all, parsed or not: an
    Instance the operator cannot read still owns its guest.
    """
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
    missing = (world.instance(uid) for uid in placed - present)
    return [i for i in missing if i is not None and i.status and i.status.node == node]
