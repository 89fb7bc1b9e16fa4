"""Network handlers: give the Network its segment and say it is ready for NICs; on delete,
wait while Instances use it, then free its segment."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import Network
from stratus_operator.handlers.common import NETWORKS, runtime, world
from stratus_operator.services import networks


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


@kopf.on.delete(*NETWORKS)
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt, network = runtime(memo), Network.model_validate(dict(body))
    try:
        await networks.remove(network, world(kwargs), rt)
    except networks.NetworkInUse as exc:
        await networks.write_status(network, rt, networks.waiting(exc))
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
