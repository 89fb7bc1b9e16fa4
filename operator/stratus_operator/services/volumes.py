"""Volumes: where each one lives, making and growing its data on the node, following the node's
reports, and deleting only what no Instance uses.

No kopf here (see handlers/volume.py). A node-local Volume (file) binds to one node: the one
its nodeSelector picks, else the node of the first Instance that uses it (instances.py binds
it through `bind`). The binding is kept in `runtime.volume_nodes` until the Volume's status
says it, so two Instances placed at once agree on it.
"""

from __future__ import annotations

import logging

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import Hypervisor, Instance, Volume, VolumeSnapshot
from stratus_api.v1alpha1.volume import VolumeBackend, VolumePhase, VolumeStatus
from stratus_api.volume_wire import CephAccess, NodeVolumeStatus
from stratus_operator.controllers import conditions, waiters
from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.scheduler import Unschedulable
from stratus_operator.controllers.volume import (
    VolumeChange,
    VolumeProblem,
    attached,
    is_local,
    is_ready,
    node_spec,
    pick_node,
    source_node,
    waiting_for_consumer,
    with_problem,
    with_report,
)
from stratus_operator.services import ceph
from stratus_operator.services.agent_client import AgentClient, AgentError, AgentRejected
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World, key_of

log = logging.getLogger(__name__)


class DeleteWaits(Exception):
    """A Volume's deletion waits; `reason` and the message say for what."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class VolumeInUse(DeleteWaits):
    """Instances still name the Volume (or a guest has not released it yet)."""

    def __init__(self, instances: list[str]) -> None:
        super().__init__(
            Reason.VOLUME_IN_USE,
            f"deletion waits: Instance {', '.join(instances)} uses the volume (remove it "
            "from the Instance's spec.volumes, or delete the Instance)",
        )
        self.instances = instances


class VolumeHasSnapshots(DeleteWaits):
    def __init__(self, snapshots: list[str]) -> None:
        super().__init__(
            Reason.VOLUME_HAS_SNAPSHOTS,
            f"deletion waits: VolumeSnapshot {', '.join(snapshots)} was taken of the volume "
            "(delete the snapshots first)",
        )
        self.snapshots = snapshots


async def write_status(volume: Volume, runtime: Runtime, change: VolumeChange) -> None:
    await runtime.status.write(
        ObjectRef.of(volume), volume.status, volume.metadata.generation or 0, change, VolumeStatus
    )


def node_of(volume: Volume, runtime: Runtime) -> str | None:
    """The node a local Volume is bound to, if any."""
    known = volume.status.node if volume.status else None
    return known or runtime.volume_nodes.get(volume.metadata.uid or "")


async def reconcile(volume: Volume, world: World, runtime: Runtime) -> VolumeChange:
    """Make or grow the Volume's data on its node; the status change to write. A local
    Volume with neither a node nor a nodeSelector waits for its first Instance."""
    node = node_of(volume, runtime)
    if node is None and is_local(volume):
        source = source_node(*_sources(volume, world))  # a clone or restore goes there
        if volume.spec.node_selector is None and source is None:
            return waiting_for_consumer()
        async with runtime.decisions:
            node = node_of(volume, runtime) or source or pick_node(volume, world.hypervisors())
            bind(volume, node, runtime)
    access = None
    if not is_local(volume):  # the pool's problems are the user's: said before the node's
        access = await ceph.access(volume, world, runtime)
        node = shared_node(volume, world)
    assert node is not None
    return await dispatch(volume, node, world, runtime, access)


def shared_node(volume: Volume, world: World) -> str:
    """The node that works on a shared (ceph) Volume: the one that made it while it is
    Ready, else any Ready one (every node reaches the pool)."""
    made_on = volume.status.node if volume.status else None
    hypervisor = world.hypervisor(made_on) if made_on else None
    if made_on and hypervisor is not None and is_ready(hypervisor):
        return made_on
    ready = sorted(hv.metadata.name or "" for hv in world.hypervisors() if is_ready(hv))
    if not ready:
        raise VolumeProblem(
            Reason.NO_MATCHING_NODE, "no Ready Hypervisor to reach the Ceph pool through"
        )
    return ready[0]


def bind(volume: Volume, node: str, runtime: Runtime) -> None:
    """Bind an unbound local Volume to `node` (its nodeSelector's pick, or the node of the
    first Instance using it); the caller holds runtime.decisions."""
    runtime.volume_nodes.setdefault(volume.metadata.uid or "", node)


def _sources(volume: Volume, world: World) -> tuple[Volume | None, VolumeSnapshot | None]:
    """The Volume it clones and the snapshot it restores, as found (None: none, or missing)."""
    namespace, source = volume.metadata.namespace or "", volume.spec.source
    cloned = world.volume((namespace, source.volume)) if source and source.volume else None
    taken = world.snapshot((namespace, source.snapshot)) if source and source.snapshot else None
    return cloned, taken


async def dispatch(
    volume: Volume, node: str, world: World, runtime: Runtime, access: CephAccess | None = None
) -> VolumeChange:
    """Have `node` make or grow the Volume's data (`access`: its Ceph pool's, if read
    already)."""
    namespace, source = volume.metadata.namespace or "", volume.spec.source
    image = world.image((namespace, source.image)) if source and source.image else None
    cloned, taken = _sources(volume, world)
    if volume.spec.backend is VolumeBackend.CEPH:
        access = access or await ceph.access(volume, world, runtime)
    spec = node_spec(volume, image, cloned, node, taken, access)
    hypervisor = world.hypervisor(node)
    if hypervisor is None:
        raise VolumeProblem(
            Reason.HYPERVISOR_GONE, f"status.node: Hypervisor {node} no longer exists; the "
            "volume's data was there", retry=False,
        )  # fmt: skip
    check_room(volume, hypervisor)
    client = await runtime.agents.client(hypervisor)
    answer = await client.ensure_volume(spec)
    return runtime.unless_older(answer.uid, answer.sequence, with_report(node, answer))


def check_room(volume: Volume, hypervisor: Hypervisor) -> None:
    """The node's pool for the Volume's backend must hold what is still to be written (the
    whole size when new, the growth when larger), by its last health check; the node
    checks again itself."""
    if not is_local(volume):
        return  # a shared pool is not one node's: its node checks
    have = (volume.status.size_bytes if volume.status else None) or 0
    needed = volume.spec.size.bytes - have
    pools = hypervisor.status.storage if hypervisor.status else []
    pool = next((p for p in pools if p.backend == volume.spec.backend), None)
    if needed <= 0 or pool is None:
        return  # nothing to add, or not reported yet: the node decides
    if needed > pool.free.bytes:
        raise VolumeProblem(
            Reason.INSUFFICIENT_STORAGE,
            f"spec.size: {volume.spec.size} does not fit on node {hypervisor.metadata.name}: "
            f"its {volume.spec.backend} pool has {pool.free} free of {pool.capacity}",
            field="spec.size",
        )  # fmt: skip


def problem_of(exc: Exception) -> InstanceProblem | None:
    """An error out of a Volume's or VolumeSnapshot's reconcile as a problem to show; None
    for unknown errors."""
    if isinstance(exc, InstanceProblem):
        return exc
    if isinstance(exc, AgentRejected):
        return VolumeProblem(Reason.AGENT_REJECTED, str(exc), retry=False)
    if isinstance(exc, AgentError | AgentNotConfigured):
        return VolumeProblem(Reason.AGENT_UNAVAILABLE, str(exc))
    return None


def failed(exc: Exception) -> VolumeChange | None:
    """The status change for an error out of `reconcile`; None for unknown errors."""
    problem = problem_of(exc)
    return with_problem(problem) if problem is not None else None


async def remove(volume: Volume, world: World, runtime: Runtime) -> None:
    """Delete the Volume's data on its node, unless an Instance still names it or snapshots
    were taken of it (DeleteWaits: the finalizer waits)."""
    users = [world.instance(uid) for uid in world.volume_users(key_of(volume))]
    names = sorted(i.metadata.name or "" for i in users if i is not None)
    if names:
        raise VolumeInUse(names)
    snapshots = sorted(world.snapshots_of(key_of(volume)))
    if snapshots:
        raise VolumeHasSnapshots(snapshots)
    uid = volume.metadata.uid or ""
    node = node_of(volume, runtime)
    shared = node is not None and not is_local(volume)
    if shared:
        node = shared_node(volume, world)
    hypervisor = world.hypervisor(node) if node else None
    if hypervisor is not None:
        client = await runtime.agents.client(hypervisor)
        try:
            # A shared Volume whose pool cannot be reached any more has nothing to delete.
            if not shared or await _introduce(volume, client, world, runtime):
                await client.delete_volume(uid)
        except AgentRejected as exc:
            if exc.status != 409:
                raise
            # Dropped from every spec, but a guest has not released it yet.
            holder = world.instance(runtime.volume_holders.get(uid, ""))
            raise VolumeInUse([holder.metadata.name or "" if holder else "a guest"]) from exc
    elif node:
        log.warning("volume %s: node %s is gone; nothing to delete there", volume.metadata.name,
                    node)  # fmt: skip
    runtime.volume_nodes.pop(uid, None)
    runtime.reported.pop(uid, None)
    runtime.status.forget(uid)


async def _introduce(volume: Volume, client: AgentClient, world: World, rt: Runtime) -> bool:
    """Have a node hold the shared Volume's pool access and know the Volume, so it can
    delete it (the ensure is idempotent; its source counts only when the data is made, so
    none is sent). False, with a warning, when its CephPool or key is gone."""
    try:
        access = await ceph.access(volume, world, rt)
    except InstanceProblem as exc:
        log.warning("volume %s: %s; its data (if any) stays in the pool", volume.metadata.name,
                    exc)  # fmt: skip
        return False
    sourceless = volume.model_copy(update={"spec": volume.spec.model_copy(update={"source": None})})
    spec = node_spec(sourceless, None, None, None, ceph=access)
    await client.ensure_volume(spec)
    return True


async def apply_report(report: NodeVolumeStatus, node: str, world: World, rt: Runtime) -> None:
    """A node reported a volume: update its Volume (reports older than one applied are
    ignored, as for guests)."""
    volume = world.volume_by_uid(report.uid)
    if volume is None or volume.metadata.deletion_timestamp:
        return
    if not rt.newest(report.uid, report.sequence):
        return
    await write_status(volume, rt, with_report(node, report))
    if not report.attached_to:
        await _detached(volume, world, rt)


async def _detached(volume: Volume, world: World, runtime: Runtime) -> None:
    """The node says no guest uses the Volume: an Instance whose spec dropped it has let go,
    and the Volume is free for others. One that still names it keeps its claim (it is being
    attached)."""
    uid = volume.metadata.uid or ""
    holder = runtime.volume_holders.get(uid)
    if holder is None or names(world.instance(holder), volume):
        return
    del runtime.volume_holders[uid]
    await set_attached(volume, None, runtime)


async def set_attached(volume: Volume, instance: str | None, runtime: Runtime) -> None:
    """Record which Instance uses the Volume now (None: nobody)."""
    current = volume.status.attached_to if volume.status else None
    if current != instance:
        await write_status(volume, runtime, attached(instance))


# -- Volumes as an Instance uses them ------------------------------------------------------


def holder_of(volume: Volume, world: World, runtime: Runtime) -> str | None:
    """UID of the Instance the Volume is attached to: this process's claim, else the one its
    status names (after a restart). None for a shareable Volume: nobody holds it alone."""
    uid = volume.metadata.uid or ""
    if volume.spec.shareable:
        return None
    if uid in runtime.volume_holders:
        return runtime.volume_holders[uid]
    name = volume.status.attached_to if volume.status else None
    for user in world.volume_users(key_of(volume)) if name else ():
        found = world.instance(user)
        if found is not None and found.metadata.name == name:
            runtime.volume_holders[uid] = user
            return user
    return None


class VolumeTaken(InstanceProblem):
    """The Instance names a Volume another Instance holds and still names: the user's move
    (Stalled). Said on both: the Instance's status, and an Event on the Volume."""

    def __init__(self, message: str, field: str, volume: Volume, holder: str) -> None:
        super().__init__(Reason.VOLUME_IN_USE, message, field=field, stalled=True)
        self.volume = volume
        self.holder = holder


async def tell_volume(instance: Instance, exc: Exception, runtime: Runtime) -> None:
    """A Warning Event on a Volume that `instance` asked for in vain (VolumeTaken), once:
    when the Instance's Ready message is new, as Events on the Instance are."""
    if not isinstance(exc, VolumeTaken):
        return
    ready = conditions.condition(instance.status.conditions if instance.status else [],
                                 conditions.READY)  # fmt: skip
    if ready is not None and ready.message == str(exc):
        return  # said already
    await runtime.events.warn(
        ObjectRef.of(exc.volume).involved(), Reason.VOLUME_IN_USE,
        f"Instance {instance.metadata.name} asks for it ({exc.field}), but it is attached "
        f"to Instance {exc.holder}; a volume attaches to one Instance at a time",
    )  # fmt: skip


def named(instance: Instance) -> list[tuple[str, str]]:
    """(field, Volume name) of each Volume the Instance uses, the boot volume first."""
    boot = instance.spec.boot.volume
    found = [("spec.boot.volume", boot)] if boot else []
    attached = instance.spec.volumes
    return found + [(f"spec.volumes[{i}].name", a.name) for i, a in enumerate(attached)]


def names(instance: Instance | None, volume: Volume) -> bool:
    """Whether the Instance's spec (still) uses the Volume."""
    return instance is not None and any(n == volume.metadata.name for _, n in named(instance))


def claim(instance: Instance, world: World, runtime: Runtime) -> list[Volume]:
    """The Volumes the Instance uses (`named`: the boot volume first), claimed for it (one
    Instance per Volume, unless shareable); InstanceProblem naming the field when one is
    missing, going, or another's. The caller holds runtime.decisions."""
    namespace, uid = instance.metadata.namespace or "", instance.metadata.uid or ""
    found = []
    for field, name in named(instance):
        volume = world.volume((namespace, name))
        if volume is None or volume.metadata.deletion_timestamp:
            what = "not found" if volume is None else "being deleted"
            raise InstanceProblem(
                Reason.VOLUME_NOT_FOUND, f"{field}: Volume {name} {what}", field=field,
                waits_on=(waiters.VOLUME, namespace, name),
            )  # fmt: skip
        holder = holder_of(volume, world, runtime)
        if holder is not None and holder != uid:
            other = world.instance(holder)
            who = (other.metadata.name if other else None) or holder
            if not names(other, volume):
                raise InstanceProblem(
                    Reason.VOLUME_IN_USE,
                    f"{field}: Volume {name} is being detached from Instance "
                    f"{who}; it attaches here once that guest has released it",
                    field=field,
                )  # fmt: skip
            raise VolumeTaken(
                f"{field}: Volume {name} is attached to Instance {who}; a volume "
                "attaches to one Instance at a time",
                field, volume, who,
            )  # fmt: skip
        found.append(volume)
    for volume in found:
        if not volume.spec.shareable:
            runtime.volume_holders[volume.metadata.uid or ""] = uid
    return found


def unbound_backends(volumes: list[Volume], runtime: Runtime) -> frozenset[VolumeBackend]:
    """The backends of the local Volumes not bound yet: the Instance's node must serve them."""
    return frozenset(v.spec.backend for v in volumes if is_local(v) and node_of(v, runtime) is None)


def required_node(volumes: list[Volume], runtime: Runtime) -> str | None:
    """The node the Instance must run on: where its bound local Volumes are."""
    bound = {
        v.metadata.name or "": n for v in volumes if is_local(v) and (n := node_of(v, runtime))
    }
    nodes = set(bound.values())
    if len(nodes) > 1:
        where = ", ".join(f"{name} on {node}" for name, node in sorted(bound.items()))
        raise Unschedulable(
            f"spec.volumes: its local Volumes are on different nodes ({where}); an Instance "
            "runs where its local Volumes are"
        )
    return next(iter(nodes), None)


async def made_ready(
    instance: Instance, volumes: list[Volume], node: str, world: World, runtime: Runtime
) -> None:
    """Bind the Instance's unbound local Volumes (`claim`'s) to its node and have them made
    there; InstanceProblem (retried) until every one is Available."""
    for (field, _), volume in zip(named(instance), volumes, strict=True):
        status = volume.status or VolumeStatus()
        if status.phase in (VolumePhase.AVAILABLE, VolumePhase.IN_USE):
            continue
        if is_local(volume):
            bind(volume, node, runtime)  # a bound one keeps its node
        try:
            change = await dispatch(volume, node_of(volume, runtime) or node, world, runtime)
        except Exception as exc:
            failure = failed(exc)
            if failure is None:
                raise
            change = failure
        await write_status(volume, runtime, change)
        phase = change(status, volume.metadata.generation or 0).phase
        if phase not in (VolumePhase.AVAILABLE, VolumePhase.IN_USE):
            raise InstanceProblem(
                Reason.VOLUME_NOT_READY,
                f"{field}: Volume {volume.metadata.name} is {phase}, not Available yet",
                field=field, stalled=phase is VolumePhase.ERROR,
                waits_on=(waiters.VOLUME, *key_of(volume)),
            )  # fmt: skip


async def ceph_accesses(
    volumes: list[Volume], world: World, runtime: Runtime
) -> dict[str, CephAccess]:
    """How the node reaches the pool of each ceph Volume, by Volume UID; InstanceProblem
    naming the Volume when its pool cannot be reached."""
    found = {}
    for volume in volumes:
        if volume.spec.backend is VolumeBackend.CEPH:
            try:
                found[volume.metadata.uid or ""] = await ceph.access(volume, world, runtime)
            except InstanceProblem as exc:
                raise InstanceProblem(
                    exc.reason, f"Volume {volume.metadata.name}: {exc}", field=exc.field
                ) from None
    return found


async def mark_attached(
    instance: Instance, volumes: list[Volume], world: World, rt: Runtime
) -> None:
    """The Instance's guest was given `volumes`: each is attached to it now, and a shareable
    one it no longer names is not."""
    uid, name = instance.metadata.uid or "", instance.metadata.name or ""
    for volume in volumes:
        if not volume.spec.shareable:
            await set_attached(volume, name, rt)
            continue
        sharers = _sharers(volume, world, rt)
        if sharers.get(uid) != name:
            sharers[uid] = name
            await set_attached(volume, ",".join(sorted(sharers.values())), rt)
    kept = {v.metadata.uid for v in volumes}
    for volume_uid, sharers in list(rt.volume_sharers.items()):
        if uid in sharers and volume_uid not in kept:
            await _unshare(volume_uid, uid, world, rt)


def _sharers(volume: Volume, world: World, runtime: Runtime) -> dict[str, str]:
    """The Instances a shareable Volume is attached to, by UID; after a restart, those its
    status names that still name it."""
    uid = volume.metadata.uid or ""
    if uid not in runtime.volume_sharers:
        status = volume.status.attached_to if volume.status else None
        named_in_status = set((status or "").split(","))
        runtime.volume_sharers[uid] = {
            user: found.metadata.name or ""
            for user in world.volume_users(key_of(volume))
            if (found := world.instance(user)) is not None
            and found.metadata.name in named_in_status
        }
    return runtime.volume_sharers[uid]


async def _unshare(volume_uid: str, instance_uid: str, world: World, runtime: Runtime) -> None:
    sharers = runtime.volume_sharers.get(volume_uid, {})
    sharers.pop(instance_uid, None)
    volume = world.volume_by_uid(volume_uid)
    if volume is not None and not volume.metadata.deletion_timestamp:
        await set_attached(volume, ",".join(sorted(sharers.values())) or None, runtime)


async def release(instance_uid: str, world: World, runtime: Runtime) -> None:
    """The Instance is gone: its Volumes are free for others."""
    for volume_uid, sharers in list(runtime.volume_sharers.items()):
        if instance_uid in sharers:
            await _unshare(volume_uid, instance_uid, world, runtime)
    for volume_uid, holder in list(runtime.volume_holders.items()):
        if holder != instance_uid:
            continue
        del runtime.volume_holders[volume_uid]
        volume = world.volume_by_uid(volume_uid)
        if volume is not None and not volume.metadata.deletion_timestamp:
            await set_attached(volume, None, runtime)
