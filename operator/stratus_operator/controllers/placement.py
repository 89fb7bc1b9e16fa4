"""Capacity accounting: what a Hypervisor may give, and what its Instances already use.

Allocatable follows Nova: (capacity - reserved) * allocation ratio, from the agent's
reported capacity and the Hypervisor's spec, so a changed ratio counts at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from stratus_api.v1alpha1 import Hypervisor


@dataclass(frozen=True)
class Usage:
    cpu: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpu + other.cpu, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.cpu - other.cpu, self.memory_bytes - other.memory_bytes)


def allocatable(hypervisor: Hypervisor) -> Usage:
    """What Instances may use on the node; nothing until its agent reported capacity."""
    status = hypervisor.status
    if status is None or status.capacity is None:
        return Usage()
    capacity, spec = status.capacity, hypervisor.spec
    cpu = int((capacity.cpu - spec.reserved.cpu) * spec.allocation_ratio.cpu)
    memory = int(
        (capacity.memory.bytes - spec.reserved.memory.bytes) * spec.allocation_ratio.memory
    )
    return Usage(max(cpu, 0), max(memory, 0))


class PlacementLedger:
    """Which node each Instance is placed on, with what size, and per-node totals kept
    incrementally: one placement costs the same with 10 or 10,000 Instances."""

    def __init__(self) -> None:
        self._placed: dict[str, tuple[str, Usage]] = {}
        self._totals: dict[str, Usage] = {}

    def __len__(self) -> int:
        return len(self._placed)

    def place(self, uid: str, node: str, size: Usage) -> None:
        self.release(uid)
        self._placed[uid] = (node, size)
        self._totals[node] = self._totals.get(node, Usage()) + size

    def release(self, uid: str) -> None:
        found = self._placed.pop(uid, None)
        if found is not None:
            node, size = found
            self._totals[node] = self._totals[node] - size

    def node_of(self, uid: str) -> str | None:
        found = self._placed.get(uid)
        return found[0] if found else None

    def used(self, node: str) -> Usage:
        return self._totals.get(node, Usage())
