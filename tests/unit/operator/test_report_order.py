"""Agent reports are applied in the agent's order: an inventory read before an event that
was already applied (the health check's, racing the event stream) changes nothing."""

from __future__ import annotations

from typing import Any

from stratus_api.guest import GuestState, GuestStatus
from stratus_api.v1alpha1 import Instance
from stratus_operator.services import instances
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import OperatorSettings
from stratus_operator.services.world import World
from testsupport import instance

UID = "0b7f7c3e-1111-2222-3333-444455556666"


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
