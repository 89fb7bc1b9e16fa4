"""The narrow interface every compute driver implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stratus_agent.compute.domain_builder import NodeFacts
from stratus_api.guest import GuestSpec, GuestStatus

GuestListener = Callable[[GuestStatus], None]


class ComputeDriver(Protocol):
    """Runs guests. Every method is idempotent and keyed by the Instance UID."""

    virt_type: str

    async def start(self, on_change: GuestListener) -> None:
        """Connect; from now on report every guest state change to `on_change`, which is
        called on the event loop."""

    async def stop(self) -> None:
        """Disconnect; guests keep running."""

    async def ensure(self, spec: GuestSpec, facts: NodeFacts) -> GuestStatus:
        """Define the guest, or update its definition, and bring it to `spec.power`."""

    async def delete(self, uid: str) -> bool:
        """Stop and undefine the guest; True if there was one."""

    async def list(self) -> list[GuestStatus]:
        """Every guest this driver owns, with its state."""

    async def capacity(self) -> tuple[int, int]:
        """(CPUs, memory bytes) of the node."""
