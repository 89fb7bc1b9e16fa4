"""Kubernetes-style conditions: set one, keeping lastTransitionTime when nothing changed."""

from __future__ import annotations

import datetime

from stratus_api.reasons import ConditionType, Reason
from stratus_api.v1alpha1.base import Condition, ConditionStatus


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    at: datetime.datetime | None = None,
) -> list[Condition]:
    """A new list with condition `type_` set; other conditions are kept as they are."""
    value = {True: ConditionStatus.TRUE, False: ConditionStatus.FALSE}.get(
        status,  # type: ignore[arg-type]
        ConditionStatus.UNKNOWN,
    )
    previous = next((c for c in conditions if c.type == type_), None)
    changed_at = (
        previous.last_transition_time
        if previous is not None and previous.status == value
        else (at or now())
    )
    updated = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=changed_at,
        observed_generation=generation,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    found = condition(conditions, type_)
    return found is not None and found.status is ConditionStatus.TRUE


# kstatus: Reconciling says work is under way (or being retried), Stalled that it cannot
# go on without the user. Both are "abnormal-true": False when the object is settled.
READY = ConditionType.READY
RECONCILING = ConditionType.RECONCILING
STALLED = ConditionType.STALLED


def with_progress(
    conditions: list[Condition],
    *,
    ready: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    reconciling: bool = False,
    stalled: bool = False,
) -> list[Condition]:
    """Ready, Reconciling and Stalled set together, so they never contradict each other."""
    out = set_condition(conditions, READY, ready, reason, message, generation)
    out = set_condition(
        out,
        RECONCILING,
        reconciling,
        reason if reconciling else Reason.SETTLED,
        message if reconciling else "",
        generation,
    )
    return set_condition(
        out,
        STALLED,
        stalled,
        reason if stalled else Reason.PROGRESSING if reconciling else Reason.SETTLED,
        message if stalled else "",
        generation,
    )
