"""Image handlers: check the source when an Image appears or the operator restarts; on
delete, ask every node to drop it from its cache."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from stratus_api.v1alpha1 import Image
from stratus_operator.controllers import conditions
from stratus_operator.handlers.common import IMAGES, measured, runtime, world
from stratus_operator.services import images
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured

log = logging.getLogger(__name__)


@kopf.on.resume(*IMAGES)
@kopf.on.create(*IMAGES)
@measured("Image")
async def check_source(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    image = Image.model_validate(dict(body))
    rt = runtime(memo)
    try:
        status = await images.check_source(image, rt.settings.images)
    except images.SourceProblem as exc:
        await images.write_status(image, exc.status, rt)
        if exc.permanent:
            raise kopf.PermanentError(str(exc)) from None
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
    await images.write_status(image, status, rt)


@kopf.on.delete(*IMAGES)
@measured("Image")
async def evict_from_nodes(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Evict by reference: each node drops the cached file now, or once no guest uses it.
    A node that does not answer keeps it until its cache budget evicts it."""
    rt, uid = runtime(memo), body.metadata.uid or ""
    rt.status.forget(uid)
    for hypervisor in world(kwargs).hypervisors():
        status = hypervisor.status
        if status is None or not conditions.is_true(status.conditions, conditions.READY):
            continue
        try:
            client = await rt.agents.client(hypervisor)
            await client.evict_image(uid)
        except (AgentError, AgentNotConfigured) as exc:
            log.warning("image %s: node %s did not evict it: %s", body.metadata.name,
                        hypervisor.metadata.name, exc)  # fmt: skip
