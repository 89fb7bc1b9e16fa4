"""Capacity accounting: what a Hypervisor may give, and what its Instances already use.

Allocatable follows Nova: (capacity - reserved) * allocation ratio, from the agent's
reported capacity and the Hypervisor's spec, so a changed ratio counts at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stratus_api.v1alpha1 import Hypervisor


@dataclass(frozen=True)
class Usage:
    cpu: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpu + other.cpu, self.memory_bytes + other.memory_bytes)


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


def usage_by_node(
    placed: Iterable[tuple[str, str, Usage]], claimed: dict[str, tuple[str, Usage]]
) -> dict[str, Usage]:
    """Per-node totals of the Instances the watch shows placed (uid, node, size) plus the
    placements decided but not visible in the watch yet. An Instance counts once: its
    watched node wins over its claim."""
    totals: dict[str, Usage] = {}
    seen = set()
    for uid, node, size in placed:
        seen.add(uid)
        totals[node] = totals.get(node, Usage()) + size
    for uid, (node, size) in claimed.items():
        if uid not in seen:
            totals[node] = totals.get(node, Usage()) + size
    return totals
