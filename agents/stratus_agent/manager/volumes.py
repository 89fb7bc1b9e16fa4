"""Brings the node's Volumes to their spec, and knows which guests use them.

PUT returns at once; making or growing a volume's data goes on in one task per volume,
which converges to the newest spec it was given. Every state change is published on the
event stream, stamped from the same sequence clock as the guests' reports. Nothing is
retried by itself: a failed volume is tried again by the next ensure of its spec (the
operator re-sends it).

Which guests use which volume is kept on disk (AttachmentBook), so a volume a running guest
uses stays refused for deletion across agent restarts. A volume whose data is being copied
whole (a clone or a snapshot of it is being made) is held still meanwhile: no guest takes
it and it does not grow until the copy is done.

Volumes live in the node's files and in Ceph pools: each call goes to the driver of the
spec's backend (and pool), or to the one holding the volume (stratus_agent.manager.backends).

Snapshots have a manager of their own (stratus_agent.manager.snapshots) over the same
drivers; a volume restored from one is made here, like a clone, by the driver holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from stratus_agent.base import (
    EventSink,
    GuestOwner,
    ImageStore,
    LiveResizer,
    ProgressListener,
    StoredVolume,
    VolumeAttachment,
    VolumeDriver,
)
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.backends import Listing, VolumeDrivers, check_room
from stratus_agent.manager.reports import ReportBook
from stratus_agent.manager.sequence import SequenceClock
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import ATOMIC_COPIES, VolumeBackend
from stratus_api.volume_wire import (
    NodeVolumeSpec,
    NodeVolumeState,
    NodeVolumeStatus,
    VolumeInventory,
    disk_serial,
)

log = logging.getLogger(__name__)


class VolumeInUseError(Exception):
    """The volume cannot go: guests on this node use it."""

    def __init__(self, uid: str, guests: Sequence[str]) -> None:
        super().__init__(f"volume {uid} is in use by guest(s) {', '.join(guests)} on this node")
        self.uid = uid
        self.guests = list(guests)


class AttachmentBook:
    """Volume UID -> UIDs of the guests using it, as one JSON file replaced whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, set[str]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("volumes: cannot read %s, starting without it: %s", self.path, exc)
            return {}
        return {str(volume): {str(g) for g in guests} for volume, guests in raw.items() if guests}

    def save(self, users: dict[str, set[str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps({v: sorted(g) for v, g in sorted(users.items()) if g}))
        os.replace(partial, self.path)


class VolumeManager:
    def __init__(
        self,
        drivers: VolumeDrivers | VolumeDriver,
        images: ImageStore,
        hub: EventSink,
        *,
        node: str,
        sequence: SequenceClock | None = None,
        book: AttachmentBook | None = None,
        resize_live: LiveResizer | None = None,
    ) -> None:
        """`drivers`: the node's volume drivers (a lone driver: that one only, files);
        `resize_live`: the compute driver's resize_disk, which grows a volume that a running
        guest holds open (None: volumes only grow offline)."""
        if not isinstance(drivers, VolumeDrivers):
            drivers = VolumeDrivers(drivers)
        self.drivers = drivers
        self._resize_live = resize_live
        self._images = images
        self._node = node
        self._book = book  # None: attachments live in memory only
        self._desired: dict[str, NodeVolumeSpec] = {}
        self._stored: dict[str, StoredVolume] = {}
        self._reports = ReportBook[NodeVolumeStatus](
            hub, sequence or SequenceClock(), "volume",
            creating=NodeVolumeState.CREATING, missing=NodeVolumeState.MISSING,
        )  # fmt: skip
        self._users: dict[str, set[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deleting: set[str] = set()
        self._copying: dict[str, int] = {}  # volume UID -> copies being made of it now
        drivers.subscribe(self._adopt)

    async def start(self) -> None:
        """Adopt what the backends hold (Available) and who used it before a restart."""
        if self._book is not None:
            self._users = await asyncio.to_thread(self._book.load)
        await self.drivers.start()

    def _adopt(self, listing: Listing) -> None:
        """The volumes a driver held when it was added: Available, unless being made."""
        for stored in listing.volumes:
            self._stored.setdefault(stored.uid, stored)
            if stored.uid not in self._tasks:
                self._reports.adopt(self._report(stored.uid, NodeVolumeState.AVAILABLE))

    def _holder(self, uid: str) -> VolumeDriver:
        driver = self.drivers.of_volume(uid)
        if driver is None:
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND, f"volume {uid} is not on this node"
            )
        return driver

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.drivers.close()

    async def forget_pool(self, pool_uid: str) -> bool:
        """The CephPool is gone: the node stops serving it and removes its access; the
        volumes it knew there are no longer reported. True if the node served it."""
        pool = next((p for p in self.drivers.pools() if p.access.pool_uid == pool_uid), None)
        held = (
            [u for u in self._reports.uids() if self.drivers.of_volume(u) is pool] if pool else []
        )
        forgotten = await self.drivers.forget(pool_uid)
        for uid in held:
            self._stored.pop(uid, None)
            self._reports.pop(uid)
        return forgotten

    async def release_image(self, image_uid: str) -> None:
        """The Image is gone: its copies imported into the Ceph pools go too (each once no
        volume is a clone of it). Logs rather than raises: the pools keep the mark."""
        await self.drivers.start()
        for pool in self.drivers.pools():
            try:
                if await pool.release_image(image_uid):
                    log.info("image %s: removed from %s", image_uid, self.drivers.describe(pool))
            except ProvisioningError as exc:
                log.warning("image %s: not released in %s: %s", image_uid,
                            self.drivers.describe(pool), exc)  # fmt: skip

    def status(self, uid: str) -> NodeVolumeStatus | None:
        return self._reports.get(uid)

    async def inventory(self) -> VolumeInventory:
        volumes = self._reports.stamped_all()
        pools = []
        for driver in self.drivers.all():
            try:
                pools.append(await driver.usage())
            except ProvisioningError as exc:  # one unreachable pool hides none of the others
                log.warning("volumes: no usage of %s: %s", self.drivers.describe(driver), exc)
        return VolumeInventory(node=self._node, volumes=volumes, pools=pools)

    # -- reports -----------------------------------------------------------------------

    def _report(
        self,
        uid: str,
        state: NodeVolumeState,
        *,
        generation: int | None = None,
        progress: int | None = None,
        reason: str = "",
        message: str = "",
    ) -> NodeVolumeStatus:
        """A status of the volume as it stands, in `state`."""
        stored = self._stored.get(uid)
        return NodeVolumeStatus(
            uid=uid,
            state=state,
            generation=generation,
            size_bytes=stored.size_bytes if stored else None,
            location=stored.location if stored else None,
            progress=progress,
            attached_to=sorted(self._users.get(uid, ())),
            reason=reason,
            message=message,
        )

    def _restate(self, uid: str) -> None:
        """Report the volume again in its current state (its users changed)."""
        current = self._reports.get(uid)
        if current is not None:
            self._reports.record(
                current.model_copy(update={"attached_to": sorted(self._users.get(uid, ()))})
            )

    # -- making and growing ----------------------------------------------------------------

    async def ensure(self, spec: NodeVolumeSpec) -> NodeVolumeStatus:
        """Accept a spec; the volume's status as of now. A larger size grows the volume;
        the source counts only when it is first made; a failed one is tried again."""
        uid = spec.uid
        self._desired[uid] = spec
        if uid not in self._tasks:
            stored = self._stored.get(uid)
            if stored is not None and spec.ceph is not None:
                # A pool the node knows (it holds the volume): a newer access applies now.
                with contextlib.suppress(ProvisioningError):
                    await self.drivers.pool(spec.ceph)
            if stored is not None and spec.size_bytes <= stored.size_bytes:
                if spec.size_bytes < stored.size_bytes:
                    log.warning("volume %s: %d bytes asked, it has %d; volumes never shrink",
                                uid, spec.size_bytes, stored.size_bytes)  # fmt: skip
                self._reports.record(
                    self._report(uid, NodeVolumeState.AVAILABLE, generation=spec.generation)
                )
            else:
                self._begin(uid, spec)
                self._tasks[uid] = asyncio.create_task(self._converge(uid), name=f"volume-{uid}")
        return self._reports[uid]

    def _begin(self, uid: str, spec: NodeVolumeSpec) -> None:
        if uid in self._stored:
            self._reports.record(
                self._report(uid, NodeVolumeState.EXTENDING, generation=spec.generation)
            )
        else:
            self._reports.record(
                self._report(uid, NodeVolumeState.CREATING, generation=spec.generation, progress=0)
            )

    async def _converge(self, uid: str) -> None:
        task = asyncio.current_task()
        spec = self._desired[uid]
        try:
            while True:
                spec = self._desired[uid]
                driver = await self._driver_of(spec)  # a new pool's volumes are adopted
                stored = self._stored.get(uid)
                if stored is None:
                    self._begin(uid, spec)
                    await check_room(
                        driver,
                        spec.size_bytes,
                        f"volume {spec.namespace}/{spec.name} needs {spec.size_bytes} bytes",
                    )
                    self._stored[uid] = await self._create(driver, spec)
                    self.drivers.holds_volume(uid, driver)
                elif spec.size_bytes > stored.size_bytes:
                    self._begin(uid, spec)
                    if uid in self._copying:
                        # The copy would be torn, or hold the file's lock and fail the grow.
                        raise ProvisioningError(
                            GuestFailure.VOLUME_IN_USE,
                            f"volume {uid} is being copied (a clone or snapshot of it is "
                            "being made); it grows once that is done",
                        )
                    needed = spec.size_bytes - stored.size_bytes
                    await check_room(
                        driver, needed, f"volume {spec.namespace}/{spec.name} needs {needed} bytes"
                    )
                    self._stored[uid] = await self._grow(driver, stored, spec.size_bytes)
                if self._desired.get(uid) is spec:
                    self._reports.record(
                        self._report(uid, NodeVolumeState.AVAILABLE, generation=spec.generation)
                    )
                    return
        except ProvisioningError as exc:
            self._fail(uid, spec, exc.reason, str(exc))
        except Exception as exc:
            log.exception("volume %s: ensure failed", uid)
            self._fail(uid, spec, GuestFailure.AGENT_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            if self._tasks.get(uid) is task:
                self._tasks.pop(uid, None)

    async def _driver_of(self, spec: NodeVolumeSpec) -> VolumeDriver:
        """The driver of the spec's backend, which must be the one holding the volume."""
        driver = await self.drivers.for_backend(spec.backend, spec.ceph)
        held = self.drivers.of_volume(spec.uid)
        if held is not None and held is not driver:
            raise ProvisioningError(
                GuestFailure.VOLUME_CREATE_FAILED,
                f"volume {spec.uid} is in {self.drivers.describe(held)}; its spec names "
                f"{self.drivers.describe(driver)}",
            )
        return driver

    async def _grow(
        self, driver: VolumeDriver, stored: StoredVolume, size_bytes: int
    ) -> StoredVolume:
        """Through the hypervisor of a running guest that holds the volume open (the guest
        sees the new size at once), else offline through the backend."""
        users = sorted(self._users.get(stored.uid, ()))
        if driver.backend is VolumeBackend.LVM:
            # A block device: QEMU cannot grow it, only see that it grew.
            grown = await driver.grow(stored.uid, size_bytes)
            if self._resize_live is not None:
                for guest in users:
                    await self._resize_live(guest, disk_serial(stored.uid), grown.size_bytes)
            return grown
        if self._resize_live is not None:
            for guest in users:
                if await self._resize_live(guest, disk_serial(stored.uid), size_bytes):
                    return replace(stored, size_bytes=size_bytes)
        return await driver.grow(stored.uid, size_bytes)

    def _fail(self, uid: str, spec: NodeVolumeSpec, reason: str, message: str) -> None:
        log.warning("volume %s: %s: %s", uid, reason, message)
        self._reports.record(
            self._report(
                uid,
                NodeVolumeState.FAILED,
                generation=spec.generation,
                reason=reason,
                message=message,
            )
        )

    def _same_driver(self, driver: VolumeDriver, held: VolumeDriver | None, what: str) -> None:
        """A copy is made inside one backend (and pool): its source must be there."""
        if held is not None and held is not driver:
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND,
                f"{what} is in {self.drivers.describe(held)}, not in "
                f"{self.drivers.describe(driver)}: a copy stays inside one backend",
            )

    async def _create(self, driver: VolumeDriver, spec: NodeVolumeSpec) -> StoredVolume:
        source = spec.source
        if source is not None and source.image is not None:
            image = await self._images.ensure(source.image)
            return await driver.create(
                spec.uid, spec.size_bytes, image=image, progress=self._progress_of(spec),
                shareable=spec.shareable,
            )  # fmt: skip
        if source is not None and source.volume is not None:
            self._same_driver(
                driver, self.drivers.of_volume(source.volume), f"source volume {source.volume}"
            )
            with self.held_still(
                source.volume,
                in_use=f"{spec.backend.value} volumes are copied while detached: a copy of a "
                "disk a guest writes to would be torn",
                while_used=spec.backend in ATOMIC_COPIES,
            ):
                return await driver.create(
                    spec.uid,
                    spec.size_bytes,
                    clone_of=source.volume,
                    progress=self._progress_of(spec),
                    shareable=spec.shareable,
                )
        if source is not None and source.snapshot is not None:
            # A snapshot is Ready exactly when the backend holds it whole: the driver says
            # VOLUME_NOT_FOUND (transient) for one still being taken, failed or deleted.
            self._same_driver(
                driver, self.drivers.of_snapshot(source.snapshot), f"snapshot {source.snapshot}"
            )
            return await driver.create(
                spec.uid,
                spec.size_bytes,
                snapshot_of=source.snapshot,
                progress=self._progress_of(spec),
                shareable=spec.shareable,
            )
        return await driver.create(spec.uid, spec.size_bytes, shareable=spec.shareable)

    def _progress_of(self, spec: NodeVolumeSpec) -> ProgressListener:
        def creating(percent: int, generation: int | None) -> NodeVolumeStatus:
            return self._report(
                spec.uid, NodeVolumeState.CREATING, generation=generation, progress=percent
            )

        return self._reports.progress(spec.uid, creating)

    @contextlib.contextmanager
    def held_still(
        self, uid: str, *, in_use: str, while_used: bool = False
    ) -> Iterator[StoredVolume]:
        """The volume's data, held still while a copy of it is made (a clone, a snapshot):
        it must be Available and used by no guest (else ProvisioningError, transient), and
        until the block ends no guest takes it and it does not grow. `in_use`: why a volume
        a guest uses is refused, for the message; `while_used`: the backend copies it
        consistently even while a guest writes (an RBD snapshot), so guests may use it."""
        status, stored = self._reports.get(uid), self._stored.get(uid)
        if (
            status is None
            or stored is None
            or status.state is not NodeVolumeState.AVAILABLE
            or uid in self._deleting
        ):
            state = "absent" if status is None else status.state.value
            raise ProvisioningError(
                GuestFailure.VOLUME_NOT_FOUND,
                f"volume {uid} is not available on this node ({state})",
            )
        users = sorted(self._users.get(uid, ()))
        if users and not while_used:
            raise ProvisioningError(
                GuestFailure.VOLUME_IN_USE,
                f"volume {uid} is in use by guest(s) {', '.join(users)} on this node: {in_use}",
            )
        self._copying[uid] = self._copying.get(uid, 0) + 1
        try:
            yield stored
        finally:
            self._copying[uid] -= 1
            if not self._copying[uid]:
                del self._copying[uid]

    # -- deleting ----------------------------------------------------------------------

    async def delete(self, uid: str) -> bool:
        """Remove the volume's data; True if there was some. Refused while a guest on this
        node uses it (VolumeInUseError); an unknown volume is fine."""
        users = sorted(self._users.get(uid, ()))
        if users:
            raise VolumeInUseError(uid, users)
        self._deleting.add(uid)
        try:
            task = self._tasks.pop(uid, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self._desired.pop(uid, None)
            existed = False
            held = self.drivers.of_volume(uid)
            # Unknown here (made since its pool was listed, by a node sharing the pool):
            # asked of every driver.
            for driver in [held] if held is not None else self.drivers.all():
                existed = await driver.remove(uid) or existed
            self.drivers.holds_volume(uid, None)
            self._stored.pop(uid, None)
            existed = self._reports.get(uid) is not None or existed
        finally:
            self._deleting.discard(uid)
        if existed:
            self._reports.record(NodeVolumeStatus(uid=uid, state=NodeVolumeState.MISSING))
        return existed

    # -- guests using volumes ------------------------------------------------------------

    async def use(
        self,
        guest_uid: str,
        volume_uids: Sequence[str],
        owner: GuestOwner | None,
        shareable: Collection[str] = (),
    ) -> dict[str, VolumeAttachment]:
        """Attach `volume_uids` to the guest (each Available, used by no other guest unless
        in `shareable`); attachments by volume UID. Volumes it used before are kept:
        `keep_only` lets go of them once the guest has released them."""
        attachments: dict[str, VolumeAttachment] = {}
        for uid in dict.fromkeys(volume_uids):
            status = self._reports.get(uid)
            if (
                status is None
                or status.state is not NodeVolumeState.AVAILABLE
                or (uid in self._deleting)
            ):
                state = "absent" if status is None else status.state.value
                raise ProvisioningError(
                    GuestFailure.VOLUME_NOT_FOUND,
                    f"volume {uid} is not available on this node ({state})",
                )
            others = sorted(self._users.get(uid, set()) - {guest_uid})
            if others and uid not in shareable:
                raise ProvisioningError(
                    GuestFailure.VOLUME_IN_USE,
                    f"volume {uid} is in use by guest(s) {', '.join(others)} on this node",
                )
            if uid in self._copying:
                # The guest would write to it while it is read whole; QEMU would also fail
                # to get the file's write lock.
                raise ProvisioningError(
                    GuestFailure.VOLUME_IN_USE,
                    f"volume {uid} is being copied (a clone or snapshot of it is being "
                    "made); a guest gets it once that is done",
                )
            attachments[uid] = await self._holder(uid).attach(uid, owner)
            if guest_uid not in self._users.setdefault(uid, set()):
                self._users[uid].add(guest_uid)
                await self._save()
                self._restate(uid)
        return attachments

    async def keep_only(self, guest_uid: str, volume_uids: Sequence[str]) -> None:
        """The guest uses `volume_uids` and nothing else now (its hypervisor unplugged the
        rest): let go of the others."""
        for uid in [v for v, guests in self._users.items() if guest_uid in guests]:
            if uid not in volume_uids:
                await self._drop(uid, guest_uid)

    async def release(self, guest_uid: str) -> None:
        """The guest is gone: it uses none of its volumes any more. Logs rather than raises."""
        for uid in [v for v, guests in self._users.items() if guest_uid in guests]:
            try:
                await self._drop(uid, guest_uid)
            except Exception as exc:
                log.warning("volume %s: cannot release it from guest %s: %s", uid, guest_uid, exc)

    async def _drop(self, uid: str, guest_uid: str) -> None:
        guests = self._users.get(uid, set())
        guests.discard(guest_uid)
        if not guests:
            self._users.pop(uid, None)
            held = self.drivers.of_volume(uid)
            if uid in self._stored and held is not None:
                await held.detach(uid)
        await self._save()
        self._restate(uid)

    async def _save(self) -> None:
        if self._book is not None:
            await asyncio.to_thread(self._book.save, {v: set(g) for v, g in self._users.items()})
