"""In-memory copies of every Stratus object, kept by kopf from its watches. kopf fills them
completely before the first handler runs, so handlers read them instead of the API."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from pydantic import ValidationError

from stratus_api.v1alpha1 import Hypervisor, Image, Instance, InstanceType, Network, Resource
from stratus_operator.handlers.common import (
    HYPERVISORS,
    IMAGES,
    INSTANCE_TYPES,
    INSTANCES,
    NETWORKS,
)

log = logging.getLogger(__name__)


def _parsed(model: type[Resource], body: kopf.Body) -> dict[str, Any]:
    try:
        obj = model.model_validate(dict(body))
    except ValidationError as exc:  # the CRD schema should make this impossible
        meta = body.get("metadata") or {}
        where = f"{meta.get('namespace') or ''}/{meta.get('name')}".lstrip("/")
        log.warning("%s %s cannot be read (%d problems); left out", model.crd.kind, where,
                    exc.error_count())  # fmt: skip
        return {}
    return {obj.metadata.uid or "": obj}


@kopf.index(*HYPERVISORS)
def stratus_hypervisors(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _parsed(Hypervisor, body)


@kopf.index(*INSTANCE_TYPES)
def stratus_instance_types(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _parsed(InstanceType, body)


@kopf.index(*IMAGES)
def stratus_images(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _parsed(Image, body)


@kopf.index(*NETWORKS)
def stratus_networks(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _parsed(Network, body)


@kopf.index(*INSTANCES)
def stratus_instances(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _parsed(Instance, body)


@kopf.index(*INSTANCES)
def stratus_instance_uids(body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Every Instance's UID, parsed or not: a guest whose Instance exists is never garbage,
    even when its spec is one the models refuse."""
    return {body.metadata.uid: True}
