"""Hypervisor handlers: a daemon checking the agent's health, and one holding its event
stream. Both are daemons, so their pace comes from the settings at run time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from stratus_api.guest import GuestEvent
from stratus_api.v1alpha1 import Hypervisor
from stratus_operator.handlers.common import HYPERVISORS, runtime, world
from stratus_operator.services import hypervisors, instances, snapshots, volumes
from stratus_operator.services.agent_client import AgentLink, watch_events
from stratus_operator.services.runtime import AgentNotConfigured

log = logging.getLogger(__name__)


@kopf.daemon(*HYPERVISORS, cancellation_timeout=10)
async def check_health(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Health, capacity and allocations every health interval; and, level-triggered, the
    node against the Instances."""
    rt, view = runtime(memo), world(kwargs)
    while not stopped:
        try:
            await hypervisors.check(Hypervisor.model_validate(dict(body)), view, rt)
        except Exception:  # one failed round must not end the checks for good
            log.exception("hypervisor %s: health check failed", body.metadata.name)
        await stopped.wait(rt.settings.agents.health_interval_seconds)


@kopf.daemon(*HYPERVISORS, cancellation_timeout=10)
async def follow_agent(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Hold the agent's event stream; after every (re)connection, resync the whole node."""
    rt, view = runtime(memo), world(kwargs)
    name = body["metadata"]["name"]
    link = rt.metrics.state.links[name] = AgentLink()
    stop = asyncio.Event()
    stopper = asyncio.create_task(_set_when_stopped(stopped, stop))
    try:
        while not stopped:
            try:
                client = await rt.agents.client(Hypervisor.model_validate(dict(body)))
            except AgentNotConfigured as exc:
                log.warning("hypervisor %s: %s", name, exc)
                await stopped.wait(rt.settings.agents.health_interval_seconds)
                continue

            async def on_connect() -> None:
                placed = instances.placed_on(name, view)
                inventory = await client.inventory()  # noqa: B023 - used within the iteration
                log.info("hypervisor %s: connected; %d guests on the node", name,
                         len(inventory.guests))  # fmt: skip
                await hypervisors.resync(name, placed, inventory, client, view, rt)  # noqa: B023

            async def on_event(event: GuestEvent) -> None:
                if event.guest is not None:
                    await instances.apply_report(event.guest, view, rt)
                if event.volume is not None:
                    await volumes.apply_report(event.volume, name, view, rt)
                if event.snapshot is not None:
                    await snapshots.apply_report(event.snapshot, name, view, rt)

            await watch_events(
                client, on_connect, on_event, stop,
                backoff=rt.settings.agents.watch_backoff_seconds,
                idle_timeout=rt.settings.agents.event_idle_timeout_seconds, link=link,
            )  # fmt: skip
    finally:
        stopper.cancel()
        if rt.metrics.state.links.get(name) is link:
            del rt.metrics.state.links[name]
        await rt.agents.forget(name)


async def _set_when_stopped(stopped: kopf.DaemonStopped, stop: asyncio.Event) -> None:
    await stopped.wait()
    stop.set()
