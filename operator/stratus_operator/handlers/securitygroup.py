"""SecurityGroup handlers: a daemon per group keeps the nodes of its NICs told its rules
(and its status's counts true), and a rule change is sent at once; delete waits under the
finalizer while NICs are in it, then has every node forget it."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import kopf

from stratus_api.v1alpha1 import SecurityGroup
from stratus_operator.handlers.common import SECURITY_GROUPS, measured, runtime, world
from stratus_operator.services import security_groups

log = logging.getLogger(__name__)


@kopf.daemon(*SECURITY_GROUPS, cancellation_timeout=10)
async def keep_nodes(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Rule changes, NICs joining or leaving and remote groups' members reach the nodes
    within one peers interval: the group's node spec is computed again each round and sent
    where it changed."""
    rt, view = runtime(memo), world(kwargs)
    timing = rt.settings.scheduling
    loop = asyncio.get_running_loop()
    resynced_at = -math.inf
    while not stopped:
        group, now = SecurityGroup.model_validate(dict(body)), loop.time()
        resync = now - resynced_at >= timing.network_resync_seconds
        if not group.metadata.deletion_timestamp:
            try:
                await security_groups.publish(group, view, rt, resync=resync)
                resynced_at = now if resync else resynced_at
            except Exception:  # one failed round must not end the daemon for good
                log.exception("security group %s/%s: telling its nodes failed",
                              group.metadata.namespace, group.metadata.name)  # fmt: skip
        await stopped.wait(timing.network_peers_seconds)


@kopf.on.update(*SECURITY_GROUPS, field="spec")
@measured("SecurityGroup")
async def rules_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A rule change goes out now, not at the daemon's next round."""
    rt, group = runtime(memo), SecurityGroup.model_validate(dict(body))
    try:
        await security_groups.publish(group, world(kwargs), rt, resync=False)
    except Exception:  # the daemon sends it at its next round all the same
        log.exception("security group %s/%s: telling its nodes failed",
                      group.metadata.namespace, group.metadata.name)  # fmt: skip


@kopf.on.delete(*SECURITY_GROUPS)
@measured("SecurityGroup")
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    rt = runtime(memo)
    try:
        await security_groups.remove(SecurityGroup.model_validate(dict(body)), world(kwargs), rt)
    except security_groups.SecurityGroupInUse as exc:
        raise kopf.TemporaryError(str(exc), delay=rt.settings.retries.backoff(retry)) from None
