"""Node specs sent as changes (PATCH) instead of whole (PUT), where only their big lists
changed: a Network's DNS names and its peers' MACs, a group's remote addresses. Those grow
with the guests; sending and parsing all 10,000 of them every time one guest came or went
made each change cost O(guests) on the operator and on the node.

Every spec carries a `revision`, chosen by the operator. A change names the revision it
applies to (`base`) and the one it makes; a node holding any other answers 409, and the
operator sends the whole spec. The lists are kept sorted by the same keys on both sides, so
a change applied gives exactly the spec the operator built.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

from pydantic import Field

T = TypeVar("T")
REVISION_PATTERN = r"^[A-Za-z0-9._-]{0,64}$"


def revision_field() -> Any:
    return Field(
        default="",
        pattern=REVISION_PATTERN,
        description="The operator's name for this version of the spec; a change (PATCH) "
        "names the one it applies to. Empty: sent by something that sends whole specs only.",
    )


def between(
    old: Sequence[T], new: Sequence[T], key: Callable[[T], Hashable]
) -> tuple[list[T], list[T]]:
    """(added, removed): the items of `new` whose key `old` lacks, and of `old` whose key
    `new` lacks, each sorted by key; each list holds a key once (as every spec's lists
    are built). Two lists built from the same kept items (the operator's tallies) share
    most of them: those are told apart by identity, at C speed, and only the rest by key
    (an item made again, equal to one before, is no change)."""
    if old is new:
        return [], []
    old_ids = dict(zip(map(id, old), old, strict=True))
    new_ids = dict(zip(map(id, new), new, strict=True))
    gone = {key(old_ids[i]): old_ids[i] for i in old_ids.keys() - new_ids.keys()}
    came = {key(new_ids[i]): new_ids[i] for i in new_ids.keys() - old_ids.keys()}
    return (
        [came[k] for k in sorted(came.keys() - gone.keys())],  # type: ignore[type-var]
        [gone[k] for k in sorted(gone.keys() - came.keys())],  # type: ignore[type-var]
    )


def applied(
    current: Sequence[T], added: Iterable[T], removed: Iterable[T], key: Callable[[T], Hashable]
) -> list[T]:
    """`current` without `removed` and with `added` (by key), sorted by key. A sorted
    `current` (as the operator builds every list) takes each item in its place, O(change *
    log n); any other is sorted whole."""
    keys: list[Any] = list(map(key, current))
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        items = dict(zip(keys, current, strict=True))
        for item in removed:
            items.pop(key(item), None)
        for item in added:
            items[key(item)] = item
        return [items[k] for k in sorted(items)]
    result = list(current)
    for item in removed:
        gone = key(item)
        at = bisect_left(keys, gone)
        if at < len(keys) and keys[at] == gone:
            del keys[at], result[at]
    for item in added:
        wanted = key(item)
        at = bisect_left(keys, wanted)
        if at < len(keys) and keys[at] == wanted:
            result[at] = item
        else:
            keys.insert(at, wanted)
            result.insert(at, item)
    return result
