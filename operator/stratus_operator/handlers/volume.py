"""Volume handlers: make or grow the data on create/update/resume; on delete, wait while an
Instance uses it, then remove it from its node."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import Volume
from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.volume import deleting
from stratus_operator.handlers import errors
from stratus_operator.handlers.common import VOLUMES, measured, runtime, world
from stratus_operator.services import volumes
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured


@kopf.on.resume(*VOLUMES)
@kopf.on.create(*VOLUMES)
@kopf.on.update(*VOLUMES, field="spec")
@measured("Volume")
async def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, volume = runtime(memo), Volume.model_validate(dict(body))
    try:
        change = await volumes.reconcile(volume, world(kwargs), rt)
    except Exception as exc:
        failure = volumes.failed(exc)
        if failure is None:
            raise
        await volumes.write_status(volume, rt, failure)
        raise errors.intent(exc, retry, rt.settings) from None
    await volumes.write_status(volume, rt, change)


@kopf.on.delete(*VOLUMES)
@measured("Volume")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, volume = runtime(memo), Volume.model_validate(dict(body))
    try:
        await volumes.remove(volume, world(kwargs), rt)
    except volumes.DeleteWaits as exc:
        # Never pull a disk from under a guest, nor the data from under its snapshots: the
        # finalizer holds until they are gone.
        await volumes.write_status(volume, rt, deleting(exc.reason, str(exc)))
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
    except (AgentError, AgentNotConfigured, InstanceProblem) as exc:
        # InstanceProblem: no Ready node to reach a shared Volume's pool through, yet.
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
