"""Volumes as plain functions: where a local Volume goes, what its node is asked to make, and
what the node's reports make of its status."""

from __future__ import annotations

from typing import Any

import pytest

from stratus_api.v1alpha1 import Hypervisor, Image, Volume
from stratus_api.v1alpha1.volume import VolumePhase, VolumeStatus
from stratus_api.volume_wire import NodeVolumeState, NodeVolumeStatus
from stratus_operator.controllers import conditions, scheduler
from stratus_operator.controllers.scheduler import Request
from stratus_operator.controllers.volume import (
    VolumeProblem,
    attached,
    node_spec,
    pick_node,
    with_report,
)

UID = "0b7f7c3e-1111-2222-3333-444455556666"
SOURCE_UID = "0b7f7c3e-1111-2222-3333-777788889999"


def volume(name: str = "data", uid: str = UID, status: dict[str, Any] | None = None,
           **spec: Any) -> Volume:  # fmt: skip
    body: dict[str, Any] = {
        "apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 1},
        "spec": {"size": "1Gi", **spec},
    }  # fmt: skip
    if status is not None:
        body["status"] = status
    return Volume.model_validate(body)


def hypervisor(name: str, ready: bool = True, lvm: bool = False, **labels: str) -> Hypervisor:
    pools = [{"backend": "file", "capacity": "10Gi", "provisioned": "0", "free": "10Gi"}]
    if lvm:
        pools.append({"backend": "lvm", "location": "vg/thin", "capacity": "10Gi",
                      "provisioned": "0", "free": "10Gi"})  # fmt: skip
    return Hypervisor.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor",
        "metadata": {"name": name, "labels": labels},
        "spec": {"endpoint": "https://n:8443", "tokenSecretRef": {"namespace": "s", "name": "t"}},
        "status": {"conditions": [{"type": "Ready", "status": str(ready), "reason": "AgentReady",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                   "storage": pools},
    })  # fmt: skip


def test_a_node_selector_picks_a_ready_matching_hypervisor() -> None:
    nodes = [hypervisor("c", disk="ssd"), hypervisor("b", ready=False, disk="ssd"),
             hypervisor("a", disk="hdd")]  # fmt: skip
    assert pick_node(volume(nodeSelector={"disk": "ssd"}), nodes) == "c"
    with pytest.raises(
        VolumeProblem, match=r"spec.nodeSelector: no Ready Hypervisor has disk=nvme"
    ):
        pick_node(volume(nodeSelector={"disk": "nvme"}), nodes)


def test_an_lvm_volume_goes_only_where_an_agent_reports_an_lvm_pool() -> None:
    nodes = [hypervisor("a", disk="ssd"), hypervisor("b", lvm=True, disk="ssd"),
             hypervisor("c", lvm=True, disk="hdd")]  # fmt: skip
    assert pick_node(volume(backend="lvm", nodeSelector={"disk": "ssd"}), nodes) == "b"
    assert pick_node(volume(nodeSelector={"disk": "ssd"}), nodes) == "a"  # files: everywhere
    with pytest.raises(VolumeProblem) as none:
        pick_node(volume(backend="lvm", nodeSelector={"disk": "ssd"}), nodes[:1])
    assert (none.value.field, str(none.value)) == (
        "spec.backend",
        "spec.backend: no Ready Hypervisor with disk=ssd serves lvm volumes (its agent needs "
        "storage.lvm in its config)",
    )


def test_the_node_is_asked_for_size_backend_and_a_ready_source() -> None:
    blank = node_spec(volume(), None, None, "n1")
    assert (blank.size_bytes, blank.backend, blank.source) == (2**30, "file", None)

    with pytest.raises(VolumeProblem, match=r"spec.source.image: Image base not found") as missing:
        node_spec(volume(source={"image": "base"}), None, None, "n1")
    assert missing.value.retry  # it may yet appear

    image = Image.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Image",
        "metadata": {"name": "base", "namespace": "ns", "uid": SOURCE_UID},
        "spec": {"source": {"http": {"url": "http://images.test/base.qcow2"}}},
    })  # fmt: skip
    with pytest.raises(VolumeProblem, match="is Pending, not Ready yet"):
        node_spec(volume(source={"image": "base"}), image, None, "n1")
    ready = Image.model_validate({**image.model_dump(by_alias=True, mode="json"),
                                  "status": {"phase": "Ready"}})  # fmt: skip
    made = node_spec(volume(source={"image": "base"}), ready, None, "n1")
    assert made.source is not None and made.source.image is not None
    assert made.source.image.uid == SOURCE_UID


def test_a_clone_comes_from_an_available_volume_on_the_same_node() -> None:
    clone = volume(name="copy", source={"volume": "data"})
    elsewhere = volume(uid=SOURCE_UID, status={"phase": "Available", "node": "n2"})
    with pytest.raises(VolumeProblem, match="is on node n2") as caught:
        node_spec(clone, None, elsewhere, "n1")
    assert not caught.value.retry
    here = volume(uid=SOURCE_UID, status={"phase": "InUse", "node": "n1"})
    made = node_spec(clone, None, here, "n1")
    assert made.source is not None and made.source.volume == SOURCE_UID


def test_reports_become_phases_and_kstatus_conditions() -> None:
    def report(state: NodeVolumeState, **kw: Any) -> NodeVolumeStatus:
        return NodeVolumeStatus(uid=UID, state=state, **kw)

    status = with_report("n1", report(NodeVolumeState.CREATING, progress=40))(VolumeStatus(), 1)
    assert (status.phase, status.node, status.progress) == (VolumePhase.CREATING, "n1", 40)
    assert conditions.is_true(status.conditions, conditions.RECONCILING)

    done = report(NodeVolumeState.AVAILABLE, size_bytes=2**30, location="/v/x.qcow2")
    status = with_report("n1", done)(status, 1)
    assert (status.phase, status.size_bytes, status.progress) == (
        VolumePhase.AVAILABLE,
        2**30,
        None,
    )
    assert conditions.is_true(status.conditions, conditions.READY)

    status = attached("vm-1")(status, 1)
    assert (status.phase, status.attached_to) == (VolumePhase.IN_USE, "vm-1")
    assert with_report("n1", done)(status, 1).phase is VolumePhase.IN_USE  # still attached
    assert attached(None)(status, 1).phase is VolumePhase.AVAILABLE

    failed = report(NodeVolumeState.FAILED, reason="ImageChecksumMismatch", message="bad sum")
    status = with_report("n1", failed)(VolumeStatus(), 1)
    stalled = conditions.condition(status.conditions, conditions.STALLED)
    assert status.phase is VolumePhase.ERROR
    assert stalled is not None and stalled.message == "bad sum"


def test_local_volumes_pin_the_instance_to_their_node() -> None:
    request = Request(cpu=1, memory_bytes=2**30, node_selector={}, required_node="b")
    nodes = [
        scheduler.Candidate(
            name=n, labels={}, ready=True, schedulable=True, cpu_free=4, memory_free_bytes=free
        )
        for n, free in (("a", 8 * 2**30), ("b", 2**30))
    ]
    assert scheduler.pick(request, nodes).name == "b"
    with pytest.raises(scheduler.Unschedulable, match="1 not the node of its local Volumes"):
        scheduler.pick(request, nodes[:1])
