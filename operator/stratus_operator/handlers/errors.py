"""Errors to kopf intents, in one place: retry later (with backoff) or stop until the
object changes. Unknown exceptions are left alone, so kopf logs their stack trace."""

from __future__ import annotations

import kopf

from stratus_operator.controllers.instance import InstanceProblem
from stratus_operator.controllers.problem import Problem
from stratus_operator.controllers.scheduler import Unschedulable
from stratus_operator.services.agent_client import AgentError, AgentRejected
from stratus_operator.services.runtime import AgentNotConfigured
from stratus_operator.services.settings import OperatorSettings


def intent(exc: Exception, attempt: int, settings: OperatorSettings) -> Exception:
    """The kopf exception to raise for `exc`, or `exc` itself when it is not ours."""
    retries = settings.retries
    if isinstance(exc, InstanceProblem):
        if not exc.retry:
            return kopf.PermanentError(str(exc))
        delay = retries.stalled_seconds if exc.needs_user else retries.backoff(attempt)
        return kopf.TemporaryError(str(exc), delay=delay)
    if isinstance(exc, Problem):
        delay = retries.backoff(attempt) if exc.waiting else retries.stalled_seconds
        return kopf.TemporaryError(str(exc), delay=delay)
    if isinstance(exc, Unschedulable):
        return kopf.TemporaryError(str(exc), delay=settings.scheduling.retry_seconds)
    if isinstance(exc, AgentRejected):
        # The node refused the request itself: sending it again cannot help.
        return kopf.PermanentError(str(exc))
    if isinstance(exc, AgentError | AgentNotConfigured):
        return kopf.TemporaryError(str(exc), delay=retries.backoff(attempt))
    return exc
