"""Kubernetes Events of our own, for the transitions a user acts on (controllers/notices.py
says which), recorded as client-go's recorder does: the same Event again (same object, type,
reason and message) within the window bumps the count and lastTimestamp of the one already
recorded instead of making another object, so `kubectl get events` shows `x3`, not three
lines. Beyond a rate (settings.EventSettings) Events are dropped and counted, as the
kubelet's are: a burst of objects must not double the requests the work needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stratus_operator.controllers.notices import notices
from stratus_operator.services.kube import Kube, NotFound
from stratus_operator.services.settings import EventSettings

log = logging.getLogger(__name__)

Involved = dict[str, str]


@dataclass
class _Recorded:
    name: str  # the Event object's
    count: int
    last: float  # monotonic


class TokenBucket:
    """`rate` tokens a second, at most `burst` kept; each take spends one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class EventRecorder:
    def __init__(
        self, kube: Kube, settings: EventSettings | None = None,
        dropped: Callable[[str], None] | None = None, window_seconds: float = 600.0,
        size: int = 4096, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        settings = settings or EventSettings()
        self._kube = kube
        self._bucket = TokenBucket(settings.qps, settings.burst, clock)
        self._dropped = dropped or (lambda type_: None)
        self._window = window_seconds
        self._size = size
        self._clock = clock
        self._recorded: dict[tuple[str, str, str, str], _Recorded] = {}

    async def changed(self, kind: str, ref: Involved, before: Any, after: Any) -> None:
        """Record what a status write from `before` to `after` calls for."""
        for notice in notices(kind, before, after):
            await self.record(ref, notice.type, notice.reason, notice.message)

    async def warn(self, ref: Involved, reason: str, message: str) -> None:
        """A Warning about `ref` that no status change of its own carries."""
        await self.record(ref, "Warning", reason, message)

    async def record(self, ref: Involved, type_: str, reason: str, message: str) -> None:
        if not self._bucket.take():
            self._dropped(type_)
            return
        key = (ref.get("uid", ""), type_, reason, message)
        now = self._clock()
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
