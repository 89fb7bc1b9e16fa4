"""An in-memory compute driver, like Nova's fake driver: for control-plane tests and scale
benchmarks, where what matters is the API traffic, not the guests."""

from __future__ import annotations

import asyncio

from stratus_agent.compute.base import GuestListener
from stratus_agent.compute.domain_builder import NodeFacts
from stratus_api.guest import GuestSpec, GuestState, GuestStatus, PowerState


class FakeComputeDriver:
    virt_type = "fake"

    def __init__(self, cpu: int = 64, memory_bytes: int = 256 * 2**30, boot_delay: float = 0.0):
        self._cpu = cpu
        self._memory = memory_bytes
        self._boot_delay = boot_delay
        self._guests: dict[str, GuestStatus] = {}
        self._listener: GuestListener | None = None

    async def start(self, on_change: GuestListener) -> None:
        self._listener = on_change

    async def stop(self) -> None:
        self._listener = None

    def _set(self, status: GuestStatus) -> GuestStatus:
        previous = self._guests.get(status.uid)
        self._guests[status.uid] = status
        if self._listener and (previous is None or previous.state != status.state):
            self._listener(status)
        return status

    async def ensure(self, spec: GuestSpec, facts: NodeFacts) -> GuestStatus:
        if self._boot_delay:
            await asyncio.sleep(self._boot_delay)
        state = GuestState.RUNNING if spec.power is PowerState.RUNNING else GuestState.STOPPED
        return self._set(GuestStatus(uid=spec.uid, state=state, generation=spec.generation))

    async def delete(self, uid: str) -> bool:
        gone = self._guests.pop(uid, None)
        if gone is not None and self._listener:
            self._listener(GuestStatus(uid=uid, state=GuestState.MISSING))
        return gone is not None

    async def list(self) -> list[GuestStatus]:
        return list(self._guests.values())

    async def capacity(self) -> tuple[int, int]:
        return self._cpu, self._memory

    def crash(self, uid: str) -> None:
        """Test hook: the guest dies as if QEMU had crashed."""
        self._set(self._guests[uid].model_copy(update={"state": GuestState.CRASHED}))

    def power_off(self, uid: str) -> None:
        """Test hook: the guest stops as after `virsh destroy` or a poweroff inside it."""
        self._set(self._guests[uid].model_copy(update={"state": GuestState.STOPPED}))
