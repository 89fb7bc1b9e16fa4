"""Which Instances wait on which objects, and when to look at them again.

An Instance applied before its Network, Image or Volume cannot progress, and kopf's retry
backoff (2 s doubling to 300 s) would leave it waiting minutes after the dependency turns
Ready. Instead its reconcile ends, its status says what it waits for, and it goes into this
index under the dependency's (kind, namespace, name). The dependency's own watch events
wake it (`wake`), and `due` gives a slow safety retry should an event be missed. Plain
code: the clock is passed in, and the caller does the re-running.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# (kind, namespace, name); cluster-scoped kinds have namespace "".
Dependency = tuple[str, str, str]

NETWORK, IMAGE, VOLUME, INSTANCE_TYPE = "Network", "Image", "Volume", "InstanceType"


def may_progress(kind: str, body: Mapping[str, Any]) -> bool:
    """Whether this state of a dependency can let the Instances waiting on it move on: the
    states the Instance's reconcile accepts, or that end its wait (a Failed Image)."""
    status = body.get("status") or {}
    if kind == NETWORK:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
            if isinstance(c, dict)
        )
    if kind == IMAGE:
        return status.get("phase") in ("Ready", "Failed")
    if kind == VOLUME:
        # Pending: a new Volume the Instance itself binds and has made; Creating and
        # Extending end with a node report, which is another event.
        return status.get("phase") not in ("Creating", "Extending", "Deleting")
    return True  # InstanceTypes have no status: being there is enough


@dataclass(frozen=True)
class _Entry:
    on: Dependency | None  # None: retried for another reason (an agent down)
    due: float


@dataclass
class Waiters:
    """Instance UID -> what it waits for and when to look again; dependency -> UIDs."""

    _entries: dict[str, _Entry] = field(default_factory=dict)
    _by_dependency: dict[Dependency, set[str]] = field(default_factory=dict)
    _due: list[tuple[float, str]] = field(default_factory=list)  # heap, stale entries skipped
    # When each dependency last woke its waiters, on the `tick` clock: an Instance whose
    # reconcile began before that saw the old state, and is run again at once.
    _woken: dict[Dependency, int] = field(default_factory=dict)
    _ticks: int = 0
    # Retries in a row that were not about a dependency, per UID: their backoff.
    _attempts: dict[str, int] = field(default_factory=dict)

    def tick(self) -> int:
        """A mark to take before a reconcile reads the World, for `wait`'s `since`."""
        self._ticks += 1
        return self._ticks

    def wait(self, uid: str, on: Dependency | None, due: float, since: int = 0) -> bool:
        """Hold `uid` until `on` changes (or `due`, the safety retry). False when `on` woke
        after `since` (the reconcile read its state before that): run it again now."""
        self._release(uid)
        if on is not None:
            self._attempts.pop(uid, None)
            if since > 0 and self._woken.get(on, 0) > since:
                return False
        self._entries[uid] = _Entry(on, due)
        if on is not None:
            self._by_dependency.setdefault(on, set()).add(uid)
        heapq.heappush(self._due, (due, uid))
        return True

    def attempts(self, uid: str) -> int:
        """Retries of `uid` in a row that were not about a dependency: its backoff."""
        return self._attempts.get(uid, 0)

    def retry(self, uid: str, due: float) -> None:
        """Hold `uid` for a retry that is not about a dependency (an agent down)."""
        attempts = self.attempts(uid) + 1
        self.wait(uid, None, due)
        self._attempts[uid] = attempts

    def wake(self, dependency: Dependency) -> list[str]:
        """The Instances waiting on `dependency`, let go to be run again."""
        self._ticks += 1
        self._woken[dependency] = self._ticks
        uids = sorted(self._by_dependency.pop(dependency, ()))
        for uid in uids:
            self._entries.pop(uid, None)
        return uids

    def gone(self, dependency: Dependency) -> None:
        """The dependency was deleted: its wake mark is not needed any more (waiters stay)."""
        self._woken.pop(dependency, None)

    def due(self, now: float) -> list[str]:
        """The Instances whose safety retry is due, let go to be run again."""
        found = []
        while self._due and self._due[0][0] <= now:
            when, uid = heapq.heappop(self._due)
            entry = self._entries.get(uid)
            if entry is not None and entry.due == when:
                self._release(uid)
                found.append(uid)
        return found

    def next_due(self) -> float | None:
        while self._due:
            when, uid = self._due[0]
            entry = self._entries.get(uid)
            if entry is not None and entry.due == when:
                return when
            heapq.heappop(self._due)
        return None

    def forget(self, uid: str) -> None:
        """`uid` no longer waits: it progressed, needs the user, or was deleted."""
        self._release(uid)
        self._attempts.pop(uid, None)

    def _release(self, uid: str) -> None:
        entry = self._entries.pop(uid, None)
        if entry is None or entry.on is None:
            return
        waiting = self._by_dependency.get(entry.on)
        if waiting is not None:
            waiting.discard(uid)
            if not waiting:
                del self._by_dependency[entry.on]

    def waiting_on(self, uid: str) -> Dependency | None:
        entry = self._entries.get(uid)
        return entry.on if entry is not None else None

    def waiting(self, dependency: Dependency) -> bool:
        return dependency in self._by_dependency

    def __contains__(self, uid: str) -> bool:
        return uid in self._entries

    def __len__(self) -> int:
        return len(self._entries)
