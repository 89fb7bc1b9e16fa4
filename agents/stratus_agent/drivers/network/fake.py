"""A network driver that plugs nothing, for the fake compute mode; it keeps node network
specs, router specs and security group specs in memory, so control-plane tests and
benchmarks can send them."""

from __future__ import annotations

from collections.abc import Sequence

from stratus_agent.base import NicBinding
from stratus_api.guest import Nic
from stratus_api.network_wire import NodeNetworkSpec
from stratus_api.router_wire import NodeRouterSpec
from stratus_api.security_group_wire import NodeSecurityGroupSpec


class FakeNetworkDriver:
    bridge = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, NodeNetworkSpec] = {}
        self.routers: dict[str, NodeRouterSpec] = {}
        self.security_groups: dict[str, NodeSecurityGroupSpec] = {}

    async def ensure_node(self) -> None:
        return None

    async def plug(self, uid: str, nics: Sequence[Nic]) -> tuple[NicBinding, ...]:
        return tuple(NicBinding(bridge=self.bridge) for _ in nics)

    async def unplug(self, uid: str) -> None:
        return None

    async def check(self) -> None:
        return None

    async def ensure_network(self, spec: NodeNetworkSpec) -> None:
        self.specs[spec.uid] = spec

    async def remove_network(self, uid: str) -> bool:
        return self.specs.pop(uid, None) is not None

    def networks(self) -> list[str]:
        return sorted(self.specs)

    def network(self, uid: str) -> NodeNetworkSpec | None:
        return self.specs.get(uid)

    async def ensure_router(self, spec: NodeRouterSpec) -> None:
        self.routers[spec.uid] = spec

    async def remove_router(self, uid: str) -> bool:
        return self.routers.pop(uid, None) is not None

    def router_uids(self) -> list[str]:
        return sorted(self.routers)

    def router(self, uid: str) -> NodeRouterSpec | None:
        return self.routers.get(uid)

    async def ensure_security_group(self, spec: NodeSecurityGroupSpec) -> None:
        self.security_groups[spec.uid] = spec

    async def remove_security_group(self, uid: str) -> bool:
        return self.security_groups.pop(uid, None) is not None

    def security_group_uids(self) -> list[str]:
        return sorted(self.security_groups)

    def security_group(self, uid: str) -> NodeSecurityGroupSpec | None:
        return self.security_groups.get(uid)

    async def secure(self, uid: str) -> None:
        return None
