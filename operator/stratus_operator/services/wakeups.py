"""Instances waiting on a dependency, run again the moment it changes.

An Instance whose Network, Image, Volume or InstanceType is missing or not ready goes into
the waiter index (controllers/waiters.py) instead of kopf's retry backoff, which grows to
minutes. The dependency's watch events (handlers/wakeups.py) call `wake`, which runs the
reconcile of its waiters at once, each in a task of its own; a sweeper runs those whose
safety retry is due, should an event be missed. A run that fails for another reason (an
agent down) stays here, retried with the backoff kopf would have used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from stratus_api.v1alpha1 import Instance
from stratus_operator.controllers import waiters
from stratus_operator.services import instances, volumes
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)


def hold(instance: Instance, exc: Exception, since: int, world: World, runtime: Runtime) -> bool:
    """After a failed reconcile of `instance` that began at `since` (Waiters.tick): True
    when it waits on a dependency, which then runs it again; False when it is not waiting
    (the caller retries it, or forgets it)."""
    uid = instance.metadata.uid or ""
    on = instances.waits_on(exc)
    if on is None:
        return False
    due = _now() + runtime.settings.retries.waiting_seconds
    if not runtime.waiters.wait(uid, on, due, since):
        # The dependency changed while the reconcile read the old state: again, now.
        _spawn(runtime, rerun(uid, world, runtime), f"instance {instance.metadata.name}")
    _sweep_from(world, runtime)
    return True


def wake(
    dependency: waiters.Dependency, body: Mapping[str, Any], world: World, rt: Runtime
) -> None:
    """A watch event of `dependency`: run its waiters again if this state may let them go."""
    if not waiters.may_progress(dependency[0], body):
        return
    for uid in rt.waiters.wake(dependency):
        _spawn(rt, rerun(uid, world, rt), f"instance {uid} (woken by {'/'.join(dependency)})")


async def attempt(instance: Instance, world: World, runtime: Runtime) -> Exception | None:
    """One reconcile of `instance`, its status written, with the Instance's lock held by
    the caller: None when it is done or now waits on a dependency (which runs it again);
    else the error, for the caller to retry. Unknown errors write no status."""
    ref, generation = ObjectRef.of(instance), instance.metadata.generation or 0
    since = runtime.waiters.tick()
    try:
        change = await instances.reconcile(instance, world, runtime)
    except Exception as exc:
        failure = instances.failed(exc)
        if failure is not None:
            await volumes.tell_volume(instance, exc, runtime)
            await instances.write_status(ref, instance.status, generation, runtime, failure)
            if hold(instance, exc, since, world, runtime):
                return None
        return exc
    runtime.waiters.forget(instance.metadata.uid or "")
    await instances.write_status(ref, instance.status, generation, runtime, change)
    return None


async def rerun(uid: str, world: World, runtime: Runtime) -> None:
    """Reconcile a waiting Instance again, as its kopf handler would, and write its status."""
    async with runtime.lock(uid):
        instance = world.instance(uid)
        if instance is None or instance.metadata.deletion_timestamp:
            runtime.waiters.forget(uid)
            return
        started = time.perf_counter()
        exc = await attempt(instance, world, runtime)
        seconds = time.perf_counter() - started
        result = "success" if exc is None else "retry" if instances.failed(exc) else "error"
        runtime.metrics.reconciled(instance.crd.kind, result, seconds)
        if exc is None:
            return
        if instances.failed(exc) is None:
            log.error("instance %s: reconcile failed", instance.metadata.name, exc_info=exc)
        attempt_count = runtime.waiters.attempts(uid)
        delay = instances.retry_delay(exc, attempt_count, runtime.settings)
        if delay is not None:  # else only an edit helps, and kopf runs that
            runtime.waiters.retry(uid, _now() + delay)
            _sweep_from(world, runtime)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _spawn(runtime: Runtime, work: Coroutine[Any, Any, None], what: str) -> None:
    async def guarded() -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # a task's failure must never reach the event loop's handler
            log.exception("%s: running it again failed", what)

    task = asyncio.get_running_loop().create_task(guarded())
    runtime.wakeups.add(task)
    task.add_done_callback(runtime.wakeups.discard)


def _sweep_from(world: World, runtime: Runtime) -> None:
    """Start the sweeper of due safety retries once (the World is live: kopf's indexes)."""
    if runtime.waiting_sweeper is None or runtime.waiting_sweeper.done():
        runtime.waiting_sweeper = asyncio.get_running_loop().create_task(sweep(world, runtime))


async def sweep(world: World, runtime: Runtime) -> None:
    tick = runtime.settings.retries.waiting_tick_seconds
    while True:
        await asyncio.sleep(tick)
        for uid in runtime.waiters.due(_now()):
            _spawn(runtime, rerun(uid, world, runtime), f"instance {uid} (safety retry)")


async def stop(runtime: Runtime) -> None:
    """Cancel the sweeper and the runs in flight (the operator stops)."""
    tasks = [*runtime.wakeups, *([runtime.waiting_sweeper] if runtime.waiting_sweeper else [])]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
