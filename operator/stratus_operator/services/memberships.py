"""Which Instances are in each Network and SecurityGroup, and what each brings to it (its
MACs and DNS names, its ports), kept from the Instances' watch events instead of a scan of
every member each round: the per-Network and per-group daemons look every second, and at
10,000 Instances their scans were a tenth of the operator's CPU (bench/control_plane.py).

The Instances index (handlers/indexes.py) reports each event's UID and keys; a key's
Membership looks again only at the Instances reported since its last look, and is built
whole the first time and on each resync (an Instance deleted before it had a finalizer
brings no event the index sees).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stratus_api.v1alpha1 import Instance
from stratus_operator.controllers.tallies import Tally
from stratus_operator.services.world import World

T = TypeVar("T")
A = TypeVar("A", bound=Tally[Any])
Key = Hashable  # the Instances index's key (world.instance_on_network, instance_in_group)


@dataclass
class Membership(Generic[T]):
    """Per member Instance UID, what it brings (`share`); `version` moves when any share
    does. Versions are never reused, not even by a key kept again after it was dropped.
    Tallies (controllers/tallies.py) derived from the shares follow each share's change."""

    shares: dict[str, T] = field(default_factory=dict)
    version: int = 0
    _tallies: dict[str, Tally[T]] = field(default_factory=dict)

    def tally(self, name: str, make: Callable[[], A]) -> A:
        """The tally `name`, made by `make()` from every share the first time (and after
        the shares were built whole again), then kept up to date share by share."""
        kept = self._tallies.get(name)
        if kept is None:
            made = make()
            for share in self.shares.values():
                made.add(share)
            self._tallies[name] = made
            return made
        return kept  # type: ignore[return-value]

    def rebuilt(self, shares: dict[str, T], version: int) -> None:
        """Every share anew: the tallies are made again from them when next asked."""
        self.shares, self.version = shares, version
        self._tallies.clear()

    def replace(self, uid: str, share: T | None, version: int) -> None:
        """One member's share anew (None: it left), and the tallies told."""
        self.version = version
        old = self.shares.pop(uid, None) if share is None else self.shares.get(uid)
        if share is not None:
            self.shares[uid] = share
        for tally in self._tallies.values():
            if old is not None:
                tally.remove(old)
            if share is not None:
                tally.add(share)


class Memberships:
    def __init__(self) -> None:
        self._tracked: dict[Key, Membership[Any]] = {}
        self._dirty: dict[Key, set[str]] = {}
        self._keys: dict[str, frozenset[Key]] = {}  # UID -> its keys at its last event
        self._versions = itertools.count(1)

    def changed(self, uid: str, keys: Iterable[Key]) -> None:
        """An Instance's watch event: it is looked at again under its keys, old and new
        (a NIC moved to another Network leaves the old one)."""
        new = frozenset(keys)
        for key in self._keys.get(uid, frozenset()) | new:
            dirty = self._dirty.get(key)
            if dirty is not None:
                dirty.add(uid)
        self._keys[uid] = new

    def forget(self, uid: str) -> None:
        """The Instance is gone: it leaves every key it was under."""
        self.changed(uid, ())
        self._keys.pop(uid, None)

    def refresh(
        self,
        key: Key,
        world: World,
        users: Callable[[], Iterable[str]],
        share: Callable[[Instance], T | None],
        *,
        whole: bool = False,
    ) -> Membership[T]:
        """The key's Membership brought up to date: built from `users()` (the UIDs under
        the key) the first time and when `whole`, else from the Instances changed since.
        `share` says what an Instance brings; None: nothing (it is being deleted, or its
        NICs left)."""
        found: Membership[T] | None = self._tracked.get(key)
        if found is None or whole:
            self._dirty[key] = set()
            shares = {}
            for uid in users():
                instance = world.instance(uid)
                if instance is not None and (brought := share(instance)) is not None:
                    shares[uid] = brought
            if found is None:
                found = self._tracked[key] = Membership()
            if shares != found.shares:
                found.rebuilt(shares, next(self._versions))
            return found
        dirty, self._dirty[key] = self._dirty[key], set()
        for uid in dirty:
            instance = world.instance(uid)
            brought = share(instance) if instance is not None else None
            if brought is None and uid not in found.shares:
                continue
            if brought is None or found.shares.get(uid) != brought:
                found.replace(uid, brought, next(self._versions))
        return found

    def drop(self, key: Key) -> None:
        """Stop keeping the key (its Network or group is gone)."""
        self._tracked.pop(key, None)
        self._dirty.pop(key, None)
