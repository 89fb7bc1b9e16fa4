"""A network driver that plugs nothing, for the fake compute mode."""

from __future__ import annotations

from collections.abc import Sequence

from stratus_agent.base import NicBinding
from stratus_api.guest import Nic


class FakeNetworkDriver:
    bridge = "fake"

    async def ensure_node(self) -> None:
        return None

    async def plug(self, uid: str, nics: Sequence[Nic]) -> tuple[NicBinding, ...]:
        return tuple(NicBinding(bridge=self.bridge) for _ in nics)

    async def unplug(self, uid: str) -> None:
        return None

    async def check(self) -> None:
        return None
