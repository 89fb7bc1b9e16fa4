"""A VolumeSnapshot resolved into a node snapshot spec, and node reports turned into its
status. Plain functions: the services feed them what they read."""

from __future__ import annotations

from collections.abc import Callable

from stratus_api.reasons import Reason, is_transient
from stratus_api.v1alpha1 import Volume, VolumeSnapshot
from stratus_api.v1alpha1.volume import ATOMIC_COPIES, VolumePhase
from stratus_api.v1alpha1.volumesnapshot import SnapshotPhase, VolumeSnapshotStatus
from stratus_api.volume_wire import (
    CephAccess,
    NodeSnapshotSpec,
    NodeSnapshotState,
    NodeSnapshotStatus,
)
from stratus_operator.controllers import conditions
from stratus_operator.controllers.instance import InstanceProblem

SnapshotChange = Callable[[VolumeSnapshotStatus, int], VolumeSnapshotStatus]
FIELD = "spec.volume"


def node_spec(
    snapshot: VolumeSnapshot, volume: Volume | None, ceph: CephAccess | None = None
) -> NodeSnapshotSpec:
    """The spec a node needs; InstanceProblem naming spec.volume while the Volume is missing,
    not made yet, or a node-local one attached (a file volume is copied while no guest
    writes to it; an RBD or thin LVM snapshot is crash-consistent at any time)."""
    name = snapshot.spec.volume
    if volume is None:
        raise InstanceProblem(
            Reason.SOURCE_NOT_FOUND, f"{FIELD}: Volume {name} not found", field=FIELD
        )
    phase = volume.status.phase if volume.status else VolumePhase.PENDING
    if phase is VolumePhase.IN_USE and volume.spec.backend not in ATOMIC_COPIES:
        holder = volume.status.attached_to if volume.status else None
        raise InstanceProblem(
            Reason.VOLUME_IN_USE,
            f"{FIELD}: Volume {name} is attached to Instance {holder}; a {volume.spec.backend} "
            "volume is snapshotted while detached (a running guest writes to it), so the "
            "snapshot waits until it is",
            field=FIELD,
        )  # fmt: skip
    if phase not in (VolumePhase.AVAILABLE, VolumePhase.IN_USE):
        raise InstanceProblem(
            Reason.SOURCE_NOT_READY, f"{FIELD}: Volume {name} is {phase}, not Available yet",
            field=FIELD,
        )  # fmt: skip
    meta = snapshot.metadata
    assert meta.uid and meta.name and meta.namespace and volume.metadata.uid
    return NodeSnapshotSpec(
        uid=meta.uid, name=meta.name, namespace=meta.namespace,
        generation=meta.generation or 0, backend=volume.spec.backend,
        volume=volume.metadata.uid, ceph=ceph,
    )  # fmt: skip


_PHASES = {
    NodeSnapshotState.CREATING: SnapshotPhase.CREATING,
    NodeSnapshotState.READY: SnapshotPhase.READY,
    NodeSnapshotState.FAILED: SnapshotPhase.ERROR,
    NodeSnapshotState.MISSING: SnapshotPhase.PENDING,
}
_REASONS = {
    NodeSnapshotState.CREATING: Reason.SNAPSHOT_CREATING,
    NodeSnapshotState.READY: Reason.SNAPSHOT_READY,
    NodeSnapshotState.FAILED: Reason.SNAPSHOT_FAILED,
    NodeSnapshotState.MISSING: Reason.SNAPSHOT_CREATING,
}


def with_report(node: str, report: NodeSnapshotStatus) -> SnapshotChange:
    """The status change a node's report on the snapshot makes."""

    def change(status: VolumeSnapshotStatus, generation: int) -> VolumeSnapshotStatus:
        phase = _PHASES[report.state]
        failed = report.state is NodeSnapshotState.FAILED
        reason = report.reason if failed and report.reason else _REASONS[report.state]
        stalled = failed and not is_transient(reason)
        ready = phase is SnapshotPhase.READY
        return status.model_copy(
            update={
                "phase": phase,
                "node": node,
                "location": report.location or status.location,
                "size_bytes": report.size_bytes or status.size_bytes,
                "progress": report.progress if phase is SnapshotPhase.CREATING else None,
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=ready, reason=reason,
                    message=report.message or f"on node {node}", generation=generation,
                    reconciling=not ready and not stalled, stalled=stalled,
                ),
            }
        )  # fmt: skip

    return change


def with_problem(problem: InstanceProblem) -> SnapshotChange:
    """Pending (or Error, when only the user can help), with the problem in the
    conditions."""

    def change(status: VolumeSnapshotStatus, generation: int) -> VolumeSnapshotStatus:
        phase = SnapshotPhase.ERROR if problem.needs_user else SnapshotPhase.PENDING
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
