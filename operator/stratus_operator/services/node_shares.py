"""Telling nodes their share of an object and telling nodes that left to forget it: one loop
for every kind sent this way (a Network's node spec, a SecurityGroup's rules).

`told` holds, per node, the JSON it was last told; a node that did not answer holds UNTOLD,
so the next round asks it again (and its warning is logged once per outage, not every
round). A node whose Hypervisor is not Ready is skipped until it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from stratus_api.v1alpha1 import Hypervisor
from stratus_api.v1alpha1.base import ApiModel
from stratus_operator.controllers import conditions
from stratus_operator.services.agent_client import AgentClient, AgentError
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.world import World

log = logging.getLogger(__name__)
UNTOLD = ""  # what a node that did not answer was told: nothing, so it is asked again
S = TypeVar("S", bound=ApiModel)


def ready(hypervisor: Hypervisor) -> bool:
    status = hypervisor.status
    return status is not None and conditions.is_true(status.conditions, conditions.READY)


async def tell_nodes(
    what: str,
    wanted: Mapping[str, tuple[S, str]],
    told: dict[str, str],
    world: World,
    runtime: Runtime,
    *,
    resync: bool,
    send: Callable[[AgentClient, S], Awaitable[object]],
    forget: Callable[[AgentClient], Awaitable[object]],
) -> None:
    """Send each node in `wanted` (node -> (spec, its JSON)) whose share changed, every one
    when `resync`; have each node in `told` but not in `wanted` forget it. `what` names
    the object in warnings."""
    changed = [node for node in wanted if resync or told.get(node) != wanted[node][1]]
    leaving = [node for node in told if node not in wanted]
    await asyncio.gather(
        *(_tell(what, node, *wanted[node], world, runtime, told, send) for node in changed),
        *(_forget(what, node, world, runtime, told, forget) for node in leaving),
    )


async def _tell(
    what: str, node: str, spec: S, text: str, world: World, runtime: Runtime,
    told: dict[str, str], send: Callable[[AgentClient, S], Awaitable[object]],
) -> None:  # fmt: skip
    hypervisor = world.hypervisor(node)
    if hypervisor is None or not ready(hypervisor):
        return  # asked again once it is back; a removed node's guests go with it
    try:
        await send(await runtime.agents.client(hypervisor), spec)
    except (AgentError, AgentNotConfigured) as exc:
        if told.get(node) != UNTOLD:  # said once per outage, not every round
            log.warning("%s: node %s was not told its share (tried again): %s",
                        what, node, exc)  # fmt: skip
        told[node] = UNTOLD
        return
    told[node] = text


async def _forget(
    what: str, node: str, world: World, runtime: Runtime, told: dict[str, str],
    forget: Callable[[AgentClient], Awaitable[object]],
) -> None:  # fmt: skip
    hypervisor = world.hypervisor(node)
    if hypervisor is not None:
        try:
            await forget(await runtime.agents.client(hypervisor))
        except (AgentError, AgentNotConfigured) as exc:
            log.warning("%s: node %s was not told to forget it (tried again): %s",
                        what, node, exc)  # fmt: skip
            return
    told.pop(node, None)
