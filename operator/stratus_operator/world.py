"""The operator's read-only view of the cluster, as the controllers need it.

kopf fills it from its indexes (complete before any handler runs); tests fill it from dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stratus_api.v1alpha1 import Hypervisor, Image, Instance, InstanceType, Network

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class World:
    hypervisors: Callable[[], Iterable[Hypervisor]]
    instance_types: Callable[[], Iterable[InstanceType]]
    images: Callable[[], Iterable[Image]]
    networks: Callable[[], Iterable[Network]]
    instances: Callable[[], Iterable[Instance]]
    # Whether any Instance has this UID, also one whose spec the models refuse; None: look
    # among the parsed ones (tests).
    instance_exists: Callable[[str], bool] | None = None
    # The parsed Instance of a UID in O(1); None: scan (tests).
    instance_by_uid: Callable[[str], Instance | None] | None = None

    def hypervisor(self, name: str) -> Hypervisor | None:
        return next((h for h in self.hypervisors() if h.metadata.name == name), None)

    def instance_type(self, name: str | None) -> InstanceType | None:
        return next((t for t in self.instance_types() if t.metadata.name == name), None)

    def image(self, key: Key) -> Image | None:
        return next((i for i in self.images() if _key(i) == key), None)

    def network(self, key: Key) -> Network | None:
        return next((n for n in self.networks() if _key(n) == key), None)

    def instance(self, uid: str) -> Instance | None:
        if self.instance_by_uid is not None:
            return self.instance_by_uid(uid)
        return next((i for i in self.instances() if i.metadata.uid == uid), None)

    def has_instance(self, uid: str) -> bool:
        if self.instance_exists is not None:
            return self.instance_exists(uid)
        return self.instance(uid) is not None


def _key(obj: Image | Network) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name or "")
