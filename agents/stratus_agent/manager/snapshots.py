"""Takes and removes the node's volume snapshots.

PUT returns at once; the copy goes on in one task per snapshot. A snapshot's data is made
once, from its volume as it is then: a later ensure of the same spec changes nothing, but a
failed one is tried again (nothing is retried by itself: the operator re-sends the spec).
Every state change is published on the event stream, stamped from the agent's one sequence
clock, as the volumes' and guests' reports are.

A volume is snapshotted while no guest uses it: a running guest's QEMU holds its data open
and writes to it, so a copy would be torn. The volume manager, which knows the volumes'
users, holds the volume still for the length of the copy (VolumeManager.held_still).

A snapshot is taken by the driver holding its volume (a file, a Ceph pool: see
stratus_agent.manager.backends) and stays there. A volume is restored from a snapshot by the
volume manager, like a clone: over the same driver, which holds exactly the snapshots that
are Ready. Snapshots are standalone copies,
so the volume they were taken of may go while they stay.
"""

from __future__ import annotations

import asyncio
import logging

from stratus_agent.base import EventSink, ProgressListener, StoredSnapshot, VolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.backends import Listing, VolumeDrivers, check_room
from stratus_agent.manager.reports import ReportBook
from stratus_agent.manager.sequence import SequenceClock
from stratus_agent.manager.volumes import VolumeManager
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import ATOMIC_COPIES
from stratus_api.volume_wire import NodeSnapshotSpec, NodeSnapshotState, NodeSnapshotStatus

log = logging.getLogger(__name__)


class SnapshotManager:
    def __init__(
        self,
        drivers: VolumeDrivers | VolumeDriver,
        volumes: VolumeManager,
        hub: EventSink,
        *,
        sequence: SequenceClock | None = None,
    ) -> None:
        """`drivers`: those `volumes` manages (a lone driver: `volumes`' only one);
        `sequence`: the clock `volumes` stamps its reports with, so the operator orders both
        kinds of report alike."""
        if drivers is not volumes.drivers and drivers is not volumes.drivers.local:
            raise ValueError("snapshots are taken over the volume manager's own drivers")
        self.drivers = volumes.drivers
        self._volumes = volumes
        self._desired: dict[str, NodeSnapshotSpec] = {}
        self._stored: dict[str, StoredSnapshot] = {}
        self._reports = ReportBook[NodeSnapshotStatus](
            hub, sequence or SequenceClock(), "snapshot",
            creating=NodeSnapshotState.CREATING, missing=NodeSnapshotState.MISSING,
        )  # fmt: skip
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.drivers.subscribe(self._adopt)

    async def start(self) -> None:
        """Adopt the snapshots the backends hold (Ready)."""
        await self.drivers.start()

    def _adopt(self, listing: Listing) -> None:
        """The snapshots a driver held when it was added: Ready, unless being taken."""
        for stored in listing.snapshots:
            self._stored.setdefault(stored.uid, stored)
            if stored.uid not in self._tasks:
                self._reports.adopt(self._report(stored.uid, NodeSnapshotState.READY))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self, uid: str) -> NodeSnapshotStatus | None:
        return self._reports.get(uid)

    def inventory(self) -> list[NodeSnapshotStatus]:
        """Every snapshot's status, stamped now: newer than every event already sent."""
        return self._reports.stamped_all()

    # -- reports -----------------------------------------------------------------------

    def _report(
        self,
        uid: str,
        state: NodeSnapshotState,
        *,
        generation: int | None = None,
        progress: int | None = None,
        reason: str = "",
        message: str = "",
    ) -> NodeSnapshotStatus:
        """A status of the snapshot as it stands, in `state`."""
        stored, spec = self._stored.get(uid), self._desired.get(uid)
        volume = stored.volume_uid if stored else None
        return NodeSnapshotStatus(
            uid=uid,
            state=state,
            generation=generation,
            volume=volume or (spec.volume if spec else None),
            size_bytes=stored.size_bytes if stored else None,
            location=stored.location if stored else None,
            progress=progress,
            reason=reason,
            message=message,
        )

    # -- taking ------------------------------------------------------------------------

    async def ensure(self, spec: NodeSnapshotSpec) -> NodeSnapshotStatus:
        """Accept a spec; the snapshot's status as of now (Creating at first). A snapshot
        that exists is kept as it is; a failed one is tried again."""
        uid = spec.uid
        self._desired[uid] = spec
        if uid not in self._tasks:
            stored = self._stored.get(uid)
            if stored is not None:
                if stored.volume_uid not in (None, spec.volume):
                    log.warning("snapshot %s: taken of volume %s, the spec says %s; kept",
                                uid, stored.volume_uid, spec.volume)  # fmt: skip
                self._reports.record(
                    self._report(uid, NodeSnapshotState.READY, generation=spec.generation)
                )
            else:
                self._reports.record(
                    self._report(
                        uid, NodeSnapshotState.CREATING, generation=spec.generation, progress=0
                    )
                )
                self._tasks[uid] = asyncio.create_task(self._take(uid), name=f"snapshot-{uid}")
        return self._reports[uid]

    async def _take(self, uid: str) -> None:
        task = asyncio.current_task()
        spec = self._desired[uid]
        backend = spec.backend.value
        try:
            if spec.ceph is not None:  # the pool is added, or given the newer access
                await self.drivers.pool(spec.ceph)
            driver = self.drivers.of_volume(spec.volume)
            with self._volumes.held_still(
                spec.volume,
                in_use=f"{backend} volumes are snapshotted while detached: a running guest's "
                "QEMU holds the volume's data open and writes to it, so a copy would be torn",
                while_used=spec.backend in ATOMIC_COPIES,
            ) as volume:
                assert driver is not None  # held_still: the volume is Available here
                if driver.backend is not spec.backend:
                    raise ProvisioningError(
                        GuestFailure.VOLUME_NOT_FOUND,
                        f"volume {spec.volume} is in {self.drivers.describe(driver)}; the "
                        f"snapshot's spec says {backend}",
                    )
                await check_room(
                    driver,
                    volume.size_bytes,
                    f"snapshot {spec.namespace}/{spec.name} needs up to {volume.size_bytes} bytes",
                )
                self._stored[uid] = await driver.snapshot(
                    spec.volume, uid, progress=self._progress_of(uid)
                )
                self.drivers.holds_snapshot(uid, driver)
            spec = self._desired[uid]  # the newest, for its generation
            self._reports.record(
                self._report(uid, NodeSnapshotState.READY, generation=spec.generation)
            )
        except ProvisioningError as exc:
            self._fail(uid, exc.reason, str(exc))
        except Exception as exc:
            log.exception("snapshot %s: taking it failed", uid)
            self._fail(uid, GuestFailure.AGENT_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            if self._tasks.get(uid) is task:
                self._tasks.pop(uid, None)

    def _fail(self, uid: str, reason: str, message: str) -> None:
        log.warning("snapshot %s: %s: %s", uid, reason, message)
        spec = self._desired.get(uid)
        self._reports.record(
            self._report(
                uid,
                NodeSnapshotState.FAILED,
                generation=spec.generation if spec else None,
                reason=reason,
                message=message,
            )
        )

    def _progress_of(self, uid: str) -> ProgressListener:
        def creating(percent: int, generation: int | None) -> NodeSnapshotStatus:
            return self._report(
                uid, NodeSnapshotState.CREATING, generation=generation, progress=percent
            )

        return self._reports.progress(uid, creating)

    # -- deleting ----------------------------------------------------------------------

    async def delete(self, uid: str) -> bool:
        """Remove the snapshot's data, stopping a copy under way; True if there was a
        snapshot. Volumes restored from it keep theirs. An unknown snapshot is fine."""
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._desired.pop(uid, None)
        existed = False
        held = self.drivers.of_snapshot(uid)
        for driver in [held] if held is not None else self.drivers.all():
            existed = await driver.remove_snapshot(uid) or existed
        self.drivers.holds_snapshot(uid, None)
        self._stored.pop(uid, None)
        existed = self._reports.get(uid) is not None or existed
        if existed:
            self._reports.record(NodeSnapshotStatus(uid=uid, state=NodeSnapshotState.MISSING))
        return existed
