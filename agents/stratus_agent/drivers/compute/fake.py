"""An in-memory compute driver, like Nova's fake driver: for control-plane tests and scale
benchmarks, where what matters is the API traffic, not the guests.

It keeps the verbs' semantics (Running, Paused, Stopped, a restart that boots afresh) and
counts boots per guest, so tests can tell a restart from none. Its guests do nothing, so
their usage counters stay at zero unless a test says otherwise (`io`).
"""

from __future__ import annotations

import asyncio
import builtins

from stratus_agent import base
from stratus_api.guest import GuestSpec, GuestState, GuestStatus, PowerState

_WANTED = {
    PowerState.RUNNING: GuestState.RUNNING,
    PowerState.PAUSED: GuestState.PAUSED,
    PowerState.STOPPED: GuestState.STOPPED,
}
# Its states as libvirt names a domain's.
_DOMAIN_STATES: dict[GuestState, base.DomainState] = {
    GuestState.RUNNING: "running",
    GuestState.PAUSED: "paused",
    GuestState.STOPPED: "shutoff",
    GuestState.CRASHED: "crashed",
}
_ACTIVE = (GuestState.RUNNING, GuestState.PAUSED)


class FakeComputeDriver:
    virt_type = "fake"

    def __init__(self, cpu: int = 64, memory_bytes: int = 256 * 2**30, boot_delay: float = 0.0):
        self._cpu = cpu
        self._memory = memory_bytes
        self._boot_delay = boot_delay
        self._guests: dict[str, GuestStatus] = {}
        self._specs: dict[str, GuestSpec] = {}
        # Device counters a test set (`io`), reported while the guest is active.
        self._io: dict[str, tuple[tuple[base.DiskStats, ...], tuple[base.NicStats, ...]]] = {}
        self._listener: base.GuestListener | None = None
        # Times each guest was started from off (a fresh boot): a restart adds one.
        self.boots: dict[str, int] = {}

    async def start(self, on_change: base.GuestListener) -> None:
        self._listener = on_change

    async def stop(self) -> None:
        self._listener = None

    def _set(self, status: GuestStatus) -> GuestStatus:
        previous = self._guests.get(status.uid)
        self._guests[status.uid] = status
        if self._listener and (previous is None or previous.state != status.state):
            self._listener(status)
        return status

    async def ensure(
        self, spec: GuestSpec, facts: base.NodeFacts, *, restart: bool = False
    ) -> GuestStatus:
        if self._boot_delay:
            await asyncio.sleep(self._boot_delay)
        previous = self._guests.get(spec.uid)
        active = previous is not None and previous.state in _ACTIVE
        self._specs[spec.uid] = spec
        wanted = _WANTED[spec.power]
        # A fresh boot when it was off, or when a restart power-cycles it; like libvirt's
        # driver, the stop half of a restart is not reported.
        if wanted is not GuestState.STOPPED and (not active or restart):
            self.boots[spec.uid] = self.boots.get(spec.uid, 0) + 1
        # The generation stands for the one libvirt keeps in the domain's definition.
        return self._set(GuestStatus(uid=spec.uid, state=wanted, generation=spec.generation))

    async def resize_disk(self, uid: str, serial: str, size_bytes: int) -> bool:
        return False  # it holds no image open: volumes grow offline, through their driver

    async def remove_ceph_secret(self, pool_uid: str) -> bool:
        return False  # its guests reach no pool

    async def delete(self, uid: str) -> bool:
        gone = self._guests.pop(uid, None)
        self.boots.pop(uid, None)
        self._specs.pop(uid, None)
        self._io.pop(uid, None)
        if gone is not None and self._listener:
            self._listener(GuestStatus(uid=uid, state=GuestState.MISSING))
        return gone is not None

    async def list(self) -> list[GuestStatus]:
        return list(self._guests.values())

    async def capacity(self) -> tuple[int, int]:
        return self._cpu, self._memory

    async def console_device(self, uid: str) -> str | None:
        return None  # the fake's guests run nothing that could print

    async def vnc_port(self, uid: str) -> int | None:
        return None

    async def guest_stats(self) -> builtins.list[base.GuestStats]:
        return [self._stats(self._specs[uid], status) for uid, status in self._guests.items()]

    def _stats(self, spec: GuestSpec, status: GuestStatus) -> base.GuestStats:
        active = status.state in _ACTIVE
        disks, nics = self._io.get(spec.uid, ((), ())) if active else ((), ())
        return base.GuestStats(
            uid=spec.uid,
            state=_DOMAIN_STATES.get(status.state, "nostate"),
            vcpus=spec.cpu,
            memory_bytes=spec.memory_bytes,
            namespace=spec.namespace,
            name=spec.name,
            # Active: it has all its memory and has used no CPU. Off: no process to count.
            cpu_seconds=0.0 if active else None,
            vcpu_seconds=0.0 if active else None,
            balloon_bytes=spec.memory_bytes if active else None,
            disks=disks,
            nics=nics,
        )

    def io(
        self,
        uid: str,
        disks: tuple[base.DiskStats, ...] = (),
        nics: tuple[base.NicStats, ...] = (),
    ) -> None:
        """Test hook: the device counters the hypervisor would report for the guest."""
        self._io[uid] = (disks, nics)

    def crash(self, uid: str) -> None:
        """Test hook: the guest dies as if QEMU had crashed."""
        self._set(self._guests[uid].model_copy(update={"state": GuestState.CRASHED}))

    def power_off(self, uid: str) -> None:
        """Test hook: the guest stops as after `virsh destroy` or a poweroff inside it."""
        self._set(self._guests[uid].model_copy(update={"state": GuestState.STOPPED}))

    def event(self, uid: str, state: GuestState) -> None:
        """Test hook: a lifecycle event as libvirt's driver reports one (no generation),
        whenever it happens to arrive."""
        if self._listener:
            self._listener(GuestStatus(uid=uid, state=state))
