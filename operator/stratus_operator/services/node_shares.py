"""Telling nodes their share of an object and telling nodes that left to forget it: one loop
for every kind sent this way (a Network's node spec, a SecurityGroup's rules).

`told` holds, per node, what it was last told (runtime.Told); a node that did not answer
holds None, so the next round tells it again (and its warning is logged once per outage,
not every round). A node told before hears only what changed since (a PATCH with the
change to the revision it holds; stratus_api.spec_changes), or the whole spec when more
changed or it holds another revision. A node whose Hypervisor is not Ready is skipped until
it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from stratus_api.network_wire import NodeNetworkChange, NodeNetworkSpec
from stratus_api.security_group_wire import NodeSecurityGroupChange, NodeSecurityGroupSpec
from stratus_api.v1alpha1 import Hypervisor
from stratus_operator.controllers import conditions
from stratus_operator.services.agent_client import AgentClient, AgentError
from stratus_operator.services.runtime import AgentNotConfigured, Runtime, Told
from stratus_operator.services.world import World

log = logging.getLogger(__name__)
S = TypeVar("S", NodeNetworkSpec, NodeSecurityGroupSpec)
C = TypeVar("C", NodeNetworkChange, NodeSecurityGroupChange)


@dataclass(frozen=True)
class Wire(Generic[S, C]):
    """How one kind of node spec goes to a node: whole, as a change, and forgotten."""

    send: Callable[[AgentClient, S], Awaitable[object]]
    change: Callable[[AgentClient, C], Awaitable[bool]]  # False: the node holds another
    between: Callable[[S, S], C | None]  # None: only the whole spec says what changed
    forget: Callable[[AgentClient, str], Awaitable[object]]


NETWORKS = Wire(
    AgentClient.ensure_network, AgentClient.change_network, NodeNetworkChange.of,
    AgentClient.forget_network,
)  # fmt: skip
SECURITY_GROUPS = Wire(
    AgentClient.ensure_security_group, AgentClient.change_security_group,
    NodeSecurityGroupChange.of, AgentClient.forget_security_group,
)  # fmt: skip


def ready(hypervisor: Hypervisor) -> bool:
    status = hypervisor.status
    return status is not None and conditions.is_true(status.conditions, conditions.READY)


def holds(told: Mapping[str, Told[S] | None], node: str, spec: S) -> bool:
    """Whether `node` was told `spec` (this very one, as built) and answered."""
    last = told.get(node)
    return last is not None and last.built is spec


async def tell_nodes(
    what: str,
    uid: str,
    wanted: Mapping[str, S],
    told: dict[str, Told[S] | None],
    world: World,
    runtime: Runtime,
    wire: Wire[S, C],
    *,
    resync: bool,
) -> None:
    """Tell each node in `wanted` (node -> spec) whose share changed, every one when
    `resync` (a node that lost what it held then hears it whole); have each node in `told`
    but not in `wanted` forget it. `what` names the object in warnings."""
    changed = [node for node in wanted if resync or not holds(told, node, wanted[node])]
    leaving = [node for node in told if node not in wanted]
    await asyncio.gather(
        *(_tell(what, node, wanted[node], world, runtime, told, wire, resync) for node in changed),
        *(_forget(what, uid, node, world, runtime, told, wire) for node in leaving),
    )


async def _tell(
    what: str, node: str, built: S, world: World, runtime: Runtime,
    told: dict[str, Told[S] | None], wire: Wire[S, C], resync: bool,
) -> None:  # fmt: skip
    hypervisor = world.hypervisor(node)
    if hypervisor is None or not ready(hypervisor):
        return  # asked again once it is back; a removed node's guests go with it
    last = told.get(node)
    stamped = built.model_copy(update={"revision": runtime.revisions()})
    change = wire.between(last.sent, stamped) if last is not None else None
    if change is not None and change.empty and not resync:
        told[node] = Told(built, last.sent)  # type: ignore[union-attr]  # built again, same
        return
    try:
        client = await runtime.agents.client(hypervisor)
        if change is None or not await wire.change(client, change):
            await wire.send(client, stamped)
    except (AgentError, AgentNotConfigured) as exc:
        if node not in told or last is not None:  # said once per outage, not every round
            log.warning("%s: node %s was not told its share (tried again): %s",
                        what, node, exc)  # fmt: skip
        told[node] = None
        return
    told[node] = Told(built, stamped)


async def _forget(
    what: str, uid: str, node: str, world: World, runtime: Runtime,
    told: dict[str, Told[S] | None], wire: Wire[S, C],
) -> None:  # fmt: skip
    hypervisor = world.hypervisor(node)
    if hypervisor is not None:
        try:
            await wire.forget(await runtime.agents.client(hypervisor), uid)
        except (AgentError, AgentNotConfigured) as exc:
            log.warning("%s: node %s was not told to forget it (tried again): %s",
                        what, node, exc)  # fmt: skip
            return
    told.pop(node, None)
