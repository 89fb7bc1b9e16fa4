"""What keeps an object from being built, and the status that says so: one shape for the
kinds whose status is only a Ready condition and what they are built on (Routers,
FloatingIPs, SecurityGroups)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from stratus_api.v1alpha1.floatingip import FloatingIPStatus
from stratus_api.v1alpha1.router import RouterStatus
from stratus_api.v1alpha1.securitygroup import SecurityGroupStatus
from stratus_operator.controllers import conditions


class Problem(Exception):
    """Names the field; `waiting`: it may resolve by itself (a Network not there or not
    ready yet: Reconciling), else the user must act (Stalled)."""

    def __init__(self, reason: str, message: str, *, waiting: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.waiting = waiting


S = TypeVar("S", RouterStatus, FloatingIPStatus, SecurityGroupStatus)


def failing(problem: Problem) -> Callable[[S, int], S]:
    """The status change saying `problem`: Ready False, and Reconciling or Stalled."""

    def change(status: S, generation: int) -> S:
        return status.model_copy(update={
            "observed_generation": generation,
            "conditions": conditions.with_progress(
                status.conditions, ready=False, reason=problem.reason, message=str(problem),
                generation=generation, reconciling=problem.waiting, stalled=not problem.waiting,
            ),
        })  # fmt: skip

    return change
