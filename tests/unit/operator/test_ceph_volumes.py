"""ceph Volumes in the operator, against stub agents: what reaches the node (the pool's
access, key included, only there), and deletion through any Ready node."""

from __future__ import annotations

from typing import Any

import pytest

from stratus_api.v1alpha1 import CephPool, Hypervisor, Volume
from stratus_api.volume_wire import NodeVolumeSpec, NodeVolumeState, NodeVolumeStatus
from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.services import volumes
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import OperatorSettings
from stratus_operator.services.world import World

KEY = "AQBsecretcephxkeyQ=="
VOLUME_UID = "0b7f7c3e-1111-2222-3333-444455556666"


class Kube:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return {"key": KEY.encode()} if (namespace, name) == ("ceph", "key") else None

    async def patch_status(self, plural: str, ns: str | None, name: str, body: Any) -> None:
        self.patches.append(body["status"])

    async def post_event(self, *_: Any) -> None:
        return None


class Agent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def ensure_volume(self, spec: NodeVolumeSpec) -> NodeVolumeStatus:
        self.calls.append(("ensure", spec))
        return NodeVolumeStatus(uid=spec.uid, state=NodeVolumeState.CREATING, sequence=1)

    async def delete_volume(self, uid: str) -> None:
        self.calls.append(("delete", uid))


class Agents:
    def __init__(self) -> None:
        self.agent = Agent()

    async def client(self, _hypervisor: Any, refresh: bool = False) -> Agent:
        return self.agent


def volume(**status: Any) -> Volume:
    return Volume.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": "data", "namespace": "ns", "uid": VOLUME_UID, "generation": 1},
        "spec": {"size": "1Gi", "backend": "ceph", "source": {"image": "gone"}},
        **({"status": status} if status else {}),
    })  # fmt: skip


POOL = CephPool.model_validate({
    "apiVersion": "stratus.io/v1alpha1", "kind": "CephPool",
    "metadata": {"name": "default", "uid": "0b7f7c3e-1111-2222-3333-999999999999"},
    "spec": {"monitors": ["10.0.0.1:3300"], "pool": "rbd", "user": "stratus",
             "keySecretRef": {"namespace": "ceph", "name": "key"}},
})  # fmt: skip
NODE = Hypervisor.model_validate({
    "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": "n1"},
    "spec": {"endpoint": "https://n:8443", "tokenSecretRef": {"namespace": "s", "name": "t"}},
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady",
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
})  # fmt: skip


def setup(pool: CephPool | None = POOL) -> tuple[World, Runtime, Agent]:
    kube = Kube()
    runtime = Runtime(OperatorSettings(), kube, AgentPool(kube, 1.0))  # type: ignore[arg-type]
    agents = Agents()
    runtime.agents = agents  # type: ignore[assignment]
    world = World(
        hypervisors=lambda: [NODE], instances=list,
        hypervisor=lambda name: NODE if name == "n1" else None,
        instance_type=lambda _: None, image=lambda _: None, network=lambda _: None,
        instance=lambda _: None, instances_on=lambda _: [], has_instance=lambda _: False,
        ceph_pool=lambda name: pool if pool and name == "default" else None,
    )  # fmt: skip
    return world, runtime, agents.agent


async def test_the_node_gets_the_pools_access_and_nothing_else_shows_the_key() -> None:
    world, runtime, agent = setup()
    blank = volume().model_copy(update={"spec": volume().spec.model_copy(update={"source": None})})
    change = await volumes.reconcile(blank, world, runtime)
    ((what, spec),) = agent.calls
    assert what == "ensure" and spec.ceph is not None
    assert (spec.ceph.pool, spec.ceph.monitors, spec.ceph.user) == ("rbd", ["10.0.0.1:3300"],
                                                                   "stratus")  # fmt: skip
    assert spec.ceph.key.get_secret_value() == KEY and KEY not in repr(spec)
    assert KEY in spec.model_dump_json()  # only on the wire to the node
    await volumes.write_status(blank, runtime, change)
    assert KEY not in str(runtime.kube.patches)  # type: ignore[attr-defined]


async def test_a_ceph_volume_without_its_pool_says_so() -> None:
    world, runtime, agent = setup(pool=None)
    with pytest.raises(InstanceProblem, match=r"spec\.cephPool: CephPool default \(unset"):
        await volumes.reconcile(volume(), world, runtime)
    assert agent.calls == []


async def test_deleting_introduces_the_volume_to_a_ready_node_without_its_source() -> None:
    world, runtime, agent = setup()
    made = volume(phase="Available", node="n1")  # its source Image is gone by now
    await volumes.remove(made, world, runtime)
    assert [what for what, _ in agent.calls] == ["ensure", "delete"]
    introduced = agent.calls[0][1]
    assert introduced.source is None and introduced.ceph is not None

    world, runtime, agent = setup(pool=None)  # the pool is gone: nothing to reach
    await volumes.remove(made, world, runtime)
    assert agent.calls == []
