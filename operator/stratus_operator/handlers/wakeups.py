"""Watch events of what Instances wait on: each may let its waiting Instances go on at once
(services/wakeups.py), rather than at their next retry."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_operator.handlers.common import (
    IMAGES,
    INSTANCE_TYPES,
    NETWORKS,
    VOLUMES,
    runtime,
    world,
)
from stratus_operator.services import wakeups


@kopf.on.event(*NETWORKS)
@kopf.on.event(*IMAGES)
@kopf.on.event(*VOLUMES)
@kopf.on.event(*INSTANCE_TYPES)
async def wake_waiters(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    rt = runtime(memo)
    dependency = (body.get("kind") or "", body.metadata.namespace or "", body.metadata.name or "")
    if event.get("type") == "DELETED":
        rt.waiters.gone(dependency)
        return
    wakeups.wake(dependency, body, world(kwargs), rt)


@kopf.on.cleanup()
async def stop_wakeups(memo: kopf.Memo, **_: Any) -> None:
    await wakeups.stop(runtime(memo))
