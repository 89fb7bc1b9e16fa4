"""Kubernetes Events of our own: one when an object starts failing, one when it recovers.

Events follow condition transitions, not reconciles, so a problem retried every few seconds
is one Event, not hundreds. Messages come from conditions, which never carry secrets.
"""

from __future__ import annotations

import logging

from stratus_api.reasons import Reason
from stratus_api.v1alpha1.base import Condition, ConditionStatus
from stratus_operator.controllers import conditions
from stratus_operator.services.kube import Kube

log = logging.getLogger(__name__)

Involved = dict[str, str]


def _failing(conds: list[Condition]) -> Condition | None:
    """The condition that says why the object is not Ready, if it is failing."""
    stalled = conditions.condition(conds, conditions.STALLED)
    if stalled is not None and stalled.status is ConditionStatus.TRUE:
        return stalled
    ready = conditions.condition(conds, conditions.READY)
    reconciling = conditions.condition(conds, conditions.RECONCILING)
    busy = reconciling is not None and reconciling.status is ConditionStatus.TRUE
    if ready is not None and ready.status is ConditionStatus.FALSE and _is_failure(ready.reason):
        return ready if not busy or reconciling is None else reconciling
    return None


def _is_failure(reason: str) -> bool:
    # Progress reasons are not failures; everything else that keeps Ready false is.
    return reason not in {
        Reason.PROVISIONING,
        Reason.GUEST_STOPPED,
        Reason.GUEST_PAUSED,
        Reason.SCHEDULED,
        Reason.PROGRESSING,
        "",
    }


class EventRecorder:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def transition(
        self, ref: Involved, before: list[Condition], after: list[Condition]
    ) -> None:
        """Post a Warning when a new failure appears. Recoveries post nothing: a Normal
        event per Instance per start would cost an API request each, and Ready says it."""
        was, now = _failing(before), _failing(after)
        news = (
            was is None or (was.reason, was.message) != (now.reason, now.message) if now else False
        )
        if now is not None and news:
            await self._post(ref, "Warning", now.reason, now.message)

    async def warn(self, ref: Involved, reason: str, message: str) -> None:
        """A Warning about `ref` that no condition of its own carries."""
        await self._post(ref, "Warning", reason, message)

    async def _post(self, ref: Involved, type_: str, reason: str, message: str) -> None:
        try:
            await self._kube.post_event(ref, type_, reason, message)
        except Exception as exc:  # an Event is a courtesy: never fail a reconcile for it
            log.warning(
                "%s %s: could not record event %s: %s", ref["kind"], ref["name"], reason, exc
            )
