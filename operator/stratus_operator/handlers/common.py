"""What every handler module shares: resource names, the World from kopf's indexes, the
Runtime from the memo."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import kopf

from stratus_api.v1alpha1 import GROUP, VERSION
from stratus_operator.runtime import Runtime
from stratus_operator.world import World

T = TypeVar("T")

HYPERVISORS = (GROUP, VERSION, "hypervisors")
INSTANCES = (GROUP, VERSION, "instances")
IMAGES = (GROUP, VERSION, "images")
NETWORKS = (GROUP, VERSION, "networks")
INSTANCE_TYPES = (GROUP, VERSION, "instancetypes")


def _values(index: kopf.Index[Any, T]) -> Iterable[T]:
    for store in index.values():
        yield from store


def _first(index: kopf.Index[Any, T], key: Any) -> T | None:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def world(kwargs: dict[str, Any]) -> World:
    """The World over the live indexes kopf passes to every handler (see indexes.py)."""
    instances, uids = kwargs["stratus_instances"], kwargs["stratus_instance_uids"]
    return World(
        hypervisors=lambda: _values(kwargs["stratus_hypervisors"]),
        instance_types=lambda: _values(kwargs["stratus_instance_types"]),
        images=lambda: _values(kwargs["stratus_images"]),
        networks=lambda: _values(kwargs["stratus_networks"]),
        instances=lambda: _values(instances),
        instance_exists=lambda uid: uid in uids,
        instance_by_uid=lambda uid: _first(instances, uid),
    )


def runtime(memo: kopf.Memo) -> Runtime:
    found: Runtime = memo["runtime"]
    return found
