"""Which Kubernetes Events a status change calls for: the transitions a user acts on, read
from the status before and after a write. Pure; services/events.py records them.

Events follow transitions, not reconciles, so a problem retried every few seconds is one
Event, not hundreds. Messages come from status and conditions, which never carry secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stratus_api.reasons import Reason
from stratus_api.v1alpha1.base import Condition, ConditionStatus
from stratus_api.v1alpha1.image import ImagePhase
from stratus_api.v1alpha1.instance import InstancePhase
from stratus_operator.controllers import conditions

NORMAL, WARNING = "Normal", "Warning"
# Ready false for these is progress or the user's choice, not a failure.
_PROGRESS = frozenset({
    Reason.PROVISIONING, Reason.GUEST_STOPPED, Reason.GUEST_PAUSED, Reason.SCHEDULED,
    Reason.PROGRESSING, "",
})  # fmt: skip


@dataclass(frozen=True)
class Notice:
    type: str  # Normal or Warning
    reason: str
    message: str


def notices(kind: str, before: Any, after: Any) -> list[Notice]:
    """The Events a status write from `before` to `after` calls for (status models of
    `kind`)."""
    found = {"Instance": _instance, "Image": _image, "Volume": _volume}.get(kind)
    made = found(before, after) if found is not None else []
    failure = _failure(_conditions(before), _conditions(after))
    if failure is not None and kind != "Image":  # an Image's failure is its ImageFailed
        made.append(failure)
    return made


def _instance(before: Any, after: Any) -> list[Notice]:
    made = []
    if after.node and after.node != before.node:
        made.append(Notice(NORMAL, "Scheduled", f"Placed on Hypervisor {after.node}"))
    was, now = before.phase, after.phase
    if now != was:
        if now is InstancePhase.RUNNING:
            verb = "Unpaused" if was is InstancePhase.PAUSED else "Started"
            made.append(Notice(NORMAL, verb, f"Guest running on {after.node}"))
        elif now is InstancePhase.PAUSED:
            made.append(Notice(NORMAL, "Paused", "Guest paused"))
        elif now is InstancePhase.STOPPED:
            made.append(Notice(NORMAL, "Stopped", "Guest stopped"))
    if (after.restarts or 0) > (before.restarts or 0):
        why = after.last_restart_reason or "it stopped"
        made.append(Notice(NORMAL, "Restarted", f"Guest started again after {why}"))
    elif (
        after.last_restart_request_handled
        and after.last_restart_request_handled != before.last_restart_request_handled
    ):
        made.append(Notice(NORMAL, "Restarted", "Guest restarted as spec.restartRequestedAt "
                           f"{after.last_restart_request_handled} asked"))  # fmt: skip
    return made


def _image(before: Any, after: Any) -> list[Notice]:
    if after.phase == before.phase:
        return []
    if after.phase is ImagePhase.READY:
        return [Notice(NORMAL, "ImageImported", "Image imported and verified")]
    if after.phase is ImagePhase.FAILED:
        ready = conditions.condition(_conditions(after), conditions.READY)
        detail = f"{ready.reason}: {ready.message}" if ready is not None else "import failed"
        return [Notice(WARNING, "ImageFailed", detail)]
    return []


def _volume(before: Any, after: Any) -> list[Notice]:
    was, now = _names(before.attached_to), _names(after.attached_to)
    made = [Notice(NORMAL, "Attached", f"Attached to Instance {name}") for name in now - was]
    made += [Notice(NORMAL, "Detached", f"Detached from Instance {name}") for name in was - now]
    return sorted(made, key=lambda n: (n.reason, n.message))


def _names(attached_to: str | None) -> set[str]:
    return {n.strip() for n in (attached_to or "").split(",") if n.strip()}


def _failure(before: list[Condition], after: list[Condition]) -> Notice | None:
    """A Warning when a new failure appears (or its reason or message changes).
    Recoveries post nothing of their own: Ready says it."""
    was, now = _failing(before), _failing(after)
    if now is None:
        return None
    if was is not None and (was.reason, was.message) == (now.reason, now.message):
        return None
    return Notice(WARNING, str(now.reason), now.message)


def _failing(conds: list[Condition]) -> Condition | None:
    """The condition that says why the object is not Ready, if it is failing."""
    stalled = conditions.condition(conds, conditions.STALLED)
    if stalled is not None and stalled.status is ConditionStatus.TRUE:
        return stalled
    ready = conditions.condition(conds, conditions.READY)
    reconciling = conditions.condition(conds, conditions.RECONCILING)
    busy = reconciling is not None and reconciling.status is ConditionStatus.TRUE
    if (
        ready is not None
        and ready.status is ConditionStatus.FALSE
        and ready.reason not in _PROGRESS
    ):
        return ready if not busy or reconciling is None else reconciling
    return None


def _conditions(status: Any) -> list[Condition]:
    found = getattr(status, "conditions", [])
    return list(found) if isinstance(found, list) else []
