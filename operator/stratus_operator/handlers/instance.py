"""Instance handlers: reconcile on create/update/resume, clean up under the finalizer."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from stratus_api.v1alpha1 import Instance
from stratus_api.validation import problems_of
from stratus_operator.controllers.instance import invalid
from stratus_operator.handlers import errors
from stratus_operator.handlers.common import INSTANCES, measured, runtime, world
from stratus_operator.services import instances, wakeups
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured


@kopf.on.resume(*INSTANCES)
@kopf.on.create(*INSTANCES)
@kopf.on.update(*INSTANCES, field="spec")
@measured("Instance")
async def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    # Status goes through the one status writer, never kopf's patch: agent reports write
    # it too, and the writer orders both.
    rt = runtime(memo)
    try:
        instance = Instance.model_validate(dict(body))
    except ValidationError as exc:
        problems = problems_of(exc)
        await instances.write_body_status(body, rt, invalid(problems))
        raise kopf.PermanentError("; ".join(str(p) for p in problems)) from None
    uid = instance.metadata.uid or ""
    async with rt.lock(uid):  # one at a time with its runs from services/wakeups.py
        error = await wakeups.attempt(instance, world(kwargs), rt)
        if error is not None:
            rt.waiters.forget(uid)  # kopf retries it from here
    if error is None:
        return  # done, or its Network, Image, ... runs it again when it changes
    if instances.failed(error) is None:
        raise error
    raise errors.intent(error, retry, rt.settings) from None


@kopf.on.delete(*INSTANCES)
@measured("Instance")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    # Only the UID and the node are needed: an Instance whose spec cannot be read is
    # deleted like any other.
    rt = runtime(memo)
    node = (body.get("status") or {}).get("node")
    rt.waiters.forget(body.metadata.uid or "")
    try:
        await instances.remove(body.metadata.uid or "", node, world(kwargs), rt)
    except (AgentError, AgentNotConfigured) as exc:
        # The finalizer holds the Instance until its node confirms the guest is gone.
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
