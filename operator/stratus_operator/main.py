"""Run the operator: kopf with Stratus' handlers, settings and runtime."""

from __future__ import annotations

import asyncio
import gc

import kopf

from stratus_operator import handlers
from stratus_operator.services.kube import Kube
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import OperatorSettings

assert handlers  # imported for its side effect: registering the handlers with kopf


def run(settings: OperatorSettings, *, liveness_port: int | None = None) -> None:
    gc.set_threshold(*settings.gc_thresholds)
    kube = Kube()
    rt = Runtime(settings, kube, AgentPool(kube, settings.agents.request_timeout_seconds))
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            memo=kopf.Memo(runtime=rt),
            # One active operator; kopf's peering (hot standby) needs its own CRDs.
            standalone=True,
            liveness_endpoint=f"http://127.0.0.1:{liveness_port}/healthz"
            if liveness_port
            else None,
        )
    )
