"""VolumeSnapshots: copying a Volume's data on its node, following the node's reports, and
removing the copy.

No kopf here (see handlers/volumesnapshot.py). A snapshot lives where its Volume's data
is: the Volume's node for node-local backends. Its data is copied once; a Ready snapshot is
not sent to the node again.
"""

from __future__ import annotations

import logging

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import VolumeSnapshot
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.v1alpha1.volumesnapshot import SnapshotPhase, VolumeSnapshotStatus
from stratus_api.volume_wire import NodeSnapshotStatus
from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.snapshot import (
    FIELD,
    SnapshotChange,
    node_spec,
    with_problem,
    with_report,
)
from stratus_operator.services import ceph, volumes
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


async def write_status(snapshot: VolumeSnapshot, runtime: Runtime, change: SnapshotChange) -> None:
    generation = snapshot.metadata.generation or 0
    await runtime.status.write(
        ObjectRef.of(snapshot), snapshot.status, generation, change, VolumeSnapshotStatus
    )


def _unchanged(status: VolumeSnapshotStatus, _generation: int) -> VolumeSnapshotStatus:
    return status


async def reconcile(snapshot: VolumeSnapshot, world: World, runtime: Runtime) -> SnapshotChange:
    """Have the node copy the Volume's data; the status change to write."""
    if snapshot.status is not None and snapshot.status.phase is SnapshotPhase.READY:
        return _unchanged  # taken once; its Volume may be in use again by now
    volume = world.volume((snapshot.metadata.namespace or "", snapshot.spec.volume))
    shared = volume is not None and volume.spec.backend is VolumeBackend.CEPH
    access = await ceph.access(volume, world, runtime) if volume and shared else None
    spec = node_spec(snapshot, volume, access)
    assert volume is not None  # node_spec said so otherwise
    node = volumes.shared_node(volume, world) if shared else volumes.node_of(volume, runtime)
    hypervisor = world.hypervisor(node) if node else None
    if node is None or hypervisor is None:
        raise InstanceProblem(
            Reason.HYPERVISOR_GONE,
            f"{FIELD}: the node holding Volume {snapshot.spec.volume}'s data "
            f"({node or 'none'}) is not there",
            field=FIELD, retry=False,
        )  # fmt: skip
    client = await runtime.agents.client(hypervisor)
    answer = await client.ensure_snapshot(spec)
    return runtime.unless_older(answer.uid, answer.sequence, with_report(node, answer))


def failed(exc: Exception) -> SnapshotChange | None:
    """The status change for an error out of `reconcile`; None for unknown errors."""
    problem = volumes.problem_of(exc)
    return with_problem(problem) if problem is not None else None


async def remove(snapshot: VolumeSnapshot, world: World, runtime: Runtime) -> None:
    """Delete the snapshot's data on its node (a gone node has nothing to delete)."""
    uid = snapshot.metadata.uid or ""
    node = snapshot.status.node if snapshot.status else None
    hypervisor = world.hypervisor(node) if node else None
    if hypervisor is not None:
        client = await runtime.agents.client(hypervisor)
        await client.delete_snapshot(uid)
    elif node:
        log.warning("snapshot %s: node %s is gone; nothing to delete there",
                    snapshot.metadata.name, node)  # fmt: skip
    runtime.reported.pop(uid, None)
    runtime.status.forget(uid)


async def apply_report(report: NodeSnapshotStatus, node: str, world: World, rt: Runtime) -> None:
    """A node reported a snapshot: update its VolumeSnapshot (older reports are ignored)."""
    snapshot = world.snapshot_by_uid(report.uid)
    if snapshot is None or snapshot.metadata.deletion_timestamp:
        return
    if not rt.newest(report.uid, report.sequence):
        return
    await write_status(snapshot, rt, with_report(node, report))
