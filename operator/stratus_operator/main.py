"""Run the operator: kopf with Stratus' handlers, settings and runtime; with leader election,
only once this replica holds the Lease (services/leadership.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator

import kopf
from aiohttp import web

from stratus_operator import handlers
from stratus_operator.handlers.lifecycle import connection_info
from stratus_operator.services.kube import Credentials, Kube
from stratus_operator.services.leadership import Leader
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import OperatorSettings

assert handlers  # imported for its side effect: registering the handlers with kopf
log = logging.getLogger(__name__)


def run(settings: OperatorSettings, *, liveness_port: int | None = None) -> None:
    gc.set_threshold(*settings.gc_thresholds)
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    asyncio.run(_run(settings, liveness_port))


async def _run(settings: OperatorSettings, liveness_port: int | None) -> None:
    kube = Kube()
    rt = Runtime(settings, kube, AgentPool(kube, settings.agents.request_timeout_seconds))
    leader = keeper = None
    if settings.leader.enabled:
        leader = Leader(_elector_kube, settings.leader, identity())
        async with _standby_health(liveness_port):
            await leader.acquire()
        # Lost: stop at once, as client-go's leaders do; another replica may act already.
        keeper = asyncio.create_task(leader.keep(lambda: os._exit(1)))
    try:
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            memo=kopf.Memo(runtime=rt),
            # The Lease elects the one active replica; kopf's own peering needs its CRDs.
            standalone=True,
            liveness_endpoint=f"http://127.0.0.1:{liveness_port}/healthz"
            if liveness_port
            else None,
        )
    finally:
        if leader is not None and keeper is not None:
            keeper.cancel()
            await leader.release()


def identity() -> str:
    """This replica's name in the Lease: its pod's (the Downward API's POD_NAME), else the
    host's and the process's."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def _elector_kube() -> Kube:
    """A connection of the elector's own, so renewals never queue behind reconciles."""
    info = connection_info(logger=log, settings=kopf.OperatorSettings())
    ssl = info.as_ssl_context() if info.server.startswith("https:") else None
    kube = Kube()
    kube.connect(Credentials(info.server, ssl, info.as_http_headers()), 2)
    return kube


@contextlib.asynccontextmanager
async def _standby_health(port: int | None) -> AsyncIterator[None]:
    """/healthz while this replica waits for the Lease (kopf serves it once it runs), so a
    liveness probe does not restart a healthy standby."""
    if port is None:
        yield
        return

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()
