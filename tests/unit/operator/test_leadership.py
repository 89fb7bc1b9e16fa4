"""Who may hold the operator's Lease: taken only when free, released, or not renewed for
its holder's duration as this process's own clock saw it."""

from __future__ import annotations

import datetime
from typing import Any

from stratus_operator.services.leadership import Seen, claim

WALL = datetime.datetime(2026, 11, 28, 8, 0, tzinfo=datetime.UTC)


def lease(holder: str, renewed: str = "2026-11-28T07:59:59.000000Z", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "stratus-operator", "resourceVersion": "41"},
            "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 10,
                     "leaseTransitions": 3, **spec}}  # fmt: skip


def test_a_missing_or_released_lease_is_taken_at_once() -> None:
    taken = claim(None, "b", None, 100.0, 10, WALL)
    assert taken is not None and taken["spec"]["holderIdentity"] == "b"
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["acquireTime"] == "2026-11-28T08:00:00.000000Z"
    released = claim(lease(""), "b", None, 100.0, 10, WALL)
    assert released is not None and released["spec"]["leaseTransitions"] == 4
    assert released["metadata"]["resourceVersion"] == "41"  # a racing write fails


def test_anothers_lease_is_taken_only_after_its_duration_without_change() -> None:
    held = lease("a")
    record = ("a", held["spec"]["renewTime"])
    assert claim(held, "b", None, 100.0, 10, WALL) is None  # never seen: wait a duration
    assert claim(held, "b", Seen(record, 100.0), 109.9, 10, WALL) is None
    taken = claim(held, "b", Seen(record, 100.0), 110.0, 10, WALL)
    assert taken is not None and taken["spec"]["holderIdentity"] == "b"
    # Renewed meanwhile (a new renew time): what was seen is stale, so it waits again.
    assert claim(lease("a", "2026-11-28T08:00:05.000000Z"), "b", Seen(record, 100.0), 200.0,
                 10, WALL) is None  # fmt: skip
    # The holder's own duration counts, not the claimant's.
    longer = lease("a", leaseDurationSeconds=30)
    assert claim(longer, "b", Seen(record, 100.0), 120.0, 10, WALL) is None


def test_the_holder_renews_without_a_transition() -> None:
    renewed = claim(lease("a"), "a", None, 100.0, 10, WALL)
    assert renewed is not None
    spec = renewed["spec"]
    assert spec["renewTime"] == "2026-11-28T08:00:00.000000Z"
    assert spec["leaseTransitions"] == 3 and "acquireTime" not in spec
