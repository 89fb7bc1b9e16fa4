"""In-memory copies of every Stratus object, kept by kopf from its watches and keyed for the
World's lookups. kopf fills them completely before the first handler runs, so handlers read
them instead of the API.

The index functions are coroutines, though they never wait: kopf runs plain functions in
a thread pool, and three thread hops per watch event cost more than the parsing.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from stratus_api.v1alpha1 import (
    CephPool,
    FloatingIP,
    Hypervisor,
    Image,
    Instance,
    InstanceType,
    Network,
    Resource,
    Router,
    SecurityGroup,
    Volume,
    VolumeSnapshot,
)
from stratus_api.v1alpha1.cephpool import DEFAULT_POOL
from stratus_api.v1alpha1.securitygroup import DEFAULT_GROUP
from stratus_operator.handlers.common import (
    CEPH_POOLS,
    FLOATING_IPS,
    HYPERVISORS,
    IMAGES,
    INSTANCE_TYPES,
    INSTANCES,
    NETWORKS,
    ROUTERS,
    SECURITY_GROUPS,
    SNAPSHOTS,
    VOLUMES,
    runtime,
)
from stratus_operator.services.world import (
    instance_in_group,
    instance_named,
    instance_on,
    instance_on_network,
    instance_using,
    key_of,
)

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Resource)


def _parsed(model: type[R], body: kopf.Body, memo: kopf.Memo) -> R | None:
    """The body as its model, without its managedFields (nobody reads them, and they are
    a third of a parsed Instance's memory); its status is shared with the status writer's
    copy when they are equal."""
    raw = dict(body)
    raw["metadata"] = {
        k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"
    }
    try:
        found = model.model_validate(raw)
    except ValidationError as exc:  # admission should make this impossible
        meta = body.get("metadata") or {}
        where = f"{meta.get('namespace') or ''}/{meta.get('name')}".lstrip("/")
        log.warning("%s %s cannot be read (%d problems); left out", model.crd.kind, where,
                    exc.error_count())  # fmt: skip
        return None
    status = getattr(found, "status", None)
    if status is not None and found.metadata.uid:
        runtime(memo).status.caught_up(found.metadata.uid, status, found.metadata.resource_version)
    return found


@kopf.index(*HYPERVISORS)
async def stratus_hypervisors(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(Hypervisor, body, memo)
    return {found.metadata.name: found} if found else {}


@kopf.index(*INSTANCE_TYPES)
async def stratus_instance_types(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(InstanceType, body, memo)
    return {found.metadata.name: found} if found else {}


@kopf.index(*IMAGES)
async def stratus_images(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(Image, body, memo)
    return {key_of(found): found} if found else {}


@kopf.index(*NETWORKS)
async def stratus_networks(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(Network, body, memo)
    return {key_of(found): found} if found else {}


@kopf.index(*INSTANCES)
async def stratus_instances(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    """Every Instance under its UID (None when the models refuse its spec: a guest whose
    Instance exists is never garbage), and the UID under each key the World looks up by:
    its node, and each Volume it names (a Volume in use is never deleted, even under an
    Instance the models refuse). One index, not one per key: kopf's cost is per index
    and watch event. Node and Volume keys come from the raw body, and so do security group keys."""
    uid = body.metadata.uid
    keys: dict[Any, Any] = {uid: _parsed(Instance, body, memo)}
    keys[instance_named(body.metadata.namespace or "", body.metadata.name or "")] = uid
    node = (body.get("status") or {}).get("node")
    if node:
        keys[instance_on(node)] = uid
    spec, namespace = body.get("spec") or {}, body.metadata.namespace or ""
    names = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    names.add((spec.get("boot") or {}).get("volume"))
    keys.update({instance_using(namespace, n): uid for n in names if isinstance(n, str)})
    nets = {n.get("name") for n in spec.get("networks") or [] if isinstance(n, dict)}
    joined = [instance_on_network(namespace, n) for n in nets if isinstance(n, str)]
    joined += [instance_in_group(namespace, g) for g in _groups(spec)]
    keys.update(dict.fromkeys(joined, uid))
    runtime(memo).memberships.changed(uid, joined)  # their daemons look at it again
    return keys


def _groups(spec: dict[str, Any]) -> set[str]:
    """The security groups the Instance's NICs are in, from the raw spec (a NIC naming none
    is in `default`)."""
    found: set[str] = set()
    for nic in spec.get("networks") or []:
        if not isinstance(nic, dict):
            continue
        named = nic.get("securityGroups")
        if not isinstance(named, list) or not named:
            named = [DEFAULT_GROUP]
        found.update(g for g in named if isinstance(g, str))
    return found


@kopf.index(*VOLUMES)
async def stratus_volumes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    """Each Volume under its (namespace, name) and under its UID (agents report by UID)."""
    found = _parsed(Volume, body, memo)
    return {key_of(found): found, found.metadata.uid: found} if found else {}


@kopf.index(*SNAPSHOTS)
async def stratus_snapshots(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    """Each VolumeSnapshot under its (namespace, name) and its UID (agents report by UID)."""
    found = _parsed(VolumeSnapshot, body, memo)
    return {key_of(found): found, found.metadata.uid: found} if found else {}


@kopf.index(*SNAPSHOTS)
async def stratus_volume_snapshots(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Which VolumeSnapshots were taken of each Volume, from the raw body: a Volume with
    snapshots is never deleted."""
    volume = (body.get("spec") or {}).get("volume")
    namespace = body.metadata.namespace or ""
    return {(namespace, volume): body.metadata.name} if isinstance(volume, str) else {}


@kopf.index(*VOLUMES)
async def stratus_pool_volumes(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Which ceph Volumes are in each CephPool (by name), from the raw body: a CephPool with
    Volumes is never deleted."""
    spec = body.get("spec") or {}
    if spec.get("backend") != "ceph":
        return {}
    pool = spec.get("cephPool") or DEFAULT_POOL
    if not isinstance(pool, str):
        return {}
    return {pool: f"{body.metadata.namespace}/{body.metadata.name}"}


@kopf.index(*CEPH_POOLS)
async def stratus_ceph_pools(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    """Each CephPool under its name and under ("uid", UID) (agents report pools by UID; a
    name may look like a UID)."""
    found = _parsed(CephPool, body, memo)
    return {found.metadata.name: found, ("uid", found.metadata.uid): found} if found else {}


@kopf.index(*ROUTERS)
async def stratus_routers(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(Router, body, memo)
    return {found.metadata.uid: found} if found else {}


@kopf.index(*FLOATING_IPS)
async def stratus_floating_ips(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(FloatingIP, body, memo)
    return {found.metadata.uid: found} if found else {}


@kopf.index(*SECURITY_GROUPS)
async def stratus_security_groups(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
    found = _parsed(SecurityGroup, body, memo)
    return {(found.metadata.namespace or "", found.metadata.name or ""): found} if found else {}
