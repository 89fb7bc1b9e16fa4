"""The namespace's group `default` is made once when NICs first need it, however many come
at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.security_groups import ensure_default
from stratus_operator.services.settings import OperatorSettings
from stratus_operator.services.world import World
from testsupport import placed_instance


class SlowKube:
    """Creates after a moment, as the API server does under load; counts the creates."""

    def __init__(self, fail: bool = False) -> None:
        self.created: list[tuple[str, str | None, str]] = []
        self.fail = fail

    async def create(self, plural: str, namespace: str | None, body: dict[str, Any]) -> bool:
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionError("the API server went away")
        self.created.append((plural, namespace, body["metadata"]["name"]))
        return True


def world() -> World:
    return World(
        hypervisors=list, instances=list, hypervisor=lambda _: None,
        instance_type=lambda _: None, image=lambda _: None, network=lambda _: None,
        instance=lambda _: None, instances_on=lambda _: [], has_instance=lambda _: False,
    )  # fmt: skip


def runtime(kube: SlowKube) -> Runtime:
    return Runtime(OperatorSettings(), kube, AgentPool(kube, 1.0))  # type: ignore[arg-type]


async def test_a_burst_of_nics_makes_the_default_group_once() -> None:
    kube = SlowKube()
    rt = runtime(kube)
    burst = [placed_instance(f"vm-{i}", None) for i in range(20)]
    await asyncio.gather(*(ensure_default(i, world(), rt) for i in burst))
    assert kube.created == [("securitygroups", "team-a", "default")]


async def test_a_failed_make_is_tried_again_by_the_next_nic() -> None:
    kube = SlowKube(fail=True)
    rt = runtime(kube)
    with pytest.raises(ConnectionError):
        await ensure_default(placed_instance("vm-1", None), world(), rt)
    kube.fail = False
    await ensure_default(placed_instance("vm-2", None), world(), rt)
    assert kube.created == [("securitygroups", "team-a", "default")]
