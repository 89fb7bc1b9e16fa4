"""A Volume resolved into a node volume spec, node reports turned into its status, and where a
node-local Volume lives. Plain functions: the services feed them what they read."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from stratus_api.reasons import Reason, is_transient
from stratus_api.v1alpha1 import Hypervisor, Image, Volume, VolumeSnapshot
from stratus_api.v1alpha1.image import ImagePhase
from stratus_api.v1alpha1.volume import NODE_LOCAL, VolumeBackend, VolumePhase, VolumeStatus
from stratus_api.v1alpha1.volumesnapshot import SnapshotPhase
from stratus_api.volume_wire import (
    CephAccess,
    NodeVolumeSource,
    NodeVolumeSpec,
    NodeVolumeState,
    NodeVolumeStatus,
)
from stratus_operator.controllers import conditions
from stratus_operator.controllers.instance import InstanceProblem, image_ref

VolumeChange = Callable[[VolumeStatus, int], VolumeStatus]


class VolumeProblem(InstanceProblem):
    """Something stops the Volume from progressing (same contract as InstanceProblem)."""


def is_local(volume: Volume) -> bool:
    return volume.spec.backend in NODE_LOCAL


def is_ready(hypervisor: Hypervisor) -> bool:
    status = hypervisor.status
    return status is not None and conditions.is_true(status.conditions, conditions.READY)


def served_backends(hypervisor: Hypervisor) -> frozenset[VolumeBackend]:
    """The node-local backends the node serves: files always, others (lvm) once its agent
    reports their pool."""
    pools = hypervisor.status.storage if hypervisor.status else []
    return frozenset({VolumeBackend.FILE, *(pool.backend for pool in pools)})


def pick_node(volume: Volume, hypervisors: Iterable[Hypervisor]) -> str:
    """The Ready Hypervisor matching the Volume's nodeSelector and serving its backend; ties
    by name."""
    selector = volume.spec.node_selector or {}
    matching = [
        hv for hv in hypervisors
        if is_ready(hv) and all(hv.metadata.labels.get(k) == v for k, v in selector.items())
    ]  # fmt: skip
    wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(any)"
    if not matching:
        raise VolumeProblem(
            Reason.NO_MATCHING_NODE, f"spec.nodeSelector: no Ready Hypervisor has {wanted}",
            field="spec.nodeSelector",
        )  # fmt: skip
    backend = volume.spec.backend
    serving = sorted(hv.metadata.name or "" for hv in matching if backend in served_backends(hv))
    if not serving:
        raise VolumeProblem(
            Reason.NO_MATCHING_NODE,
            f"spec.backend: no Ready Hypervisor with {wanted} serves {backend} volumes (its "
            f"agent needs storage.{backend} in its config)",
            field="spec.backend",
        )
    return serving[0]


def node_spec(
    volume: Volume,
    image: Image | None,
    source_volume: Volume | None,
    node: str | None,
    snapshot: VolumeSnapshot | None = None,
    ceph: CephAccess | None = None,
) -> NodeVolumeSpec:
    """The spec a node needs. `image`/`source_volume`/`snapshot`: the source as found (None:
    missing); each is checked here, so a Volume is never made from a source that is not
    ready."""
    meta, source = volume.metadata, volume.spec.source
    made_from: NodeVolumeSource | None = None
    if source is not None and source.image is not None:
        made_from = NodeVolumeSource(image=image_ref(_ready_image(source.image, image)))
    elif source is not None and source.volume is not None:
        found = _ready_volume(source.volume, source_volume, volume, node)
        made_from = NodeVolumeSource(volume=found.metadata.uid)
    elif source is not None and source.snapshot is not None:
        taken = _ready_snapshot(source.snapshot, snapshot, volume, node)
        made_from = NodeVolumeSource(snapshot=taken.metadata.uid)
    assert meta.uid and meta.name and meta.namespace
    return NodeVolumeSpec(
        uid=meta.uid, name=meta.name, namespace=meta.namespace,
        generation=meta.generation or 0, backend=volume.spec.backend,
        size_bytes=volume.spec.size.bytes, source=made_from, ceph=ceph,
        shareable=volume.spec.shareable,
    )  # fmt: skip


def _ready_image(name: str, image: Image | None) -> Image:
    if image is None:
        raise VolumeProblem(
            Reason.SOURCE_NOT_FOUND, f"spec.source.image: Image {name} not found",
            field="spec.source.image",
        )  # fmt: skip
    phase = image.status.phase if image.status else ImagePhase.PENDING
    if phase is ImagePhase.FAILED:
        raise VolumeProblem(
            Reason.IMAGE_FAILED, f"spec.source.image: Image {name} failed",
            field="spec.source.image", retry=False,
        )  # fmt: skip
    if phase is not ImagePhase.READY:
        raise VolumeProblem(
            Reason.SOURCE_NOT_READY, f"spec.source.image: Image {name} is {phase}, not Ready yet",
            field="spec.source.image",
        )  # fmt: skip
    return image


def _ready_volume(name: str, found: Volume | None, volume: Volume, node: str | None) -> Volume:
    where = "spec.source.volume"
    if found is None:
        raise VolumeProblem(
            Reason.SOURCE_NOT_FOUND, f"{where}: Volume {name} not found", field=where
        )
    if found.spec.backend != volume.spec.backend:
        raise VolumeProblem(
            Reason.BACKEND_UNSUPPORTED,
            f"{where}: Volume {name} is a {found.spec.backend} volume; a clone keeps its "
            f"source's backend ({volume.spec.backend} asked)",
            field=where, retry=False,
        )  # fmt: skip
    status = found.status
    if status is None or status.phase not in (VolumePhase.AVAILABLE, VolumePhase.IN_USE):
        phase = status.phase if status else VolumePhase.PENDING
        raise VolumeProblem(
            Reason.SOURCE_NOT_READY, f"{where}: Volume {name} is {phase}, not Available yet",
            field=where,
        )  # fmt: skip
    if is_local(volume) and status.node != node:
        raise VolumeProblem(
            Reason.VOLUMES_ON_DIFFERENT_NODES,
            f"{where}: Volume {name} is on node {status.node}; a clone of a local volume is "
            "made on the same node",
            field=where, retry=False,
        )  # fmt: skip
    return found


def _ready_snapshot(
    name: str, found: VolumeSnapshot | None, volume: Volume, node: str | None
) -> VolumeSnapshot:
    where = "spec.source.snapshot"
    if found is None:
        raise VolumeProblem(
            Reason.SOURCE_NOT_FOUND, f"{where}: VolumeSnapshot {name} not found", field=where
        )
    status = found.status
    phase = status.phase if status else SnapshotPhase.PENDING
    if status is None or phase is not SnapshotPhase.READY:
        raise VolumeProblem(
            Reason.SOURCE_NOT_READY, f"{where}: VolumeSnapshot {name} is {phase}, not Ready yet",
            field=where,
        )  # fmt: skip
    if is_local(volume) and status.node != node:
        raise VolumeProblem(
            Reason.VOLUMES_ON_DIFFERENT_NODES,
            f"{where}: VolumeSnapshot {name} is on node {status.node}; a local volume is "
            "restored on the same node",
            field=where, retry=False,
        )  # fmt: skip
    return found


def source_node(source_volume: Volume | None, snapshot: VolumeSnapshot | None) -> str | None:
    """Where a clone's or a restore's source data is (None: not known yet)."""
    if source_volume is not None and source_volume.status is not None:
        return source_volume.status.node
    if snapshot is not None and snapshot.status is not None:
        return snapshot.status.node
    return None


_PHASES = {
    NodeVolumeState.CREATING: VolumePhase.CREATING,
    NodeVolumeState.AVAILABLE: VolumePhase.AVAILABLE,
    NodeVolumeState.EXTENDING: VolumePhase.EXTENDING,
    NodeVolumeState.FAILED: VolumePhase.ERROR,
    NodeVolumeState.MISSING: VolumePhase.PENDING,
}


def with_report(node: str | None, report: NodeVolumeStatus) -> VolumeChange:
    """The status change a node's report on the volume makes."""

    def change(status: VolumeStatus, generation: int) -> VolumeStatus:
        phase = _PHASES[report.state]
        if phase is VolumePhase.AVAILABLE and status.attached_to:
            phase = VolumePhase.IN_USE
        ready = phase in (VolumePhase.AVAILABLE, VolumePhase.IN_USE)
        failed = report.state is NodeVolumeState.FAILED
        reason = report.reason if failed and report.reason else _REASONS[report.state]
        message = report.message or (f"on node {node}" if node else "")
        stalled = failed and not is_transient(reason)
        return status.model_copy(
            update={
                "phase": phase,
                "node": node if node is not None else status.node,
                "location": report.location or status.location,
                "size_bytes": report.size_bytes or status.size_bytes,
                "progress": report.progress if phase is VolumePhase.CREATING else None,
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=ready, reason=reason, message=message,
                    generation=generation, reconciling=not ready and not stalled,
                    stalled=stalled,
                ),
            }
        )  # fmt: skip

    return change


_REASONS = {
    NodeVolumeState.CREATING: Reason.VOLUME_CREATING,
    NodeVolumeState.AVAILABLE: Reason.VOLUME_AVAILABLE,
    NodeVolumeState.EXTENDING: Reason.VOLUME_EXTENDING,
    NodeVolumeState.FAILED: Reason.VOLUME_FAILED,
    NodeVolumeState.MISSING: Reason.VOLUME_CREATING,
}


def with_problem(problem: InstanceProblem) -> VolumeChange:
    """Pending (or Error, when only the user can help), with the problem in the conditions."""

    def change(status: VolumeStatus, generation: int) -> VolumeStatus:
        phase = VolumePhase.ERROR if problem.needs_user else VolumePhase.PENDING
        if status.phase in (VolumePhase.AVAILABLE, VolumePhase.IN_USE) and not problem.needs_user:
            phase = status.phase  # the data is there; only this change waits
        return status.model_copy(
            update={
                "phase": phase,
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=problem.reason, message=str(problem),
                    generation=generation, reconciling=not problem.needs_user,
                    stalled=problem.needs_user,
                ),
            }
        )  # fmt: skip

    return change


def waiting_for_consumer() -> VolumeChange:
    return with_problem(
        VolumeProblem(
            Reason.WAITING_FOR_FIRST_CONSUMER,
            "no node yet: the volume is made on the node of the first Instance that uses it "
            "(or set spec.nodeSelector)",
        )
    )


def attached(instance: str | None) -> VolumeChange:
    """The Volume is in use by `instance` now (None: by nobody)."""

    def change(status: VolumeStatus, generation: int) -> VolumeStatus:
        phase = status.phase
        if instance is not None and phase is VolumePhase.AVAILABLE:
            phase = VolumePhase.IN_USE
        elif instance is None and phase is VolumePhase.IN_USE:
            phase = VolumePhase.AVAILABLE
        return status.model_copy(update={"attached_to": instance, "phase": phase})

    return change


def deleting(reason: str, message: str) -> VolumeChange:
    """Deleting, and why the deletion waits."""

    def change(status: VolumeStatus, generation: int) -> VolumeStatus:
        return status.model_copy(
            update={
                "phase": VolumePhase.DELETING,
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=reason, message=message,
                    generation=generation, reconciling=True,
                ),
            }
        )  # fmt: skip

    return change
