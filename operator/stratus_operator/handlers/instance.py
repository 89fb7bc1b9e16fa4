"""Instance handlers: reconcile on create/update/resume, clean up under the finalizer."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import Instance
from stratus_operator import instances
from stratus_operator.agent_client import AgentError
from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.scheduler import Unschedulable
from stratus_operator.handlers.common import INSTANCES, runtime, world
from stratus_operator.runtime import AgentNotConfigured

AGENT_RETRY_SECONDS = 10.0
DEPENDENCY_RETRY_SECONDS = 15.0


@kopf.on.resume(*INSTANCES)
@kopf.on.create(*INSTANCES)
@kopf.on.update(*INSTANCES, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # Status is written through instances.write_status (read, change, write at that
    # version), never kopf's patch: agent reports write it too, concurrently.
    instance = Instance.model_validate(dict(body))
    rt = runtime(memo)
    try:
        change = await instances.reconcile(instance, world(kwargs), rt)
    except InstanceProblem as problem:
        await instances.write_status(instance, rt, instances.with_problem(problem))
        if problem.retry:
            raise kopf.TemporaryError(str(problem), delay=DEPENDENCY_RETRY_SECONDS) from None
        raise kopf.PermanentError(str(problem)) from None
    except Unschedulable as exc:
        await instances.write_status(instance, rt, instances.unschedulable(str(exc)))
        raise kopf.TemporaryError(str(exc), delay=rt.settings.scheduling.retry_seconds) from None
    except (AgentError, AgentNotConfigured) as exc:
        raise kopf.TemporaryError(str(exc), delay=AGENT_RETRY_SECONDS) from None
    await instances.write_status(instance, rt, change)


@kopf.on.delete(*INSTANCES)
async def delete(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    instance = Instance.model_validate(dict(body))
    try:
        await instances.remove(instance, world(kwargs), runtime(memo))
    except (AgentError, AgentNotConfigured) as exc:
        # The finalizer holds the Instance until its node confirms the guest is gone.
        raise kopf.TemporaryError(str(exc), delay=AGENT_RETRY_SECONDS) from None
