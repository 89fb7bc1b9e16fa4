"""/metrics over HTTPS, guarded as Kubernetes components guard theirs (kube-controller-
manager's delegated authentication and authorization): the caller's bearer token is
reviewed by the API server (TokenReview), then its right to `get` the non-resource URL
/metrics is checked (SubjectAccessReview; services/access.py). Verdicts are kept a few
seconds, so a scraper every 15 s costs the API server a few requests a minute. Every
replica serves it, the standby too (its stratus_operator_leader says 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from stratus_operator.controllers import authority as ca
from stratus_operator.services import tls
from stratus_operator.services.access import Access, bearer
from stratus_operator.services.kube import Kube, KubeError, NotLoggedIn
from stratus_operator.services.metrics import OperatorMetrics
from stratus_operator.services.settings import MetricsSettings

log = logging.getLogger(__name__)
METRICS_PATH = "/metrics"


WHO_MAY_READ = {"nonResourceAttributes": {"path": METRICS_PATH, "verb": "get"}}


def app(metrics: OperatorMetrics, access: Access | None) -> web.Application:
    """`access`: who may read; None: anyone."""

    async def scrape(request: web.Request) -> web.Response:
        if access is not None:
            token = bearer(request.headers.get("Authorization", ""))
            if token is None:
                return web.Response(status=401, text="send a bearer token\n")
            try:
                verdict, _ = await access.admit(token, WHO_MAY_READ)
            except (KubeError, NotLoggedIn, OSError) as exc:
                log.warning("metrics: the API server did not review a token: %s", exc)
                return web.Response(status=503, text="the API server did not answer; retry\n")
            if verdict == 401:
                return web.Response(status=401, text="the token is not valid\n")
            if verdict == 403:
                return web.Response(status=403, text="forbidden: get on /metrics\n")
        # Collected on the loop (the state comes from kopf's indexes, which change between
        # awaits), written out in a thread: at 10,000 objects that is 70 ms off the loop.
        body = await asyncio.to_thread(generate_latest, metrics.collected())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    application = web.Application()
    application.router.add_get(METRICS_PATH, scrape)
    return application


@contextlib.asynccontextmanager
async def serving(
    kube: Kube, settings: MetricsSettings, metrics: OperatorMetrics,
    authority: ca.Authority | None,
) -> AsyncIterator[None]:  # fmt: skip
    """The endpoint, served for the duration; nothing when metrics are off."""
    if not settings.enabled:
        yield
        return
    access = Access(kube, settings.verdict_seconds) if settings.authorize else None
    runner = web.AppRunner(app(metrics, access), access_log=None)
    await runner.setup()
    context = tls.endpoint_context(settings.certificate, authority)
    await web.TCPSite(runner, settings.host, settings.port, ssl_context=context).start()
    log.info("metrics on https://%s:%d%s", settings.host, settings.port, METRICS_PATH)
    try:
        yield
    finally:
        await runner.cleanup()
