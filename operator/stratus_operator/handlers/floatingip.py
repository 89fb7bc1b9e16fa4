"""FloatingIP handlers: hold and map it on create/update/resume, follow its Instance and
Routers (a daemon per FloatingIP), unmap it and give the address back under the
finalizer."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from stratus_api.v1alpha1 import FloatingIP
from stratus_operator.handlers import errors
from stratus_operator.handlers.common import FLOATING_IPS, measured, runtime, world
from stratus_operator.services import floating_ips
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


async def _reconcile(floating: FloatingIP, view: World, rt: Runtime) -> None:
    """Map it; a failure is written to status and raised."""
    try:
        change = await floating_ips.reconcile(floating, view, rt)
    except Exception as exc:
        failure = floating_ips.failed(exc, floating, view, rt)
        if failure is not None:
            await floating_ips.write_status(floating, rt, failure)
        raise
    await floating_ips.write_status(floating, rt, change)


@kopf.on.resume(*FLOATING_IPS)
@kopf.on.create(*FLOATING_IPS)
@kopf.on.update(*FLOATING_IPS, field="spec")
@measured("FloatingIP")
async def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt = runtime(memo)
    try:
        await _reconcile(FloatingIP.model_validate(dict(body)), world(kwargs), rt)
    except Exception as exc:
        raise errors.intent(exc, retry, rt.settings) from None


@kopf.daemon(*FLOATING_IPS, cancellation_timeout=10)
async def follow(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """A FloatingIP is mapped again when its Instance gets (or loses) its address, or a
    Router that could map it comes, goes, moves or turns Ready, within a health interval."""
    rt, view = runtime(memo), world(kwargs)
    seen = floating_ips.inputs(FloatingIP.model_validate(dict(body)), view, rt)
    while not stopped:
        await stopped.wait(rt.settings.agents.health_interval_seconds)
        floating = FloatingIP.model_validate(dict(body))
        now = floating_ips.inputs(floating, view, rt)
        changed, seen = now != seen, now
        if stopped or floating.metadata.deletion_timestamp or not changed:
            continue
        try:
            await _reconcile(floating, view, rt)
        except Exception as exc:  # written to status when it is ours; tried next round
            log.info("floatingip %s/%s not mapped yet: %s", floating.metadata.namespace,
                     floating.metadata.name, exc)  # fmt: skip


@kopf.on.delete(*FLOATING_IPS)
@measured("FloatingIP")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt = runtime(memo)
    try:
        await floating_ips.remove(FloatingIP.model_validate(dict(body)), world(kwargs), rt)
    except (AgentError, AgentNotConfigured) as exc:
        # The finalizer holds the FloatingIP until its Router's node has let it go.
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
