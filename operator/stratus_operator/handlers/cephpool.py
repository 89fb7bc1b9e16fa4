"""CephPool handlers: Ready once the operator can read its key."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import CephPool
from stratus_api.v1alpha1.cephpool import CephPoolStatus
from stratus_operator.controllers.volume import VolumeProblem
from stratus_operator.handlers.common import CEPH_POOLS, measured, runtime, world
from stratus_operator.services import ceph
from stratus_operator.services.status import ObjectRef


@kopf.on.resume(*CEPH_POOLS)
@kopf.on.create(*CEPH_POOLS)
@kopf.on.update(*CEPH_POOLS, field="spec")
@measured("CephPool")
async def check(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    rt, pool = runtime(memo), CephPool.model_validate(dict(body))
    generation = pool.metadata.generation or 0
    try:
        change = await ceph.check(pool, rt)
    except VolumeProblem as problem:
        await rt.status.write(ObjectRef.of(pool), pool.status, generation,
                              ceph.not_ready(problem), CephPoolStatus)  # fmt: skip
        raise kopf.TemporaryError(str(problem), delay=rt.settings.retries.backoff(retry)) from None
    await rt.status.write(ObjectRef.of(pool), pool.status, generation, change, CephPoolStatus)


@kopf.on.delete(*CEPH_POOLS)
@measured("CephPool")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, pool = runtime(memo), CephPool.model_validate(dict(body))
    try:
        await ceph.remove(pool, world(kwargs), rt)
    except ceph.PoolInUse as exc:
        await rt.status.write(ObjectRef.of(pool), pool.status, pool.metadata.generation or 0,
                              ceph.deleting(exc), CephPoolStatus)  # fmt: skip
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
