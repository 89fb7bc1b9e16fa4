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

from collections.abc import Callable, Hashable, Iterable
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
    old: Iterable[T], new: Iterable[T], key: Callable[[T], Hashable]
) -> tuple[list[T], list[T]]:
    """(added, removed): the items of `new` whose key `old` lacks, and of `old` whose key
    `new` lacks, each sorted by key."""
    was = {key(item): item for item in old}
    now = {key(item): item for item in new}
    return (
        [now[k] for k in sorted(now.keys() - was.keys())],  # type: ignore[type-var]
        [was[k] for k in sorted(was.keys() - now.keys())],  # type: ignore[type-var]
    )


def applied(
    current: Iterable[T], added: Iterable[T], removed: Iterable[T], key: Callable[[T], Hashable]
) -> list[T]:
    """`current` without `removed` and with `added` (by key), sorted by key."""
    items = {key(item): item for item in current}
    for item in removed:
        items.pop(key(item), None)
    for item in added:
        items[key(item)] = item
    return [items[k] for k in sorted(items)]  # type: ignore[type-var]
