"""Values derived from what each member brings to a Network or a SecurityGroup (its DNS
names, MACs, ports), kept up to date one member at a time: a guest that comes or goes costs
O(its items * log n), not a rebuild over every member. At 10,000 Instances the rebuilds,
made each second while guests came, were most of what the per-Network and per-group
daemons cost (bench/control_plane.py). Pure data structures; services/memberships.py feeds
them."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
I = TypeVar("I")  # noqa: E741  (an item a share brings)


class Tally(Protocol[T_contra]):
    """A value kept from shares as they are added and removed."""

    def add(self, share: T_contra) -> None: ...

    def remove(self, share: T_contra) -> None: ...


class SortedBag(Generic[T, I]):
    """The distinct items the shares bring, sorted by key. Each is counted by the shares
    bringing it, so it leaves with the last of them; items of equal keys are one item."""

    def __init__(self, items_of: Callable[[T], Iterable[I]], key: Callable[[I], Any]) -> None:
        self._items_of, self._key = items_of, key
        self._keys: list[Any] = []
        self._items: list[I] = []
        self._counts: dict[Hashable, int] = {}
        self._view: list[I] | None = None

    def add(self, share: T) -> None:
        for item in self._items_of(share):
            key = self._key(item)
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if count == 0:
                at = bisect_left(self._keys, key)
                self._keys.insert(at, key)
                self._items.insert(at, item)
                self._view = None

    def remove(self, share: T) -> None:
        for item in self._items_of(share):
            key = self._key(item)
            count = self._counts.get(key, 0)
            if count > 1:
                self._counts[key] = count - 1
            elif count == 1:
                del self._counts[key]
                at = bisect_left(self._keys, key)
                del self._keys[at]
                del self._items[at]
                self._view = None

    def items(self) -> list[I]:
        """The items, sorted: the same list until one comes or goes, then a new one (a spec
        built from the old list keeps it as it was)."""
        if self._view is None:
            self._view = list(self._items)
        return self._view

    def __len__(self) -> int:
        return len(self._items)


class Grouped(Generic[T, I]):
    """SortedBags by a group each share names (its node): group -> its items, sorted; a
    group whose last item left is gone."""

    def __init__(
        self,
        group_of: Callable[[T], str | None],
        items_of: Callable[[T], Iterable[I]],
        key: Callable[[I], Any],
    ) -> None:
        self._group_of, self._items_of, self._key = group_of, items_of, key
        self._bags: dict[str, SortedBag[T, I]] = {}

    def add(self, share: T) -> None:
        group = self._group_of(share)
        if group:
            bag = self._bags.get(group)
            if bag is None:
                bag = self._bags[group] = SortedBag(self._items_of, self._key)
            bag.add(share)

    def remove(self, share: T) -> None:
        group = self._group_of(share)
        bag = self._bags.get(group) if group else None
        if bag is not None:
            bag.remove(share)
            if not len(bag):
                del self._bags[group]  # type: ignore[arg-type]

    def items(self) -> dict[str, list[I]]:
        """group -> its items, sorted; groups in order."""
        return {group: self._bags[group].items() for group in sorted(self._bags)}


class Counted(Generic[T]):
    """How many items the shares bring, and the groups (nodes) at least one is in."""

    def __init__(self, groups_of: Callable[[T], Iterable[str | None]]) -> None:
        self._groups_of = groups_of
        self.count = 0
        self._groups: dict[str, int] = {}

    def add(self, share: T) -> None:
        for group in self._groups_of(share):
            self.count += 1
            if group:
                self._groups[group] = self._groups.get(group, 0) + 1

    def remove(self, share: T) -> None:
        for group in self._groups_of(share):
            self.count -= 1
            if group:
                left = self._groups[group] - 1
                if left:
                    self._groups[group] = left
                else:
                    del self._groups[group]

    def groups(self) -> tuple[str, ...]:
        return tuple(sorted(self._groups))
