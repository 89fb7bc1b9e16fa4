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


class Unschedulable(Exception):
    """No Hypervisor can take the Instance now; the message says why, per cause."""


def pick(request: Request, candidates: list[Candidate]) -> Candidate:
    """The fitting candidate with the most free memory (spreads load); ties by name."""
    reasons: dict[str, int] = {}

    def reject(why: str) -> None:
        reasons[why] = reasons.get(why, 0) + 1

    fitting = []
    for node in candidates:
        if request.required_node is not None and node.name != request.required_node:
            reject("not the node of its local Volumes")
        elif not node.ready:
            reject("not Ready")
        elif not node.schedulable:
            reject("not schedulable")
        elif any(node.labels.get(k) != v for k, v in request.node_selector.items()):
            reject("nodeSelector does not match")
        elif missing := sorted(request.backends - node.backends):
            reject(f"serving no {'/'.join(missing)} volumes")
        elif absent := sorted(request.physical_networks - node.physical_networks):
            reject(f"without physical network {'/'.join(absent)}")
        elif node.cpu_free < request.cpu:
            reject("not enough free CPU")
        elif node.memory_free_bytes < request.memory_bytes:
            reject("not enough free memory")
        else:
            fitting.append(node)
    if not fitting:
        if not candidates:
            raise Unschedulable("no Hypervisors registered")
        detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
        raise Unschedulable(f"0/{len(candidates)} Hypervisors fit: {detail}")
    return min(fitting, key=lambda node: (-node.memory_free_bytes, node.name))
