"""Operator-wide settings, applied once at startup."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_operator.handlers.common import runtime
from stratus_operator.settings import FINALIZER, GROUP


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Watches reconnect every few minutes anyway; a bounded server timeout keeps them fresh.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.cleanup()
async def close_agents(memo: kopf.Memo, **_: Any) -> None:
    await runtime(memo).agents.close()
