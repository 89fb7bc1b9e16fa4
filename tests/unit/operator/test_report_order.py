"""Agent reports are applied in the agent's order: an inventory read before an event that
was already applied (the health check's, racing the event stream) changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from stratus_api.guest import GuestState, GuestStatus
from stratus_api.v1alpha1 import Hypervisor, Image, Instance, Network, Volume, VolumeSnapshot
from stratus_api.volume_wire import NodeSnapshotState, NodeSnapshotStatus
from stratus_operator.controllers.instance import with_guest_status
from stratus_operator.services import instances, snapshots
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import OperatorSettings
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World
from testsupport import instance

UID = "0b7f7c3e-1111-2222-3333-444455556666"
IMAGE_UID, NET_UID = "0b7f7c3e-1111-2222-3333-000000000001", "0b7f7c3e-1111-2222-3333-000000000002"


class FakeKube:
    """Records status patches, and the status each leaves, as the API server would keep it."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> None:
        self.patches.append(body["status"])

    async def post_event(self, *_: Any) -> None:
        return None

    async def create(self, *_: Any) -> bool:  # the namespace's security group `default`
        return True


def runtime_with(agent: object) -> tuple[FakeKube, Runtime]:
    """A Runtime over a FakeKube whose every node's agent client is `agent`."""

    class Agents:
        async def client(self, _hypervisor: Any) -> object:
            return agent

    kube = FakeKube()
    runtime = Runtime(OperatorSettings(), kube, AgentPool(kube, 1.0))  # type: ignore[arg-type]
    runtime.agents = Agents()  # type: ignore[assignment]
    return kube, runtime


def world_of(found: Instance) -> World:
    return World(
        hypervisors=list, instances=lambda: [found], hypervisor=lambda _: None,
        instance_type=lambda _: None, image=lambda _: None, network=lambda _: None,
        instance=lambda uid: found if uid == UID else None, instances_on=lambda _: [found],
        has_instance=lambda uid: uid == UID,
    )  # fmt: skip


async def test_a_report_older_than_one_applied_is_ignored() -> None:
    body = instance("web")
    body["metadata"].update(namespace="ns", uid=UID, generation=1)
    found = Instance.model_validate(body)
    kube = FakeKube()
    runtime = Runtime(OperatorSettings(), kube, AgentPool(kube, 1.0))  # type: ignore[arg-type]

    def report(state: GuestState, sequence: int) -> GuestStatus:
        return GuestStatus(uid=UID, state=state, generation=1, sequence=sequence)

    await instances.apply_report(report(GuestState.RUNNING, 20), world_of(found), runtime)
    assert kube.patches[-1]["phase"] == "Running"
    # An inventory taken before that event: its Provisioning is history, not news.
    await instances.apply_report(report(GuestState.PROVISIONING, 10), world_of(found), runtime)
    assert len(kube.patches) == 1
    await instances.apply_report(report(GuestState.CRASHED, 30), world_of(found), runtime)
    assert kube.patches[-1]["phase"] != "Running"
    assert len(kube.patches) == 2
    # Deleting the Instance forgets the order: a guest re-created under the UID starts anew.
    await instances.remove(UID, None, world_of(found), runtime)
    assert UID not in runtime.reported


async def test_a_puts_answer_older_than_an_applied_event_changes_nothing() -> None:
    """A fast copy's Ready event may be written before the PUT's Creating answer is: the
    answer, older, must not turn the snapshot back to Creating."""
    snap_uid, volume_uid = "0b7f7c3e-1111-2222-3333-aaaabbbbcccc", UID
    snapshot = VolumeSnapshot.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "VolumeSnapshot",
        "metadata": {"name": "nightly", "namespace": "ns", "uid": snap_uid, "generation": 1},
        "spec": {"volume": "data"},
    })  # fmt: skip
    volume = Volume.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": "data", "namespace": "ns", "uid": volume_uid, "generation": 1},
        "spec": {"size": "1Gi"}, "status": {"phase": "Available", "node": "n1"},
    })  # fmt: skip
    hypervisor = Hypervisor.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": "n1"},
        "spec": {"endpoint": "https://n:8443", "tokenSecretRef": {"namespace": "s", "name": "t"}},
    })  # fmt: skip

    def report(state: str, sequence: int) -> NodeSnapshotStatus:
        return NodeSnapshotStatus(
            uid=snap_uid, state=NodeSnapshotState(state), volume=volume_uid, sequence=sequence
        )

    class Agent:
        async def ensure_snapshot(self, _spec: Any) -> NodeSnapshotStatus:
            return report("Creating", 10)

    kube, runtime = runtime_with(Agent())
    world = World(
        hypervisors=list, instances=list, hypervisor=lambda _: hypervisor,
        instance_type=lambda _: None, image=lambda _: None, network=lambda _: None,
        instance=lambda _: None, instances_on=lambda _: [], has_instance=lambda _: False,
        volume=lambda _: volume, snapshot_by_uid=lambda _: snapshot,
    )  # fmt: skip
    answered = await snapshots.reconcile(snapshot, world, runtime)
    await snapshots.apply_report(report("Ready", 20), "n1", world, runtime)  # the event first
    assert kube.patches[-1]["phase"] == "Ready"
    await snapshots.write_status(snapshot, runtime, answered)
    assert len(kube.patches) == 1  # the older answer wrote nothing


async def test_a_settled_answer_is_not_undone_by_an_older_event_that_comes_after_it() -> None:
    """The node answers a PUT with Running when the guest settled in time; its Provisioning
    event, sent before, may arrive after the answer: the Instance is written once, Running."""
    body = instance("web")
    body["metadata"].update(namespace="ns", uid=UID, generation=1)
    found = Instance.model_validate(body)
    ready = [{"type": "Ready", "status": "True", "reason": "Ready",
              "lastTransitionTime": "2026-01-01T00:00:00Z"}]  # fmt: skip
    hypervisor = Hypervisor.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": "n1"},
        "spec": {"endpoint": "https://n:8443", "tokenSecretRef": {"namespace": "s", "name": "t"}},
        "status": {"capacity": {"cpu": 8, "memory": "16Gi"},
                   "allocatable": {"cpu": 8, "memory": "16Gi"},
                   "storage": [{"backend": "file", "capacity": "1Ti", "free": "1Ti",
                                "provisioned": "0"}],
                   "conditions": ready},
    })  # fmt: skip
    network = Network.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Network",
        "metadata": {"name": "net", "namespace": "ns", "uid": NET_UID},
        "spec": {"subnets": [{"cidr": "10.30.0.0/24"}]},
        "status": {"segmentationId": 7, "conditions": ready},
    })  # fmt: skip
    image = Image.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Image",
        "metadata": {"name": "img", "namespace": "ns", "uid": IMAGE_UID},
        "spec": {"source": {"http": {"url": "https://images.example/img.qcow2"}}},
        "status": {"phase": "Ready", "conditions": ready},
    })  # fmt: skip

    def report(state: GuestState, sequence: int) -> GuestStatus:
        return GuestStatus(uid=UID, state=state, generation=1, sequence=sequence)

    class Agent:
        async def ensure(self, _spec: Any) -> GuestStatus:
            return report(GuestState.RUNNING, 20)

    kube, runtime = runtime_with(Agent())
    world = World(
        hypervisors=lambda: [hypervisor], instances=lambda: [found],
        hypervisor=lambda name: hypervisor if name == "n1" else None,
        instance_type=lambda _: None, image=lambda _: image, network=lambda _: network,
        instance=lambda uid: found if uid == UID else None, instances_on=lambda _: [found],
        has_instance=lambda uid: uid == UID, networks=lambda: [network],
    )  # fmt: skip
    answered = await instances.reconcile(found, world, runtime)
    await instances.apply_report(report(GuestState.PROVISIONING, 10), world, runtime)
    assert kube.patches == []  # the older event wrote nothing
    await instances.write_status(ObjectRef.of(found), None, 1, runtime, answered)
    assert [patch["phase"] for patch in kube.patches] == ["Running"]


async def test_resyncs_work_out_a_guest_again_only_when_it_or_its_instance_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every health check reports every guest: the same report about the same Instance (the
    same resourceVersion) is not worked out again; a changed Instance or guest is."""
    kube = FakeKube()
    runtime = Runtime(OperatorSettings(), kube, AgentPool(kube, 1.0))  # type: ignore[arg-type]
    derived: list[GuestState] = []

    def counted(status: Any, guest: GuestStatus, *args: Any) -> Any:
        derived.append(guest.state)
        return with_guest_status(status, guest, *args)

    monkeypatch.setattr(instances, "with_guest_status", counted)

    def found(version: str, status: dict[str, Any] | None) -> Instance:
        body = instance("web")
        body["metadata"].update(namespace="ns", uid=UID, generation=1, resourceVersion=version)
        return Instance.model_validate({**body, "status": status} if status else body)

    def report(state: GuestState, sequence: int) -> GuestStatus:
        return GuestStatus(uid=UID, state=state, generation=1, sequence=sequence)

    await instances.apply_report(report(GuestState.RUNNING, 1), world_of(found("5", None)),
                                 runtime)  # fmt: skip
    running, first = kube.patches[-1], len(derived)
    settled = world_of(found("6", running))  # the watch brings the written status back
    for sequence in (2, 3, 4):  # three resyncs: the guest still runs
        await instances.apply_report(report(GuestState.RUNNING, sequence), settled, runtime)
    assert len(kube.patches) == 1
    assert len(derived) == first + 1  # found unchanged once, then not looked at again
    # The Instance changed (whatever it was): the same report is worked out again.
    await instances.apply_report(report(GuestState.RUNNING, 5), world_of(found("7", running)),
                                 runtime)  # fmt: skip
    assert len(derived) == first + 2 and len(kube.patches) == 1
    # The guest stops: news, whatever the Instance.
    await instances.apply_report(report(GuestState.STOPPED, 6), settled, runtime)
    assert kube.patches[-1]["phase"] != "Running"
    # Deleting the Instance forgets it.
    await instances.remove(UID, None, settled, runtime)
    assert UID not in runtime.settled
