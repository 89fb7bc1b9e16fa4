"""What every handler module shares: resource names, the World from kopf's indexes, the
Runtime from the memo."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import kopf

from stratus_api.v1alpha1 import GROUP, VERSION, Instance
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.world import (
    World,
    instance_in_group,
    instance_named,
    instance_on,
    instance_on_network,
    instance_using,
)

T = TypeVar("T")

HYPERVISORS = (GROUP, VERSION, "hypervisors")
INSTANCES = (GROUP, VERSION, "instances")
IMAGES = (GROUP, VERSION, "images")
NETWORKS = (GROUP, VERSION, "networks")
INSTANCE_TYPES = (GROUP, VERSION, "instancetypes")
VOLUMES = (GROUP, VERSION, "volumes")
SNAPSHOTS = (GROUP, VERSION, "volumesnapshots")
CEPH_POOLS = (GROUP, VERSION, "cephpools")
ROUTERS = (GROUP, VERSION, "routers")
FLOATING_IPS = (GROUP, VERSION, "floatingips")
SECURITY_GROUPS = (GROUP, VERSION, "securitygroups")
# Watch streams kopf keeps open per namespace it serves: one per kind, and its discovery
# of CRDs and namespaces.
WATCHED_KINDS = (
    len({
        HYPERVISORS, INSTANCES, IMAGES, NETWORKS, INSTANCE_TYPES, VOLUMES, SNAPSHOTS, CEPH_POOLS,
        ROUTERS, FLOATING_IPS, SECURITY_GROUPS,
    })
    + 2
)  # fmt: skip


def _values(index: kopf.Index[Any, T]) -> Iterable[T]:
    for store in index.values():
        yield from store


def _first(index: kopf.Index[Any, T], key: Any) -> T | None:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _instances(index: kopf.Index[Any, Any]) -> Iterable[Instance]:
    """The parsed Instances: UID keys only (the index has node and Volume keys too)."""
    for key, store in index.items():
        if isinstance(key, str):
            yield from (found for found in store if found is not None)


_INDEXES = (
    "stratus_hypervisors", "stratus_instance_types", "stratus_images", "stratus_networks",
    "stratus_instances", "stratus_volumes", "stratus_snapshots", "stratus_volume_snapshots",
    "stratus_ceph_pools", "stratus_pool_volumes", "stratus_routers", "stratus_floating_ips",
    "stratus_security_groups",
)  # fmt: skip
# The last World built, with the indexes it reads. kopf passes the same live index objects
# to every handler, so one World serves them all; building one per call was 3% of the
# operator's CPU in bench/control_plane.py.
_last: dict[str, tuple[tuple[Any, ...], World]] = {}


def world(kwargs: dict[str, Any]) -> World:
    """The World over the live indexes kopf passes to every handler (see indexes.py)."""
    indexes = tuple(kwargs[name] for name in _INDEXES)
    last = _last.get("world")
    if last is not None and all(a is b for a, b in zip(last[0], indexes, strict=True)):
        return last[1]
    built = _world(kwargs)
    _last["world"] = (indexes, built)
    return built


def _world(kwargs: dict[str, Any]) -> World:
    hypervisors, types = kwargs["stratus_hypervisors"], kwargs["stratus_instance_types"]
    images, networks = kwargs["stratus_images"], kwargs["stratus_networks"]
    instances = kwargs["stratus_instances"]
    volumes = kwargs["stratus_volumes"]
    snapshots, taken = kwargs["stratus_snapshots"], kwargs["stratus_volume_snapshots"]
    ceph_pools, pool_volumes = kwargs["stratus_ceph_pools"], kwargs["stratus_pool_volumes"]
    routers, floating_ips = kwargs["stratus_routers"], kwargs["stratus_floating_ips"]
    security_groups = kwargs["stratus_security_groups"]
    return World(
        hypervisors=lambda: _values(hypervisors),
        instances=lambda: _instances(instances),
        hypervisor=lambda name: _first(hypervisors, name),
        instance_type=lambda name: _first(types, name),
        image=lambda key: _first(images, key),
        network=lambda key: _first(networks, key),
        networks=lambda: _values(networks),
        network_users=lambda key: list(instances.get(instance_on_network(*key), ())),
        instance=lambda uid: _first(instances, uid),
        instances_on=lambda node: [
            found
            for uid in instances.get(instance_on(node), ())
            if (found := _first(instances, uid))
        ],
        has_instance=lambda uid: uid in instances,
        volume=lambda key: _first(volumes, key),
        volume_by_uid=lambda uid: _first(volumes, uid),
        volume_users=lambda key: list(instances.get(instance_using(*key), ())),
        snapshot=lambda key: _first(snapshots, key),
        snapshot_by_uid=lambda uid: _first(snapshots, uid),
        snapshots_of=lambda key: list(taken.get(key, ())),
        ceph_pool=lambda name: _first(ceph_pools, name),
        ceph_pool_by_uid=lambda uid: _first(ceph_pools, ("uid", uid)),
        pool_volumes=lambda name: list(pool_volumes.get(name, ())),
        routers=lambda: _values(routers),
        floating_ips=lambda: _values(floating_ips),
        instance_named=lambda key: _first(instances, _first(instances, instance_named(*key))),
        security_group=lambda key: _first(security_groups, key),
        security_group_users=lambda key: list(instances.get(instance_in_group(*key), ())),
    )


def result_of(exc: BaseException | None) -> str:
    """A reconcile's outcome as a label: success, retry (kopf runs it again later), stalled
    (it waits for a change to the object) or error (unexpected; kopf retries it)."""
    if exc is None:
        return "success"
    if isinstance(exc, kopf.TemporaryError):
        return "retry"
    if isinstance(exc, kopf.PermanentError):
        return "stalled"
    return "error"


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[None]])


def measured(kind: str) -> Callable[[Handler], Handler]:
    """Count and time every run of a reconcile or delete handler of `kind`, by result
    (services/metrics.py). Goes under kopf's decorators, which then register the wrapper
    under the handler's own name."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(*args: Any, **kwargs: Any) -> None:
            started, failure = time.perf_counter(), None
            try:
                await handler(*args, **kwargs)
            except Exception as exc:
                failure = exc
                raise
            finally:
                seconds = time.perf_counter() - started
                runtime(kwargs["memo"]).metrics.reconciled(kind, result_of(failure), seconds)

        return run  # type: ignore[return-value]

    return wrap


def every_object(kwargs: dict[str, Any]) -> Iterable[Any]:
    """Every parsed Stratus object in kopf's indexes, once each (for the metrics)."""
    for name in ("stratus_hypervisors", "stratus_images", "stratus_networks", "stratus_routers",
                 "stratus_floating_ips", "stratus_security_groups"):  # fmt: skip
        yield from _values(kwargs[name])
    yield from _instances(kwargs["stratus_instances"])
    for name in ("stratus_volumes", "stratus_snapshots"):  # also kept under their UID
        for key, store in kwargs[name].items():
            if isinstance(key, tuple):
                yield from store
    for key, store in kwargs["stratus_ceph_pools"].items():  # also under ("uid", UID)
        if isinstance(key, str):
            yield from store


def runtime(memo: kopf.Memo) -> Runtime:
    found: Runtime = memo["runtime"]
    return found
