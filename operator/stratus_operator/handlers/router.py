"""Router handlers: build it on its node on create/update/resume, move it when its node is
lost (a daemon per Router), remove it under the finalizer."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from stratus_api.v1alpha1 import Router
from stratus_operator.handlers import errors
from stratus_operator.handlers.common import ROUTERS, measured, runtime, world
from stratus_operator.services import routers
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


async def _reconcile(router: Router, view: World, rt: Runtime) -> None:
    """Build it; a failure is written to status and raised."""
    try:
        change = await routers.reconcile(router, view, rt)
    except Exception as exc:
        failure = routers.failed(exc)
        if failure is not None:
            await routers.write_status(router, rt, failure)
        raise
    await routers.write_status(router, rt, change)


@kopf.on.resume(*ROUTERS)
@kopf.on.create(*ROUTERS)
@kopf.on.update(*ROUTERS, field="spec")
@measured("Router")
async def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt = runtime(memo)
    try:
        await _reconcile(Router.model_validate(dict(body)), world(kwargs), rt)
    except Exception as exc:
        raise errors.intent(exc, retry, rt.settings) from None


@kopf.daemon(*ROUTERS, cancellation_timeout=10)
async def follow_node(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """A Router whose node is lost (NotReady or gone) moves to another, within a health
    interval of the Hypervisor saying so; one whose Networks changed (a subnet, a gateway,
    a Network made or deleted) is built again."""
    rt, view = runtime(memo), world(kwargs)
    seen = routers.inputs(Router.model_validate(dict(body)), view)
    while not stopped:
        await stopped.wait(rt.settings.agents.health_interval_seconds)
        router = Router.model_validate(dict(body))
        now = routers.inputs(router, view)
        changed, seen = now != seen, now
        if stopped or router.metadata.deletion_timestamp:
            continue
        if not changed and not routers.node_lost(router, view, rt):
            continue
        try:
            await _reconcile(router, view, rt)
        except Exception as exc:  # written to status when it is ours; tried next round
            log.warning("router %s/%s could not move yet: %s", router.metadata.namespace,
                        router.metadata.name, exc)  # fmt: skip


@kopf.on.delete(*ROUTERS)
@measured("Router")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt = runtime(memo)
    try:
        await routers.remove(Router.model_validate(dict(body)), world(kwargs), rt)
    except (AgentError, AgentNotConfigured) as exc:
        # The finalizer holds the Router until its node confirms it is gone.
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
