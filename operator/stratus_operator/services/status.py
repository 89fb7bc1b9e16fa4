"""The one way status is written, for every kind.

The operator is the only writer of Stratus status (agents hold no credentials) and one
replica is active, so writes are serialised per object in-process and start from the last
status this process wrote (else the watched one): one merge patch per change, no read
first. Once the watch shows a status other than that at or after the version written
(someone edited it by hand), the next write starts from the watched one, and puts back
what the operator owns. The patch names the object's UID, so a write never lands on an
object re-created under the same name. Events follow the condition transitions a write
makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stratus_api.v1alpha1.base import ApiModel, Condition, Resource
from stratus_operator.services.events import EventRecorder
from stratus_operator.services.kube import Kube, NotFound
from stratus_operator.services.metrics import OperatorMetrics

S = TypeVar("S", bound=ApiModel)
Change = Callable[[S, int], S]  # (current status, metadata.generation) -> new status


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    plural: str
    namespace: str | None
    name: str
    uid: str
    created: str | None = None  # metadata.creationTimestamp

    @classmethod
    def of(cls, obj: Resource) -> ObjectRef:
        meta = obj.metadata
        return cls(obj.crd.kind, obj.crd.plural, meta.namespace, meta.name or "", meta.uid or "",
                   meta.creation_timestamp)  # fmt: skip

    def involved(self) -> dict[str, str]:
        ref = {"apiVersion": "stratus.io/v1alpha1", "kind": self.kind, "name": self.name,
               "uid": self.uid}  # fmt: skip
        if self.namespace:
            ref["namespace"] = self.namespace
        return ref


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 patch turning `old` into `new`: changed keys, and None for removed ones."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif value != before:
            patch[key] = value
    return patch


@dataclass
class _Written:
    """The status this process last wrote to an object, and the resourceVersion it made."""

    status: Any
    version: str | None
    seen: bool = False  # the watch delivered `version`: later events are newer than it


@dataclass
class _Batch:
    """Changes to one object's status waiting to be written together."""

    changes: list[tuple[Change[Any], Any, int, type[Any]]] = field(default_factory=list)
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class StatusWriter:
    """Writes are coalesced per object for `coalesce_seconds`: a dispatch and the node's
    report that follows at once cost one request, not two. Each caller still waits until
    its change is written (or failed)."""

    def __init__(
        self, kube: Kube, events: EventRecorder, coalesce_seconds: float = 0.0,
        metrics: OperatorMetrics | None = None,
    ) -> None:  # fmt: skip
        self._kube = kube
        self._events = events
        self._metrics = metrics
        self._coalesce = coalesce_seconds
        self._batches: dict[str, _Batch] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._written: dict[str, _Written] = {}
        # What the watch delivers while a write is in flight, (version, status) in order:
        # the write's own event may come before its answer.
        self._in_flight: dict[str, list[tuple[str, object]]] = {}

    async def write(
        self, ref: ObjectRef, watched: S | None, generation: int, change: Change[S], model: type[S]
    ) -> S | None:
        """Apply `change` to the object's status and write the difference; the status after
        the batch it went out with, or None when nothing changed or the object is gone."""
        batch = self._batches.get(ref.uid)
        if batch is None:
            batch = self._batches[ref.uid] = _Batch()
            asyncio.get_running_loop().create_task(self._flush(ref, batch))
        batch.changes.append((change, watched, generation, model))
        written: S | None = await asyncio.shield(batch.done)
        return written

    async def _flush(self, ref: ObjectRef, batch: _Batch) -> None:
        await asyncio.sleep(self._coalesce)
        lock = self._locks.setdefault(ref.uid, asyncio.Lock())
        async with lock:
            if self._batches.get(ref.uid) is batch:
                del self._batches[ref.uid]  # later writes start the next batch
            try:
                result = await self._apply(ref, batch)
            except Exception as exc:
                batch.done.set_exception(exc)
                return
        batch.done.set_result(result)

    async def _apply(self, ref: ObjectRef, batch: _Batch) -> Any:
        _, watched, _, model = batch.changes[0]
        known = self._written.get(ref.uid)
        current = known.status if known and isinstance(known.status, model) else watched or model()
        updated = current
        for change, _, generation, _ in batch.changes:
            updated = change(updated, generation)
        old, new = current.to_wire(), updated.to_wire()
        if old == new:
            return None
        body = {"metadata": {"uid": ref.uid}, "status": merge_patch(old, new)}
        self._in_flight[ref.uid] = []
        try:
            version = await self._kube.patch_status(ref.plural, ref.namespace, ref.name, body)
        except NotFound:
            self.forget(ref.uid)
            return None
        finally:
            delivered = self._in_flight.pop(ref.uid, [])
        self._written[ref.uid] = _Written(updated, version)
        for seen_version, seen_status in delivered:
            self.caught_up(ref.uid, seen_status, seen_version)
        if self._metrics is not None:
            self._metrics.transition(
                ref.kind, ref.uid, ref.created, _conditions(current), _conditions(updated)
            )
        await self._events.changed(ref.kind, ref.involved(), current, updated)
        return updated

    def caught_up(self, uid: str, watched: object, version: str | None) -> None:
        """The watch delivered `watched` as the object's status at `version`. Events from
        before the last write are passed over; from its version on, the watched status is
        the truth: equal to what was written, it replaces the kept copy (one copy held,
        the index's, not two); different, somebody else wrote it, and the kept copy goes,
        so the next write starts from the watched one."""
        if version is None:
            return
        if (waiting := self._in_flight.get(uid)) is not None:
            waiting.append((version, watched))  # judged once the write's version is known
            return
        known = self._written.get(uid)
        if known is None:
            return
        if version == known.version:
            known.seen = True
        elif not known.seen:
            return  # from before the write, still on its way
        if known.status == watched:
            known.status = watched
        else:
            del self._written[uid]

    def forget(self, uid: str) -> None:
        """The object is gone: drop what is kept for it."""
        self._written.pop(uid, None)
        self._in_flight.pop(uid, None)
        self._locks.pop(uid, None)
        if self._metrics is not None:
            self._metrics.forget(uid)


def _conditions(status: ApiModel) -> list[Condition]:
    found = getattr(status, "conditions", [])
    return list(found) if isinstance(found, list) else []
