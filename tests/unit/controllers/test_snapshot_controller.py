"""VolumeSnapshots as plain functions: when a node is asked to copy a Volume, what a restore
asks for, and what the node's reports make of a snapshot's status."""

from __future__ import annotations

from typing import Any

import pytest

from stratus_api.v1alpha1 import Volume, VolumeSnapshot
from stratus_api.v1alpha1.volumesnapshot import SnapshotPhase, VolumeSnapshotStatus
from stratus_api.volume_wire import NodeSnapshotState, NodeSnapshotStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.snapshot import node_spec, with_report
from stratus_operator.controllers.volume import VolumeProblem, source_node
from stratus_operator.controllers.volume import node_spec as volume_node_spec

SNAP_UID = "0b7f7c3e-1111-2222-3333-aaaabbbbcccc"
VOLUME_UID = "0b7f7c3e-1111-2222-3333-444455556666"


def volume(name: str = "data", status: dict[str, Any] | None = None, **spec: Any) -> Volume:
    body: dict[str, Any] = {
        "apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": name, "namespace": "ns", "uid": VOLUME_UID, "generation": 1},
        "spec": {"size": "1Gi", **spec},
    }  # fmt: skip
    if status is not None:
        body["status"] = status
    return Volume.model_validate(body)


def snapshot(status: dict[str, Any] | None = None) -> VolumeSnapshot:
    body: dict[str, Any] = {
        "apiVersion": "stratus.io/v1alpha1", "kind": "VolumeSnapshot",
        "metadata": {"name": "nightly", "namespace": "ns", "uid": SNAP_UID, "generation": 1},
        "spec": {"volume": "data"},
    }  # fmt: skip
    if status is not None:
        body["status"] = status
    return VolumeSnapshot.model_validate(body)


def test_a_snapshot_is_taken_of_an_available_volume_only() -> None:
    with pytest.raises(InstanceProblem, match=r"spec\.volume: Volume data not found") as missing:
        node_spec(snapshot(), None)
    assert missing.value.reason == "SourceNotFound" and not missing.value.needs_user
    with pytest.raises(InstanceProblem, match="is Creating, not Available yet"):
        node_spec(snapshot(), volume(status={"phase": "Creating"}))
    in_use = volume(status={"phase": "InUse", "attachedTo": "db", "node": "n1"})
    with pytest.raises(InstanceProblem, match="attached to Instance db; a file volume is "
                       "snapshotted while detached") as busy:  # fmt: skip
        node_spec(snapshot(), in_use)
    assert busy.value.reason == "VolumeInUse" and busy.value.field == "spec.volume"

    spec = node_spec(snapshot(), volume(status={"phase": "Available", "node": "n1"}))
    assert (spec.uid, spec.volume, spec.backend, spec.name) == (
        SNAP_UID, VOLUME_UID, "file", "nightly"
    )  # fmt: skip


def test_reports_become_phases_and_kstatus_conditions() -> None:
    def report(state: str, **fields: Any) -> VolumeSnapshotStatus:
        status = NodeSnapshotStatus(uid=SNAP_UID, state=NodeSnapshotState(state), **fields)
        return with_report("n1", status)(VolumeSnapshotStatus(), 3)

    creating = report("Creating", progress=40)
    assert (creating.phase, creating.progress, creating.node) == (
        SnapshotPhase.CREATING, 40, "n1"
    )  # fmt: skip
    assert conditions.is_true(creating.conditions, "Reconciling")
    ready = report("Ready", size_bytes=2**30, location="/v/s.qcow2")
    assert (ready.phase, ready.size_bytes, ready.location, ready.progress) == (
        SnapshotPhase.READY, 2**30, "/v/s.qcow2", None
    )  # fmt: skip
    assert conditions.is_true(ready.conditions, "Ready") and ready.observed_generation == 3
    busy = report("Failed", reason="VolumeInUse", message="in use")
    assert busy.phase is SnapshotPhase.ERROR
    assert conditions.is_true(busy.conditions, "Reconciling")  # transient: it heals
    broken = report("Failed", reason="VolumeCreateFailed", message="qemu-img: boom")
    assert conditions.is_true(broken.conditions, "Stalled")


def test_a_restore_needs_a_ready_snapshot_on_the_volumes_node() -> None:
    restored = volume("restored", source={"snapshot": "nightly"})
    with pytest.raises(VolumeProblem, match="VolumeSnapshot nightly not found"):
        volume_node_spec(restored, None, None, "n1", None)
    with pytest.raises(VolumeProblem, match="is Creating, not Ready yet"):
        volume_node_spec(restored, None, None, "n1", snapshot({"phase": "Creating"}))
    elsewhere = snapshot({"phase": "Ready", "node": "n2"})
    with pytest.raises(VolumeProblem, match="is on node n2") as far:
        volume_node_spec(restored, None, None, "n1", elsewhere)
    assert far.value.needs_user
    ready = snapshot({"phase": "Ready", "node": "n1"})
    spec = volume_node_spec(restored, None, None, "n1", ready)
    assert spec.source is not None and spec.source.snapshot == SNAP_UID
    # An unbound restore goes where the snapshot is.
    assert source_node(None, ready) == "n1" and source_node(None, None) is None
