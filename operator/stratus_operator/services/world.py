"""The operator's read-only view of the cluster, as the controllers need it.

kopf fills it from its indexes (complete before any handler runs), each keyed for the
lookups below, so no lookup scans every object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stratus_api.v1alpha1 import (
    CephPool,
    FloatingIP,
    Hypervisor,
    Image,
    Instance,
    InstanceType,
    Network,
    Router,
    SecurityGroup,
    Volume,
    VolumeSnapshot,
)

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
    volume: Callable[[Key], Volume | None] = lambda _: None
    volume_by_uid: Callable[[str], Volume | None] = lambda _: None
    # UIDs of the Instances whose spec names this Volume (boot or attached).
    volume_users: Callable[[Key], Iterable[str]] = lambda _: ()
    snapshot: Callable[[Key], VolumeSnapshot | None] = lambda _: None
    snapshot_by_uid: Callable[[str], VolumeSnapshot | None] = lambda _: None
    # Names of the VolumeSnapshots taken of this Volume.
    snapshots_of: Callable[[Key], Iterable[str]] = lambda _: ()
    ceph_pool: Callable[[str], CephPool | None] = lambda _: None
    networks: Callable[[], Iterable[Network]] = lambda: ()
    # UIDs of the Instances whose spec names this Network.
    network_users: Callable[[Key], Iterable[str]] = lambda _: ()
    ceph_pool_by_uid: Callable[[str], CephPool | None] = lambda _: None
    routers: Callable[[], Iterable[Router]] = lambda: ()
    floating_ips: Callable[[], Iterable[FloatingIP]] = lambda: ()
    instance_named: Callable[[Key], Instance | None] = lambda _: None
    # "namespace/name" of the ceph Volumes in this CephPool.
    pool_volumes: Callable[[str], Iterable[str]] = lambda _: ()
    security_group: Callable[[Key], SecurityGroup | None] = lambda _: None
    # UIDs of the Instances with a NIC in this group (a NIC naming none is in `default`).
    security_group_users: Callable[[Key], Iterable[str]] = lambda _: ()


def key_of(obj: Image | Network | Instance | Volume | VolumeSnapshot) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name or "")


# Keys of the Instances index besides UIDs (see handlers/indexes.py).
def instance_on(node: str) -> tuple[str, str]:
    return ("node", node)


def instance_using(namespace: str, volume: str) -> tuple[str, str, str]:
    return ("volume", namespace, volume)


def instance_named(namespace: str, name: str) -> tuple[str, str, str]:
    return ("name", namespace, name)


def instance_on_network(namespace: str, network: str) -> tuple[str, str, str]:
    return ("network", namespace, network)


def instance_in_group(namespace: str, group: str) -> tuple[str, str, str]:
    return ("securitygroup", namespace, group)
