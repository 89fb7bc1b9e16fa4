"""VolumeSnapshot handlers: copy the Volume's data on create/resume; remove it on delete."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import VolumeSnapshot
from stratus_operator.handlers import errors
from stratus_operator.handlers.common import SNAPSHOTS, measured, runtime, world
from stratus_operator.services import snapshots
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured


@kopf.on.resume(*SNAPSHOTS)
@kopf.on.create(*SNAPSHOTS)
@measured("VolumeSnapshot")
async def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, snapshot = runtime(memo), VolumeSnapshot.model_validate(dict(body))
    try:
        change = await snapshots.reconcile(snapshot, world(kwargs), rt)
    except Exception as exc:
        failure = snapshots.failed(exc)
        if failure is None:
            raise
        await snapshots.write_status(snapshot, rt, failure)
        raise errors.intent(exc, retry, rt.settings) from None
    await snapshots.write_status(snapshot, rt, change)


@kopf.on.delete(*SNAPSHOTS)
@measured("VolumeSnapshot")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, snapshot = runtime(memo), VolumeSnapshot.model_validate(dict(body))
    try:
        await snapshots.remove(snapshot, world(kwargs), rt)
    except (AgentError, AgentNotConfigured) as exc:
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
