"""Brings guests to their spec: node-side resources first, then the compute driver.

The work goes on in one task per guest, which always converges to the newest spec it was
given. PUT waits for that task at most `answer_within` seconds: a guest that settles that
fast is answered with its final state, so the operator writes its status once; a slower
one is answered with Provisioning, and the rest reaches the operator through the event
stream.

The agent heals what it can by itself: a transient failure (is_transient) is retried with
backoff until it succeeds, a newer spec arrives or the guest is deleted; a guest whose
applied spec says Running (or Paused) and that stops or crashes while nothing here is working
on it is started again, with its own backoff (runStrategy Always), and counted in its status.

The manager is the one owner of a guest's generation (the applied spec's) and of its restart
token: a spec whose restart_token differs from the one last acted on restarts the guest
once, through the compute driver's ensure; the token acted on is kept in the guest's record
on disk, so neither a repeated PUT nor an agent restart restarts it again. The first spec a
guest ever gets only adopts its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from dataclasses import replace

from stratus_agent.base import ComputeDriver, EventSink, Provisioner
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.recovery import RecoveryPolicy, RestartBook, RestartRecord
from stratus_agent.manager.sequence import SequenceClock
from stratus_api.guest import GuestEvent, GuestSpec, GuestState, GuestStatus, PowerState
from stratus_api.reasons import GuestFailure, is_transient

log = logging.getLogger(__name__)

# Why a guest stopped before the agent started it again (GuestStatus.last_restart_reason).
CRASHED = "Crashed"
STOPPED_OUTSIDE = "StoppedOutsideStratus"
_DOWN = (GuestState.STOPPED, GuestState.CRASHED)
# States the manager knows better than the driver: still being prepared, or failed before
# (or while) the driver got the guest.
_HELD = (GuestState.PROVISIONING, GuestState.FAILED)
# Powers a guest is kept up in: one that goes down on its own is started again.
_UP = (PowerState.RUNNING, PowerState.PAUSED)
_WANTED = {
    PowerState.RUNNING: GuestState.RUNNING,
    PowerState.PAUSED: GuestState.PAUSED,
    PowerState.STOPPED: GuestState.STOPPED,
}


class StaleSpecError(Exception):
    """A spec older than one already accepted: applying it would roll the guest back."""


def _wanted(spec: GuestSpec) -> GuestState:
    return _WANTED[spec.power]


class GuestManager:
    def __init__(
        self,
        compute: ComputeDriver,
        provisioner: Provisioner,
        hub: EventSink,
        *,
        policy: RecoveryPolicy | None = None,
        restarts: RestartBook | None = None,
        sequence: SequenceClock | None = None,
        answer_within: float = 0.0,
    ) -> None:
        self.compute = compute
        self._answer_within = answer_within
        self._provisioner = provisioner
        self._hub = hub
        self._policy = policy or RecoveryPolicy()
        self._book = restarts  # None: counts live in memory only
        self._desired: dict[str, GuestSpec] = {}
        self._applied: dict[str, GuestSpec] = {}
        # Generation of the spec last handed to the compute driver: what the guest's
        # definition is (being) built from, so what its events are about. Set before the
        # driver runs, as a lifecycle event may arrive before or after its answer.
        self._driven: dict[str, int] = {}
        self._status: dict[str, GuestStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Set when a newer spec arrives, so it does not wait out a backoff meant for the old.
        self._wake: dict[str, asyncio.Event] = {}
        self._records: dict[str, RestartRecord] = {}
        self._streaks: dict[str, int] = {}  # restarts in a row, for the backoff
        self._up_since: dict[str, float] = {}  # monotonic time the guest was last seen start
        self._deleting: set[str] = set()
        self._stopping = False
        self._node_task: asyncio.Task[None] | None = None
        self._sequence = sequence or SequenceClock()
        # PUTs waiting for their guest's next result (_first_result).
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}

    async def start(self) -> None:
        if self._book is not None:
            self._records = await asyncio.to_thread(self._book.load_all)
        await self.compute.start(self._record)
        for status in await self.compute.list():
            self._status[status.uid] = self._stamped(self._with_restarts(status))
            if status.state is GuestState.RUNNING:
                self._up_since[status.uid] = time.monotonic()
        self._node_task = asyncio.create_task(self._check_node_forever(), name="node-check")

    async def stop(self) -> None:
        self._stopping = True  # cancelled tasks must not schedule restarts on their way out
        tasks = [*self._tasks.values(), *([self._node_task] if self._node_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.compute.stop()

    def _with_restarts(self, status: GuestStatus) -> GuestStatus:
        """The status with what the guest's record says: restart count and reason, and the
        restart token acted on."""
        record = self._records.get(status.uid)
        if record is None:
            return status
        update = {
            "restarts": record.restarts,
            "last_restart_reason": record.last_reason,
            "restart_token": record.restart_token,
        }
        if all(getattr(status, key) == value for key, value in update.items()):
            return status
        return status.model_copy(update=update)

    def _record(self, status: GuestStatus) -> None:
        uid = status.uid
        previous = self._status.get(uid)
        if status.generation is None:
            # A driver event: the manager owns the generation (after an agent restart,
            # the one listed from the definition until a spec is handed over).
            generation = self._driven.get(uid, previous.generation if previous else None)
            status = status.model_copy(update={"generation": generation})
        status = self._with_restarts(status)
        if previous is not None and previous.model_copy(update={"sequence": None}) == status:
            return  # the driver and the converge loop may both report the same change
        status = self._stamped(status)
        if status.state is GuestState.RUNNING and (
            previous is None or previous.state is not GuestState.RUNNING
        ):
            self._up_since[uid] = time.monotonic()
        self._status[uid] = status
        if status.state is GuestState.MISSING:
            self._status.pop(uid, None)
        self._hub.publish(
            GuestEvent(type="guest", time=datetime.datetime.now(datetime.UTC), guest=status)
        )
        if status.state in _DOWN:
            self._restart_if_wanted(uid)

    def _stamped(self, status: GuestStatus) -> GuestStatus:
        return status.model_copy(update={"sequence": self._sequence.next()})

    def status(self, uid: str) -> GuestStatus | None:
        return self._status.get(uid)

    def specs(self) -> dict[str, GuestSpec]:
        """The newest spec accepted for each guest, by UID: applied, or being applied. Empty
        for a guest found running at start until the operator sends its spec again."""
        return {**self._applied, **self._desired}

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
        previous = self._desired.get(uid)
        self._desired[uid] = spec
        if uid in self._tasks:
            if spec != previous:
                self._wake[uid].set()
        else:
            # Also after a failure, transient or not: the same spec again means try again.
            if current is None or current.state in (GuestState.FAILED, GuestState.MISSING):
                self._record(
                    GuestStatus(uid=uid, state=GuestState.PROVISIONING, generation=spec.generation)
                )
            self._spawn(uid)
            if self._answer_within > 0:
                await self._first_result(uid)
        return self._status.get(uid) or GuestStatus(
            uid=uid, state=GuestState.PROVISIONING, generation=spec.generation
        )

    async def _first_result(self, uid: str) -> None:
        """Wait until the task just spawned for `uid` records a result, at most
        `answer_within` seconds; the task goes on either way."""
        recorded = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(uid, []).append(recorded)
        try:
            await asyncio.wait({recorded, self._tasks[uid]}, timeout=self._answer_within)
        finally:
            waiting = self._waiting.get(uid, [])
            if recorded in waiting:
                waiting.remove(recorded)
                if not waiting:
                    del self._waiting[uid]

    def _spawn(self, uid: str, delay: float = 0.0, restart_reason: str | None = None) -> None:
        self._wake[uid] = asyncio.Event()
        self._tasks[uid] = asyncio.create_task(
            self._converge(uid, delay, restart_reason), name=f"guest-{uid}"
        )

    async def _converge(self, uid: str, delay: float, restart_reason: str | None) -> None:
        task = asyncio.current_task()
        restart_of = self._desired[uid] if restart_reason else None
        attempt = 0
        try:
            while True:
                if delay > 0:
                    await self._pause(uid, delay)
                spec = self._desired[uid]
                if restart_of is not None and restart_reason is not None:
                    if spec is restart_of:  # not when a newer spec came during the wait
                        await self._count_restart(uid, restart_reason)
                    restart_of = None
                failure = await self._apply(uid, spec)
                if self._desired.get(uid) is not spec:
                    attempt, delay = 0, 0.0  # a newer spec came meanwhile: apply it now
                    continue
                if failure is None or not is_transient(failure):
                    return  # done, or only the user can fix it
                delay = self._policy.retry.delay(attempt)
                attempt += 1
                log.warning("guest %s: %s (transient), retrying in %.1f s", uid, failure, delay)
        finally:
            if self._tasks.get(uid) is task:
                self._tasks.pop(uid, None)
                self._wake.pop(uid, None)
            # It may have stopped while this task worked on it, when no restart was made.
            self._restart_if_wanted(uid)

    async def _apply(self, uid: str, spec: GuestSpec) -> str | None:
        """One attempt at `spec`; the failure reason, or None when it worked."""
        failure: str | None = None
        acted: RestartRecord | None = None
        try:
            facts = await self._provisioner.prepare(spec)
            restart = self._restart_asked(spec)
            if restart:
                log.info(
                    "guest %s: restart token %r is new: restarting it", uid, spec.restart_token
                )
            self._driven[uid] = spec.generation
            seen = self._status.get(uid)
            status = await self.compute.ensure(spec, facts, restart=restart)
            await self._provisioner.settle(spec)  # what the guest no longer uses is let go
            reported = self._status.get(uid)
            if reported is not seen:
                # The driver reported a change while it (or settle) worked (the guest
                # started, then was destroyed from outside): that report is newer than its
                # answer, which was read before it. The answer must not undo it.
                status = reported or GuestStatus(uid=uid, state=GuestState.MISSING)
            self._applied[uid] = spec
            acted = self._act_on_token(uid, spec.restart_token)
        except ProvisioningError as exc:
            failure = exc.reason
            status = GuestStatus(uid=uid, state=GuestState.FAILED, reason=failure, message=str(exc))
        except Exception as exc:
            log.exception("guest %s: ensure failed", uid)
            failure = GuestFailure.AGENT_ERROR
            status = GuestStatus(
                uid=uid,
                state=GuestState.FAILED,
                reason=failure,
                message=f"{type(exc).__name__}: {exc}",
            )
        # No await between the driver's answer and recording it: a change the driver
        # reports meanwhile (the guest stopped) must not be overwritten by this older one.
        self._record(status.model_copy(update={"generation": spec.generation, "sequence": None}))
        for recorded in self._waiting.pop(uid, []):
            if not recorded.done():
                recorded.set_result(None)
        if acted is not None and self._book is not None:
            # Saved after the restart, not before: an agent that dies in between restarts
            # the guest again rather than report a restart that never happened.
            await asyncio.to_thread(self._book.save, uid, acted)
        return failure

    def _restart_asked(self, spec: GuestSpec) -> bool:
        """Whether `spec` carries a restart token not yet acted on. The first spec a guest
        gets (no record of a token) only adopts its token: creating a guest boots it."""
        record = self._records.get(spec.uid)
        return (
            record is not None
            and record.token_known
            and (record.restart_token != spec.restart_token)
        )

    def _act_on_token(self, uid: str, token: str | None) -> RestartRecord | None:
        """Note `token` as acted on, in memory; the record to save, or None if unchanged."""
        old = self._records.get(uid, RestartRecord())
        if old.token_known and old.restart_token == token:
            return None
        self._records[uid] = record = replace(old, restart_token=token, token_known=True)
        return record

    async def _pause(self, uid: str, seconds: float) -> None:
        wake = self._wake.get(uid)
        if wake is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()

    def _restart_if_wanted(self, uid: str) -> None:
        """Start a guest again that is down although its applied spec says Running, unless
        something here is already working on it or deleting it."""
        if self._stopping or uid in self._deleting or uid in self._tasks:
            return
        applied, status = self._applied.get(uid), self._status.get(uid)
        if applied is None or applied.power not in _UP:
            return  # runStrategy Halted, or a spec this agent has not applied
        if status is None or status.state not in _DOWN:
            return
        reason = CRASHED if status.state is GuestState.CRASHED else STOPPED_OUTSIDE
        up_since = self._up_since.pop(uid, None)
        if up_since is not None and time.monotonic() - up_since >= (
            self._policy.restart_stable_seconds
        ):
            self._streaks[uid] = 0
        streak = self._streaks.get(uid, 0)
        self._streaks[uid] = streak + 1
        delay = self._policy.restart.delay(streak)
        log.warning(
            "guest %s: %s while its spec says %s; starting it again in %.1f s",
            uid, status.state.value.lower(), applied.power.value, delay,
        )  # fmt: skip
        self._desired[uid] = applied
        self._spawn(uid, delay, reason)

    async def _count_restart(self, uid: str, reason: str) -> None:
        old = self._records.get(uid, RestartRecord())
        self._records[uid] = record = replace(old, restarts=old.restarts + 1, last_reason=reason)
        if self._book is not None:
            await asyncio.to_thread(self._book.save, uid, record)

    async def _check_node_forever(self) -> None:
        while True:
            await asyncio.sleep(self._policy.node_check_seconds)
            try:
                await self._provisioner.check_node()
            except Exception as exc:
                # Guests that need it fail with the same problem and retry; keep checking.
                log.warning("node check failed: %s", exc)

    async def delete(self, uid: str) -> bool:
        self._deleting.add(uid)
        try:
            task = self._tasks.pop(uid, None)
            self._wake.pop(uid, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            for state in (
                self._desired,
                self._applied,
                self._driven,
                self._streaks,
                self._up_since,
            ):
                state.pop(uid, None)
            existed = await self.compute.delete(uid)
            await self._provisioner.cleanup(uid)
            if self._book is not None:
                await asyncio.to_thread(self._book.remove, uid)
            self._records.pop(uid, None)
            existed = self._status.pop(uid, None) is not None or existed
        finally:
            self._deleting.discard(uid)
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
        failed before the driver ever saw them.

        Stamped as of the moment before the driver's read: newer than every event sent
        before it, older than one recorded while the read ran (a guest that finished
        starting meanwhile), which is newer than what the read saw, and is listed as is."""
        read_at = self._sequence.next()
        listed = await self.compute.list()
        known = {
            status.uid: self._with_restarts(status).model_copy(update={"sequence": read_at})
            for status in listed
        }
        for uid, status in self._status.items():
            newer = (status.sequence or 0) > read_at
            if newer or uid not in known or status.state in _HELD:
                known[uid] = status if newer else status.model_copy(update={"sequence": read_at})
        return sorted(known.values(), key=lambda status: status.uid)
