"""Hypervisor handlers: a health timer, and a daemon holding the agent's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from stratus_api.guest import GuestEvent
from stratus_api.v1alpha1 import Hypervisor, Instance
from stratus_operator import events, hypervisors, instances
from stratus_operator.agent_client import watch_events
from stratus_operator.handlers.common import HYPERVISORS, runtime, world
from stratus_operator.runtime import AgentNotConfigured, Runtime
from stratus_operator.settings import AgentSettings
from stratus_operator.world import World

log = logging.getLogger(__name__)
HEALTH_INTERVAL = AgentSettings().health_interval_seconds


@kopf.timer(*HYPERVISORS, interval=HEALTH_INTERVAL, initial_delay=0)
async def check_health(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kwargs: Any) -> None:
    """Health, capacity and allocations; and, level-triggered, the node against the
    Instances: guests of no Instance go, Instances missing their guest are dispatched."""
    hypervisor = Hypervisor.model_validate(dict(body))
    rt, view = runtime(memo), world(kwargs)
    status, inventory = await hypervisors.health(hypervisor, view, rt)
    patch.status.update(status.to_wire())
    before = hypervisor.status.conditions if hypervisor.status else []
    ref = events.involved("Hypervisor", None, hypervisor.metadata.name or "",
                          hypervisor.metadata.uid or "")  # fmt: skip
    await rt.events.transition(ref, before, status.conditions)
    if inventory is not None and not hypervisor.metadata.deletion_timestamp:
        name = hypervisor.metadata.name or ""
        client = await rt.agents.client(hypervisor)
        for instance in await instances.resync(name, inventory, client, view, rt):
            await _redispatch(instance, view, rt)


@kopf.daemon(*HYPERVISORS, cancellation_timeout=10)
async def follow_agent(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Hold the agent's event stream; after every (re)connection, resync the whole node."""
    rt, view = runtime(memo), world(kwargs)
    name = body["metadata"]["name"]
    stop = asyncio.Event()
    stopper = asyncio.create_task(_set_when_stopped(stopped, stop))
    try:
        while not stop.is_set():
            hypervisor = Hypervisor.model_validate(dict(body))
            try:
                client = await rt.agents.client(hypervisor)
            except AgentNotConfigured as exc:
                log.warning("hypervisor %s: %s", name, exc)
                await _sleep(stop, rt.settings.agents.health_interval_seconds)
                continue

            async def on_connect() -> None:
                inventory = await client.inventory()  # noqa: B023 - used within the iteration
                missing = await instances.resync(name, inventory, client, view, rt)  # noqa: B023
                log.info(
                    "hypervisor %s: connected; %d guests on the node, %d to dispatch again",
                    name, len(inventory.guests), len(missing),
                )  # fmt: skip
                for instance in missing:
                    await _redispatch(instance, view, rt)

            async def on_event(event: GuestEvent) -> None:
                if event.guest is not None:
                    await instances.apply_report(event.guest, view, rt)

            await watch_events(
                client, on_connect, on_event, stop,
                idle_timeout=rt.settings.agents.event_idle_timeout_seconds,
            )  # fmt: skip
    finally:
        stopper.cancel()
        await rt.agents.forget(name)


async def _redispatch(instance: Instance, view: World, rt: Runtime) -> None:
    """A guest placed on this node is missing there (node wiped, agent state lost): ensure it
    again and record what happened."""
    if instance.metadata.deletion_timestamp:
        return
    try:
        change = await instances.reconcile(instance, view, rt)
    except Exception as exc:
        failure = instances.failed(exc)
        if failure is None:
            log.exception("instance %s: dispatch after resync failed", instance.metadata.name)
            return
        change = failure
    await instances.write_status(instances.InstanceRef.of(instance), rt, change)


async def _set_when_stopped(stopped: kopf.DaemonStopped, stop: asyncio.Event) -> None:
    await stopped.wait()
    stop.set()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
