"""Kubernetes Events of our own, for the transitions a user acts on (controllers/notices.py
says which), recorded as client-go's recorder does: the same Event again (same object, type,
reason and message) within the window bumps the count and lastTimestamp of the one already
recorded instead of making another object, so `kubectl get events` shows `x3`, not three
lines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from stratus_operator.controllers.notices import notices
from stratus_operator.services.kube import Kube, NotFound

log = logging.getLogger(__name__)

Involved = dict[str, str]


@dataclass
class _Recorded:
    name: str  # the Event object's
    count: int
    last: float  # monotonic


class EventRecorder:
    def __init__(self, kube: Kube, window_seconds: float = 600.0, size: int = 4096) -> None:
        self._kube = kube
        self._window = window_seconds
        self._size = size
        self._recorded: dict[tuple[str, str, str, str], _Recorded] = {}

    async def changed(self, kind: str, ref: Involved, before: Any, after: Any) -> None:
        """Record what a status write from `before` to `after` calls for."""
        for notice in notices(kind, before, after):
            await self.record(ref, notice.type, notice.reason, notice.message)

    async def warn(self, ref: Involved, reason: str, message: str) -> None:
        """A Warning about `ref` that no status change of its own carries."""
        await self.record(ref, "Warning", reason, message)

    async def record(self, ref: Involved, type_: str, reason: str, message: str) -> None:
        key = (ref.get("uid", ""), type_, reason, message)
        now = time.monotonic()
        try:
            kept = self._recorded.pop(key, None)
            if kept is not None and now - kept.last < self._window:
                try:
                    await self._kube.bump_event(ref, kept.name, kept.count + 1)
                    self._keep(key, _Recorded(kept.name, kept.count + 1, now))
                    return
                except NotFound:  # expired (the API server keeps Events an hour)
                    pass
            name = await self._kube.post_event(ref, type_, reason, message)
            self._keep(key, _Recorded(name, 1, now))
        except Exception as exc:  # an Event is a courtesy: never fail a reconcile for it
            log.warning("%s %s: could not record event %s: %s", ref.get("kind"), ref.get("name"),
                        reason, exc)  # fmt: skip

    def _keep(self, key: tuple[str, str, str, str], recorded: _Recorded) -> None:
        self._recorded[key] = recorded  # the newest last: the oldest go first
        while len(self._recorded) > self._size:
            del self._recorded[next(iter(self._recorded))]
