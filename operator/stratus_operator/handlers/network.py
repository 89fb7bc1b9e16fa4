"""Network handlers: give the Network its segment and say it is ready for NICs; on delete,
wait while Instances use it, then free its segment."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import kopf

from stratus_api.v1alpha1 import Network
from stratus_operator.handlers.common import NETWORKS, measured, runtime, world
from stratus_operator.services import networks, node_networks

log = logging.getLogger(__name__)


@kopf.on.resume(*NETWORKS)
@kopf.on.create(*NETWORKS)
@measured("Network")
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
async def keep_nodes_and_counts(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """The hosting nodes told their peers (node_networks.py) and status.allocated kept true,
    one write per change at most every count interval."""
    rt, view = runtime(memo), world(kwargs)
    timing = rt.settings.scheduling
    loop = asyncio.get_running_loop()
    counted_at = resynced_at = -math.inf
    while not stopped:
        network, now = Network.model_validate(dict(body)), loop.time()
        resync = now - resynced_at >= timing.network_resync_seconds
        try:
            await node_networks.publish(network, view, rt, resync=resync)
            resynced_at = now if resync else resynced_at
        except Exception:  # one failed round must not end the daemon for good
            log.exception("network %s: telling its nodes failed", body.metadata.name)
        if now - counted_at >= timing.network_count_seconds:
            counted_at = now
            try:
                await networks.count(network, view, rt)
            except Exception:
                log.exception("network %s: counting its addresses failed", body.metadata.name)
        await stopped.wait(timing.network_peers_seconds)


@kopf.on.delete(*NETWORKS)
@measured("Network")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, network = runtime(memo), Network.model_validate(dict(body))
    try:
        await networks.remove(network, world(kwargs), rt)
    except networks.NetworkInUse as exc:
        await networks.write_status(network, rt, networks.waiting(exc))
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
