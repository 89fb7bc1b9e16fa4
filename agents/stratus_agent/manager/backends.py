"""The node's volume drivers, and which one holds each volume and snapshot.

One driver per backend of the node's own (files, and an LVM thin pool where configured:
fixed by the configuration) and one per Ceph pool,
made on demand from the access a spec carries (CephAccess, keyed by the CephPool's UID) and
made again at start from the access the node kept (CephPools.saved). A newer access for a
pool the node knows (a rotated key, changed monitors) replaces the driver's. A pool is
listed once it is added, and its volumes and snapshots are remembered with the driver that
holds them: every call on a UID goes to that driver. The managers subscribe to what each
added driver holds, to adopt it (Available, Ready).

An agent without Ceph's Python bindings serves files only: it answers a ceph spec with
ProvisioningError(BACKEND_UNSUPPORTED) naming what is missing (NoCeph).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stratus_agent.base import CephPoolDriver, CephPools, StoredSnapshot, StoredVolume, VolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import CephAccess

log = logging.getLogger(__name__)


class NoCeph:
    """CephPools of a node that cannot serve Ceph: `why` says what is missing."""

    def __init__(self, why: str) -> None:
        self.why = why

    def make(self, access: CephAccess) -> CephPoolDriver:
        raise ProvisioningError(
            GuestFailure.BACKEND_UNSUPPORTED,
            f"Ceph pool {access.pool}: this node serves no ceph volumes: {self.why}",
        )

    def saved(self) -> Sequence[CephPoolDriver]:
        return []

    def forget(self, pool_uid: str) -> bool:
        return False


@dataclass(frozen=True)
class Listing:
    """What a driver held when it was added."""

    driver: VolumeDriver
    volumes: list[StoredVolume]
    snapshots: list[StoredSnapshot]


Subscriber = Callable[[Listing], None]


class VolumeDrivers:
    def __init__(
        self, local: VolumeDriver | Sequence[VolumeDriver], ceph: CephPools | None = None
    ) -> None:
        """`local`: the node's own volumes, a driver per backend (files first); `ceph`:
        makes a driver per Ceph pool (None: the node serves no ceph volumes)."""
        self.locals = [local] if not isinstance(local, Sequence) else [*local]
        backends = [driver.backend for driver in self.locals]
        if not backends or len(set(backends)) != len(backends):
            raise ValueError(f"one local driver per backend, at least one: {backends}")
        self.local = self.locals[0]
        self._ceph: CephPools = ceph or NoCeph("the agent was started without Ceph support")
        self._pools: dict[str, CephPoolDriver] = {}  # CephPool UID -> its driver
        self._adding: dict[str, asyncio.Lock] = {}  # one add of a pool at a time
        self._volumes: dict[str, VolumeDriver] = {}  # Volume UID -> the driver holding it
        self._snapshots: dict[str, VolumeDriver] = {}  # VolumeSnapshot UID -> the same
        self._listings: list[Listing] = []
        self._subscribers: list[Subscriber] = []
        self._started: asyncio.Task[None] | None = None

    # -- drivers -----------------------------------------------------------------------

    def all(self) -> list[VolumeDriver]:
        """The local drivers, then the pools' by CephPool UID."""
        return [*self.locals, *self.pools()]

    def describe(self, driver: VolumeDriver) -> str:
        """The driver's backend, for messages."""
        for uid, pool in self._pools.items():
            if pool is driver:
                return f"Ceph pool {pool.access.pool} (CephPool {uid})"
        return f"the node's {driver.backend.value} volumes"

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` with what each driver held when it was added: those added so
        far now, the others as they come."""
        self._subscribers.append(subscriber)
        for listing in self._listings:
            subscriber(listing)

    async def start(self) -> None:
        """List the local drivers and the pools the node kept the access of; once, whoever
        asks first. A pool unreachable now is logged and left out: the next spec naming it
        adds it again. Raises if the file driver cannot be listed; another local one that
        cannot (an LVM volume group missing) is logged, and its calls fail until it can."""
        if self._started is None:
            self._started = asyncio.create_task(self._start(), name="volume-drivers-start")
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self._add(await self._list(self.local))
        for driver in self.locals[1:]:
            try:
                self._add(await self._list(driver))
            except ProvisioningError as exc:
                log.error("%s: cannot list what it holds: %s", self.describe(driver), exc)
        saved = await asyncio.to_thread(self._ceph.saved)
        for pool, listed in zip(
            saved,
            await asyncio.gather(*(self._list(p) for p in saved), return_exceptions=True),
            strict=True,
        ):
            if isinstance(listed, BaseException):
                access = pool.access
                log.warning("Ceph pool %s (CephPool %s): not served until a spec names it "
                            "again: %s", access.pool, access.pool_uid, listed)  # fmt: skip
                await asyncio.to_thread(pool.close)
                continue
            self._pools[pool.access.pool_uid] = pool
            self._add(listed)

    def pools(self) -> list[CephPoolDriver]:
        """The Ceph pools' drivers, by CephPool UID."""
        return [self._pools[uid] for uid in sorted(self._pools)]

    async def forget(self, pool_uid: str) -> bool:
        """The CephPool is gone: disconnect from its pool, stop serving it and remove what the
        node kept to reach it (its files, the key among them); True if the node served it.
        Its volumes stay in the pool (the operator deletes a CephPool only once none is
        left)."""
        await self.start()
        async with self._adding.setdefault(pool_uid, asyncio.Lock()):
            pool = self._pools.pop(pool_uid, None)
            if pool is not None:
                await asyncio.to_thread(pool.close)
                for table in (self._volumes, self._snapshots):
                    for uid in [uid for uid, held in table.items() if held is pool]:
                        del table[uid]
                self._listings = [found for found in self._listings if found.driver is not pool]
            forgotten = await asyncio.to_thread(self._ceph.forget, pool_uid)
        self._adding.pop(pool_uid, None)
        return pool is not None or forgotten

    async def close(self) -> None:
        """Disconnect from every pool; a later call connects again."""
        await asyncio.gather(*(asyncio.to_thread(p.close) for p in self._pools.values()))

    async def for_backend(self, backend: VolumeBackend, ceph: CephAccess | None) -> VolumeDriver:
        """The driver of a spec's backend: the local one for files, the pool's for ceph
        (added, or given the newer access)."""
        if backend is VolumeBackend.CEPH:
            if ceph is None:  # the wire models refuse this already
                raise ProvisioningError(GuestFailure.BACKEND_UNSUPPORTED, "ceph without access")
            return await self.pool(ceph)
        local = next((driver for driver in self.locals if driver.backend is backend), None)
        if local is None:
            served = ", ".join(driver.backend.value for driver in self.locals)
            raise ProvisioningError(
                GuestFailure.BACKEND_UNSUPPORTED,
                f"backend {backend.value}: this node serves {served} and ceph volumes only",
            )
        return local

    async def pool(self, access: CephAccess) -> CephPoolDriver:
        """The pool's driver, reaching it with `access` from now on. A pool new to the node
        is listed first (so its volumes are known): raises ProvisioningError when that
        fails, and the next call tries again."""
        uid = access.pool_uid
        async with self._adding.setdefault(uid, asyncio.Lock()):
            known = self._pools.get(uid)
            if known is not None:
                if known.access != access and await asyncio.to_thread(known.use_access, access):
                    log.info("Ceph pool %s (CephPool %s): reached with a new access",
                             access.pool, uid)  # fmt: skip
                return known
            made = self._ceph.make(access)
            try:
                listed = await self._list(made)
            except BaseException:
                await asyncio.to_thread(made.close)
                raise
            self._pools[uid] = made
            log.info("Ceph pool %s (CephPool %s): serving its volumes", access.pool, uid)
            self._add(listed)
            return made

    async def _list(self, driver: VolumeDriver) -> Listing:
        return Listing(driver, await driver.list(), await driver.list_snapshots())

    def _add(self, listing: Listing) -> None:
        for volume in listing.volumes:
            self._volumes.setdefault(volume.uid, listing.driver)
        for snapshot in listing.snapshots:
            self._snapshots.setdefault(snapshot.uid, listing.driver)
        self._listings.append(listing)
        for subscriber in self._subscribers:
            subscriber(listing)

    # -- which driver holds what -------------------------------------------------------------

    def of_volume(self, uid: str) -> VolumeDriver | None:
        return self._volumes.get(uid)

    def of_snapshot(self, uid: str) -> VolumeDriver | None:
        return self._snapshots.get(uid)

    def holds_volume(self, uid: str, driver: VolumeDriver | None) -> None:
        """`driver` holds the volume now (None: no driver does)."""
        if driver is None:
            self._volumes.pop(uid, None)
        else:
            self._volumes[uid] = driver

    def holds_snapshot(self, uid: str, driver: VolumeDriver | None) -> None:
        if driver is None:
            self._snapshots.pop(uid, None)
        else:
            self._snapshots[uid] = driver


async def check_room(driver: VolumeDriver, needed: int, what: str) -> None:
    """Refuse what the driver's pool cannot hold once written in full (`what` needs
    `needed` bytes): volumes are thin, but a guest that fills one on a full pool would see
    I/O errors, not a clear condition. A Ceph pool that reports no capacity (a cluster
    without a manager, which feeds the monitor those numbers) is not judged."""
    pool = await driver.usage()
    if needed > pool.free_bytes and (pool.capacity_bytes or pool.backend is not VolumeBackend.CEPH):
        where = f"Ceph pool {pool.pool}" if pool.pool else f"node's {pool.backend} pool"
        raise ProvisioningError(
            GuestFailure.NODE_STORAGE_FULL, f"{what}; the {where} has {pool.free_bytes} free"
        )
