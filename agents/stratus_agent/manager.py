"""Brings guests to their spec: node-side resources first, then the compute driver.

PUT returns at once; the work goes on in one task per guest, which always converges to the
newest spec it was given. Results reach the operator through the event stream.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Protocol

from stratus_agent.compute.base import ComputeDriver
from stratus_agent.compute.domain_builder import NodeFacts
from stratus_agent.errors import ProvisioningError
from stratus_agent.events import EventHub
from stratus_api.guest import GuestEvent, GuestSpec, GuestState, GuestStatus, PowerState

log = logging.getLogger(__name__)


class Provisioner(Protocol):
    """Makes what a guest needs on the node besides the guest itself."""

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        """Image in the cache, root disk, seed ISO, bridge; idempotent."""

    async def cleanup(self, uid: str) -> None:
        """Remove everything `prepare` made for the guest; idempotent."""


class StaleSpecError(Exception):
    """A spec older than one already accepted: applying it would roll the guest back."""


def _wanted(spec: GuestSpec) -> GuestState:
    return GuestState.RUNNING if spec.power is PowerState.RUNNING else GuestState.STOPPED


class GuestManager:
    def __init__(self, compute: ComputeDriver, provisioner: Provisioner, hub: EventHub) -> None:
        self.compute = compute
        self._provisioner = provisioner
        self._hub = hub
        self._desired: dict[str, GuestSpec] = {}
        self._applied: dict[str, GuestSpec] = {}
        self._status: dict[str, GuestStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        await self.compute.start(self._record)
        for status in await self.compute.list():
            self._status[status.uid] = status

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.compute.stop()

    def _record(self, status: GuestStatus) -> None:
        if status.generation is None and status.uid in self._applied:
            status = status.model_copy(update={"generation": self._applied[status.uid].generation})
        if self._status.get(status.uid) == status:
            return  # the driver and the converge loop may both report the same change
        self._status[status.uid] = status
        if status.state is GuestState.MISSING:
            self._status.pop(status.uid, None)
        self._hub.publish(
            GuestEvent(type="guest", time=datetime.datetime.now(datetime.UTC), guest=status)
        )

    def status(self, uid: str) -> GuestStatus | None:
        return self._status.get(uid)

    async def ensure(self, spec: GuestSpec) -> GuestStatus:
        """Accept a spec; return the guest's status as of now."""
        uid = spec.uid
        newest = self._desired.get(uid) or self._applied.get(uid)
        if newest is not None and spec.generation < newest.generation:
            raise StaleSpecError(
                f"guest {uid}: generation {spec.generation} is older than the accepted "
                f"{newest.generation}"
            )
        current = self._status.get(uid)
        if (
            self._applied.get(uid) == spec
            and current is not None
            and current.state is _wanted(spec)
            and uid not in self._tasks
        ):
            return current  # already as asked: change nothing
        self._desired[uid] = spec
        if uid not in self._tasks:
            if current is None or current.state in (GuestState.FAILED, GuestState.MISSING):
                self._record(
                    GuestStatus(uid=uid, state=GuestState.PROVISIONING, generation=spec.generation)
                )
            self._tasks[uid] = asyncio.create_task(self._converge(uid), name=f"guest-{uid}")
        return self._status[uid]

    async def _converge(self, uid: str) -> None:
        try:
            while True:
                spec = self._desired[uid]
                try:
                    facts = await self._provisioner.prepare(spec)
                    status = await self.compute.ensure(spec, facts)
                    self._applied[uid] = spec
                except ProvisioningError as exc:
                    status = GuestStatus(
                        uid=uid,
                        state=GuestState.FAILED,
                        generation=spec.generation,
                        reason=exc.reason,
                        message=str(exc),
                    )
                except Exception as exc:
                    log.exception("guest %s: ensure failed", uid)
                    status = GuestStatus(
                        uid=uid,
                        state=GuestState.FAILED,
                        generation=spec.generation,
                        reason="AgentError",
                        message=f"{type(exc).__name__}: {exc}",
                    )
                self._record(status.model_copy(update={"generation": spec.generation}))
                if self._desired.get(uid) is spec:
                    return
        finally:
            self._tasks.pop(uid, None)

    async def delete(self, uid: str) -> bool:
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._desired.pop(uid, None)
        self._applied.pop(uid, None)
        existed = await self.compute.delete(uid)
        await self._provisioner.cleanup(uid)
        existed = self._status.pop(uid, None) is not None or existed
        if existed:
            self._hub.publish(
                GuestEvent(
                    type="guest",
                    time=datetime.datetime.now(datetime.UTC),
                    guest=GuestStatus(uid=uid, state=GuestState.MISSING),
                )
            )
        return existed

    async def inventory(self) -> list[GuestStatus]:
        """Every guest on the node: the driver's view, plus guests still provisioning or
        failed before the driver ever saw them."""
        known = {status.uid: status for status in await self.compute.list()}
        for uid, status in self._status.items():
            if uid not in known or status.state in (GuestState.PROVISIONING, GuestState.FAILED):
                known[uid] = status
        return sorted(known.values(), key=lambda status: status.uid)
