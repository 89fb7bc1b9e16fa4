"""Placement: which Hypervisor runs an Instance. Pure: the caller supplies the facts."""

from __future__ import annotations

from dataclasses import dataclass, field

from stratus_api.v1alpha1.volume import VolumeBackend


@dataclass(frozen=True)
class Request:
    cpu: int
    memory_bytes: int
    node_selector: dict[str, str]
    required_node: str | None = None  # where its local Volumes are
    # Backends of its local Volumes not bound to a node yet: they are made where it runs.
    backends: frozenset[VolumeBackend] = frozenset()
    physical_networks: frozenset[str] = frozenset()  # of its vlan and flat Networks


@dataclass(frozen=True)
class Candidate:
    name: str
    labels: dict[str, str]
    ready: bool
    schedulable: bool
    cpu_free: int
    memory_free_bytes: int
    backends: frozenset[VolumeBackend] = field(default=frozenset({VolumeBackend.FILE}))
    physical_networks: frozenset[str] = frozenset()


# Why a Hypervisor is turned down (the codes in Unschedulable.rejections).
REJECTIONS = (
    "NoHypervisors", "VolumeNode", "NotReady", "NotSchedulable", "NodeSelector",
    "VolumeBackend", "PhysicalNetwork", "InsufficientCPU", "InsufficientMemory",
)  # fmt: skip


class Unschedulable(Exception):
    """No Hypervisor can take the Instance now; the message says why, per cause, and
    `rejections` counts the Hypervisors turned down per cause (a CamelCase code)."""

    def __init__(self, message: str, rejections: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.rejections = rejections or {}


def pick(request: Request, candidates: list[Candidate]) -> Candidate:
    """The fitting candidate with the most free memory (spreads load); ties by name."""
    reasons: dict[str, int] = {}
    codes: dict[str, int] = {}

    def reject(code: str, why: str) -> None:
        reasons[why] = reasons.get(why, 0) + 1
        codes[code] = codes.get(code, 0) + 1

    fitting = []
    for node in candidates:
        if request.required_node is not None and node.name != request.required_node:
            reject("VolumeNode", "not the node of its local Volumes")
        elif not node.ready:
            reject("NotReady", "not Ready")
        elif not node.schedulable:
            reject("NotSchedulable", "not schedulable")
        elif any(node.labels.get(k) != v for k, v in request.node_selector.items()):
            reject("NodeSelector", "nodeSelector does not match")
        elif missing := sorted(request.backends - node.backends):
            reject("VolumeBackend", f"serving no {'/'.join(missing)} volumes")
        elif absent := sorted(request.physical_networks - node.physical_networks):
            reject("PhysicalNetwork", f"without physical network {'/'.join(absent)}")
        elif node.cpu_free < request.cpu:
            reject("InsufficientCPU", "not enough free CPU")
        elif node.memory_free_bytes < request.memory_bytes:
            reject("InsufficientMemory", "not enough free memory")
        else:
            fitting.append(node)
    if not fitting:
        if not candidates:
            raise Unschedulable("no Hypervisors registered", {"NoHypervisors": 1})
        detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
        raise Unschedulable(f"0/{len(candidates)} Hypervisors fit: {detail}", codes)
    return min(fitting, key=lambda node: (-node.memory_free_bytes, node.name))
