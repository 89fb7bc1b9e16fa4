"""The operator's read-only view of the cluster, as the controllers need it.

kopf fills it from its indexes (complete before any handler runs), each keyed for the
lookups below, so no lookup scans every object; tests build it from lists with `of`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stratus_api.v1alpha1 import Hypervisor, Image, Instance, InstanceType, Network

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class World:
    hypervisors: Callable[[], Iterable[Hypervisor]]
    instances: Callable[[], Iterable[Instance]]
    hypervisor: Callable[[str], Hypervisor | None]
    instance_type: Callable[[str | None], InstanceType | None]
    image: Callable[[Key], Image | None]
    network: Callable[[Key], Network | None]
    instance: Callable[[str], Instance | None]  # by UID
    instances_on: Callable[[str], Iterable[Instance]]  # by node
    # Whether any Instance has this UID, also one whose spec the models refuse.
    has_instance: Callable[[str], bool]

    @classmethod
    def of(
        cls,
        hypervisors: Iterable[Hypervisor] = (),
        instance_types: Iterable[InstanceType] = (),
        images: Iterable[Image] = (),
        networks: Iterable[Network] = (),
        instances: Iterable[Instance] = (),
    ) -> World:
        """A World over fixed lists (tests)."""
        hvs = {h.metadata.name or "": h for h in hypervisors}
        types = {t.metadata.name or "": t for t in instance_types}
        imgs = {key_of(i): i for i in images}
        nets = {key_of(n): n for n in networks}
        vms = {i.metadata.uid or "": i for i in instances}
        return cls(
            hypervisors=lambda: list(hvs.values()),
            instances=lambda: list(vms.values()),
            hypervisor=hvs.get,
            instance_type=lambda name: types.get(name or ""),
            image=imgs.get,
            network=nets.get,
            instance=vms.get,
            instances_on=lambda node: [i for i in vms.values() if node_of(i) == node],
            has_instance=lambda uid: uid in vms,
        )


def key_of(obj: Image | Network | Instance) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name or "")


def node_of(instance: Instance) -> str | None:
    return instance.status.node if instance.status else None
