"""Errors to kopf intents, in one place: retry later (with backoff) or stop until the
object changes. Unknown exceptions are left alone, so kopf logs their stack trace."""

from __future__ import annotations

import kopf

from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.problem import Problem
from stratus_operator.controllers.scheduler import Unschedulable
from stratus_operator.services import instances
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured
from stratus_operator.services.settings import OperatorSettings


def intent(exc: Exception, attempt: int, settings: OperatorSettings) -> Exception:
    """The kopf exception to raise for `exc`, or `exc` itself when it is not ours."""
    retries = settings.retries
    if isinstance(exc, Problem):
        delay = retries.backoff(attempt) if exc.waiting else retries.stalled_seconds
        return kopf.TemporaryError(str(exc), delay=delay)
    if isinstance(exc, InstanceProblem | Unschedulable | AgentError | AgentNotConfigured):
        found = instances.retry_delay(exc, attempt, settings)
        if found is None:
            return kopf.PermanentError(str(exc))
        return kopf.TemporaryError(str(exc), delay=found)
    return exc
