"""Run the operator: kopf with Stratus' handlers, settings and runtime; with leader election,
only once this replica holds the Lease (services/leadership.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

import kopf
import prometheus_client
from aiohttp import web

from stratus_operator import handlers
from stratus_operator.dashboard import serving as console_serving
from stratus_operator.handlers.lifecycle import connection_info
from stratus_operator.services import enrollment, metrics_serving
from stratus_operator.services.kube import Credentials, Kube
from stratus_operator.services.leadership import Leader
from stratus_operator.services.metrics import OperatorMetrics
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import OperatorSettings

assert handlers  # imported for its side effect: registering the handlers with kopf
log = logging.getLogger(__name__)


def run(settings: OperatorSettings, *, liveness: tuple[str, int] | None = None) -> None:
    """`liveness`: (host, port) to serve /healthz on."""
    gc.set_threshold(*settings.gc_thresholds)
    # No `_created` series beside every counter: a third of the scrape, read by nobody.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    # A line per liveness probe says nothing; failures show in the probe's own events.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(_run(settings, liveness))


async def _run(settings: OperatorSettings, liveness: tuple[str, int] | None) -> None:
    # Enrollment, metrics and consoles need no leadership: every replica serves them.
    metrics = OperatorMetrics()
    served = (settings.enrollment, settings.metrics, settings.console)
    own = _own_kube(metrics) if any(s.enabled for s in served) else Kube(metrics.trace())
    async with enrollment.serving(own, settings.enrollment) as enrolling:
        authority = await enrolling.authority() if enrolling is not None else None
        async with (
            metrics_serving.serving(own, settings.metrics, metrics, authority),
            console_serving.serving(own, settings.console, authority),
        ):
            await _operate(settings, liveness, metrics)


async def _operate(
    settings: OperatorSettings, liveness: tuple[str, int] | None, metrics: OperatorMetrics
) -> None:
    kube = Kube(metrics.trace())
    agents = AgentPool(kube, settings.agents.request_timeout_seconds, metrics.dispatch_failed)
    rt = Runtime(settings, kube, agents, metrics)
    leader = keeper = None
    me = identity()
    if settings.leader.enabled:
        leader = Leader(lambda: _own_kube(metrics), settings.leader, me)
        async with _standby_health(liveness):
            await leader.acquire()
        # Lost: stop at once, as client-go's leaders do; another replica may act already.
        keeper = asyncio.create_task(leader.keep(lambda: os._exit(1)))
    metrics.leader.set(1)
    try:
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            memo=kopf.Memo(runtime=rt),
            # kopf's own default asks the password database, which an image's user may lack.
            identity=me,  # type: ignore[arg-type]  # kopf.Identity: str, not exported
            # The Lease elects the one active replica; kopf's own peering needs its CRDs.
            standalone=True,
            liveness_endpoint=f"http://{liveness[0]}:{liveness[1]}/healthz" if liveness else None,
        )
    finally:
        if leader is not None and keeper is not None:
            keeper.cancel()
            await leader.release()


def forget_enrolled_nodes(grace_seconds: float) -> list[str]:
    """Delete the Hypervisors enrollment made; their names."""

    async def forget() -> list[str]:
        kube = _own_kube()
        try:
            return await enrollment.forget_enrolled(kube, grace_seconds)
        finally:
            await kube.close()

    return asyncio.run(forget())


def identity() -> str:
    """This process's name in the Lease: its pod's (the Downward API's POD_NAME), else the
    host's, and a random suffix, as kube-controller-manager's: a container restarted in
    the same pod is another candidate, not the leader it replaced."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _own_kube(metrics: OperatorMetrics | None = None) -> Kube:
    """A connection of its own, for the elector, enrollment and the metrics' guard: Lease
    renewals, enrollments and scrapes never queue behind reconciles, and they work before
    kopf logs in."""
    info = connection_info(logger=log, settings=kopf.OperatorSettings())
    ssl = info.as_ssl_context() if info.server.startswith("https:") else None
    kube = Kube(metrics.trace() if metrics is not None else None)
    kube.connect(Credentials(info.server, ssl, info.as_http_headers()), 2)
    return kube


@contextlib.asynccontextmanager
async def _standby_health(liveness: tuple[str, int] | None) -> AsyncIterator[None]:
    """/healthz while this replica waits for the Lease (kopf serves it once it runs), so a
    liveness probe does not restart a healthy standby."""
    if liveness is None:
        yield
        return

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, *liveness).start()
    try:
        yield
    finally:
        await runner.cleanup()
