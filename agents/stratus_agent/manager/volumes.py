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

Snapshots have a manager of their own (stratus_agent.manager.snapshots) over the same
driver; a volume restored from one is made here, like a clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
from collections.abc import Iterator, Sequence
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
from stratus_agent.manager.sequence import SequenceClock
from stratus_api.guest import GuestEvent
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import (
    NodeVolumeSpec,
    NodeVolumeState,
    NodeVolumeStatus,
    VolumeInventory,
    disk_serial,
)

log = logging.getLogger(__name__)

# Copy progress is published in steps of this many percent, not on every percent.
PROGRESS_STEP = 5


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
        driver: VolumeDriver,
        images: ImageStore,
        hub: EventSink,
        *,
        node: str,
        sequence: SequenceClock | None = None,
        book: AttachmentBook | None = None,
        resize_live: LiveResizer | None = None,
    ) -> None:
        """`resize_live`: the compute driver's resize_disk, which grows a volume that a
        running guest holds open (None: volumes only grow offline)."""
        self._driver = driver
        self._resize_live = resize_live
        self._images = images
        self._hub = hub
        self._node = node
        self._sequence = sequence or SequenceClock()
        self._book = book  # None: attachments live in memory only
        self._desired: dict[str, NodeVolumeSpec] = {}
        self._stored: dict[str, StoredVolume] = {}
        self._status: dict[str, NodeVolumeStatus] = {}
        self._users: dict[str, set[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deleting: set[str] = set()
        self._copying: dict[str, int] = {}  # volume UID -> copies being made of it now

    @property
    def backend(self) -> VolumeBackend:
        return self._driver.backend

    async def start(self) -> None:
        """Adopt what the backend holds (Available) and who used it before a restart."""
        if self._book is not None:
            self._users = await asyncio.to_thread(self._book.load)
        for stored in await self._driver.list():
            self._stored[stored.uid] = stored
            self._status[stored.uid] = self._stamped(
                self._report(stored.uid, NodeVolumeState.AVAILABLE)
            )

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self, uid: str) -> NodeVolumeStatus | None:
        return self._status.get(uid)

    async def inventory(self) -> VolumeInventory:
        # Stamped now: as of this moment, newer than every event already sent.
        volumes = [self._stamped(status) for _, status in sorted(self._status.items())]
        return VolumeInventory(node=self._node, volumes=volumes, pools=[await self._driver.usage()])

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

    def _stamped(self, status: NodeVolumeStatus) -> NodeVolumeStatus:
        return status.model_copy(update={"sequence": self._sequence.next()})

    def _record(self, status: NodeVolumeStatus) -> None:
        previous = self._status.get(status.uid)
        if previous is not None and previous.model_copy(update={"sequence": None}) == status:
            return
        status = self._stamped(status)
        if status.state is NodeVolumeState.MISSING:
            self._status.pop(status.uid, None)
        else:
            self._status[status.uid] = status
        self._hub.publish(
            GuestEvent(type="volume", time=datetime.datetime.now(datetime.UTC), volume=status)
        )

    def _restate(self, uid: str) -> None:
        """Report the volume again in its current state (its users changed)."""
        current = self._status.get(uid)
        if current is not None:
            self._record(
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
            if stored is not None and spec.size_bytes <= stored.size_bytes:
                if spec.size_bytes < stored.size_bytes:
                    log.warning("volume %s: %d bytes asked, it has %d; volumes never shrink",
                                uid, spec.size_bytes, stored.size_bytes)  # fmt: skip
                self._record(
                    self._report(uid, NodeVolumeState.AVAILABLE, generation=spec.generation)
                )
            else:
                self._begin(uid, spec)
                self._tasks[uid] = asyncio.create_task(self._converge(uid), name=f"volume-{uid}")
        return self._status[uid]

    def _begin(self, uid: str, spec: NodeVolumeSpec) -> None:
        if uid in self._stored:
            self._record(self._report(uid, NodeVolumeState.EXTENDING, generation=spec.generation))
        else:
            self._record(
                self._report(uid, NodeVolumeState.CREATING, generation=spec.generation, progress=0)
            )

    async def _converge(self, uid: str) -> None:
        task = asyncio.current_task()
        spec = self._desired[uid]
        try:
            while True:
                spec = self._desired[uid]
                stored = self._stored.get(uid)
                if stored is None:
                    self._begin(uid, spec)
                    await self._check_room(spec, spec.size_bytes)
                    self._stored[uid] = await self._create(spec)
                elif spec.size_bytes > stored.size_bytes:
                    self._begin(uid, spec)
                    if uid in self._copying:
                        # The copy would be torn, or hold the file's lock and fail the grow.
                        raise ProvisioningError(
                            GuestFailure.VOLUME_IN_USE,
                            f"volume {uid} is being copied (a clone or snapshot of it is "
                            "being made); it grows once that is done",
                        )
                    await self._check_room(spec, spec.size_bytes - stored.size_bytes)
                    self._stored[uid] = await self._grow(stored, spec.size_bytes)
                if self._desired.get(uid) is spec:
                    self._record(
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

    async def _grow(self, stored: StoredVolume, size_bytes: int) -> StoredVolume:
        """Through the hypervisor of a running guest that holds the volume open (the guest
        sees the new size at once), else offline through the backend."""
        if self._resize_live is not None:
            for guest in sorted(self._users.get(stored.uid, ())):
                if await self._resize_live(guest, disk_serial(stored.uid), size_bytes):
                    return replace(stored, size_bytes=size_bytes)
        return await self._driver.grow(stored.uid, size_bytes)

    def _fail(self, uid: str, spec: NodeVolumeSpec, reason: str, message: str) -> None:
        log.warning("volume %s: %s: %s", uid, reason, message)
        self._record(
            self._report(
                uid,
                NodeVolumeState.FAILED,
                generation=spec.generation,
                reason=reason,
                message=message,
            )
        )

    async def _check_room(self, spec: NodeVolumeSpec, needed: int) -> None:
        """Refuse what the pool cannot hold once written in full: volumes are thin, but a
        guest that fills one on a full pool would see I/O errors, not a clear condition."""
        pool = await self._driver.usage()
        if needed > pool.free_bytes:
            raise ProvisioningError(
                GuestFailure.NODE_STORAGE_FULL,
                f"volume {spec.namespace}/{spec.name} needs {needed} bytes; the node's "
                f"{pool.backend} pool has {pool.free_bytes} free",
            )

    async def _create(self, spec: NodeVolumeSpec) -> StoredVolume:
        source = spec.source
        if source is not None and source.image is not None:
            image = await self._images.ensure(source.image)
            return await self._driver.create(
                spec.uid, spec.size_bytes, image=image, progress=self._progress_of(spec)
            )
        if source is not None and source.volume is not None:
            with self.held_still(
                source.volume, in_use="a copy of a disk a guest writes to would be torn"
            ):
                return await self._driver.create(
                    spec.uid,
                    spec.size_bytes,
                    clone_of=source.volume,
                    progress=self._progress_of(spec),
                )
        if source is not None and source.snapshot is not None:
            # A snapshot is Ready exactly when the backend holds it whole: the driver says
            # VOLUME_NOT_FOUND (transient) for one still being taken, failed or deleted.
            return await self._driver.create(
                spec.uid,
                spec.size_bytes,
                snapshot_of=source.snapshot,
                progress=self._progress_of(spec),
            )
        return await self._driver.create(spec.uid, spec.size_bytes)

    def _progress_of(self, spec: NodeVolumeSpec) -> ProgressListener:
        def progress(percent: int) -> None:
            current = self._status.get(spec.uid)
            if current is None or current.state is not NodeVolumeState.CREATING:
                return
            if current.progress is not None and (
                percent // PROGRESS_STEP == current.progress // PROGRESS_STEP
            ):
                return
            self._record(
                self._report(
                    spec.uid, NodeVolumeState.CREATING, generation=spec.generation, progress=percent
                )
            )

        return progress

    @contextlib.contextmanager
    def held_still(self, uid: str, *, in_use: str) -> Iterator[StoredVolume]:
        """The volume's data, held still while a copy of it is made (a clone, a snapshot):
        it must be Available and used by no guest (else ProvisioningError, transient), and
        until the block ends no guest takes it and it does not grow. `in_use`: why a volume
        a guest uses is refused, for the message."""
        status, stored = self._status.get(uid), self._stored.get(uid)
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
        if users:
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
            existed = await self._driver.remove(uid)
            self._stored.pop(uid, None)
            existed = self._status.get(uid) is not None or existed
        finally:
            self._deleting.discard(uid)
        if existed:
            self._record(NodeVolumeStatus(uid=uid, state=NodeVolumeState.MISSING))
        return existed

    # -- guests using volumes ------------------------------------------------------------

    async def use(
        self, guest_uid: str, volume_uids: Sequence[str], owner: GuestOwner | None
    ) -> dict[str, VolumeAttachment]:
        """Attach `volume_uids` to the guest (each Available, used by no other guest);
        attachments by volume UID. Volumes it used before are kept: `keep_only` lets go of
        them once the guest has released them."""
        attachments: dict[str, VolumeAttachment] = {}
        for uid in dict.fromkeys(volume_uids):
            status = self._status.get(uid)
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
            if others:
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
            attachments[uid] = await self._driver.attach(uid, owner)
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
            if uid in self._stored:
                await self._driver.detach(uid)
        await self._save()
        self._restate(uid)

    async def _save(self) -> None:
        if self._book is not None:
            await asyncio.to_thread(self._book.save, {v: set(g) for v, g in self._users.items()})
