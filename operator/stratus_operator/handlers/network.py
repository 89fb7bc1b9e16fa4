"""Network handlers: give the Network its segment and say it is ready for NICs; on delete,
wait while Instances use it, then free its segment."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from stratus_api.v1alpha1 import Network
from stratus_operator.handlers.common import NETWORKS, runtime, world
from stratus_operator.services import networks

log = logging.getLogger(__name__)


@kopf.on.resume(*NETWORKS)
@kopf.on.create(*NETWORKS)
async def settle(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, network = runtime(memo), Network.model_validate(dict(body))
    try:
        change = await networks.settle(network, world(kwargs), rt)
    except networks.SegmentUnavailable as exc:
        # Stalled: the user picks another segment; retried in case the holder goes.
        await networks.write_status(network, rt, networks.unavailable(exc))
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
    await networks.write_status(network, rt, change)


@kopf.daemon(*NETWORKS, cancellation_timeout=10)
async def count_addresses(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """status.allocated kept true, one write per change at most every interval."""
    rt, view = runtime(memo), world(kwargs)
    while not stopped:
        try:
            await networks.count(Network.model_validate(dict(body)), view, rt)
        except Exception:  # one failed round must not end the counting for good
            log.exception("network %s: counting its addresses failed", body.metadata.name)
        await stopped.wait(rt.settings.scheduling.network_count_seconds)


@kopf.on.delete(*NETWORKS)
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, network = runtime(memo), Network.model_validate(dict(body))
    try:
        await networks.remove(network, world(kwargs), rt)
    except networks.NetworkInUse as exc:
        await networks.write_status(network, rt, networks.waiting(exc))
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
