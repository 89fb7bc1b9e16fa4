"""/metrics over HTTPS, guarded as Kubernetes components guard theirs (kube-controller-
manager's delegated authentication and authorization): the caller's bearer token is
reviewed by the API server (TokenReview), then its right to `get` the non-resource URL
/metrics is checked (SubjectAccessReview). Verdicts are kept a few seconds, so a scraper
every 15 s costs the API server a few requests a minute. Every replica serves it, the
standby too (its stratus_operator_leader says 0).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stratus_operator.controllers import authority as ca
from stratus_operator.services import tls
from stratus_operator.services.kube import Kube, KubeError, NotLoggedIn
from stratus_operator.services.metrics import OperatorMetrics
from stratus_operator.services.settings import MetricsSettings

log = logging.getLogger(__name__)
METRICS_PATH = "/metrics"


class Guard:
    """Who may read /metrics: HTTP 200, 401 or 403 for a bearer token, asked of the API
    server and kept for `ttl` seconds (only the token's digest is kept)."""

    def __init__(self, kube: Kube, ttl: float = 10.0, size: int = 128) -> None:
        self._kube = kube
        self._ttl = ttl
        self._size = size
        self._verdicts: dict[str, tuple[float, int]] = {}

    async def verdict(self, token: str) -> int:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        kept = self._verdicts.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        found = await self._ask(token)
        if len(self._verdicts) >= self._size:  # drop the stale, else the oldest
            stale = [k for k, (until, _) in self._verdicts.items() if until <= now]
            for k in stale or [next(iter(self._verdicts))]:
                del self._verdicts[k]
        self._verdicts[key] = (now + self._ttl, found)
        return found

    async def _ask(self, token: str) -> int:
        review = await self._kube.token_review(token, [])
        if not review.get("authenticated"):
            return 401
        user: dict[str, Any] = review.get("user") or {}
        allowed = await self._kube.access_review(user, {"path": METRICS_PATH, "verb": "get"})
        return 200 if allowed else 403


def app(metrics: OperatorMetrics, guard: Guard | None) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        if guard is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return web.Response(status=401, text="send a bearer token\n")
            try:
                verdict = await guard.verdict(token.strip())
            except (KubeError, NotLoggedIn, OSError) as exc:
                log.warning("metrics: the API server did not review a token: %s", exc)
                return web.Response(status=503, text="the API server did not answer; retry\n")
            if verdict == 401:
                return web.Response(status=401, text="the token is not valid\n")
            if verdict == 403:
                return web.Response(status=403, text="forbidden: get on /metrics\n")
        # On the loop, not in a thread: the state comes from kopf's indexes, which change
        # between awaits.
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    application = web.Application()
    application.router.add_get(METRICS_PATH, scrape)
    return application


def context(settings: MetricsSettings, authority: ca.Authority | None) -> ssl.SSLContext:
    """The endpoint's certificate: the files given, else one from the enrollment CA (for
    the Service's names), else a self-signed one."""
    if settings.cert_file:
        return tls.files_context(settings.cert_file, settings.key_file)
    names = tls.service_names(settings.service, settings.namespace)
    if authority is not None:
        return tls.serving_context(authority, names)
    return tls.self_signed_context(names)


@contextlib.asynccontextmanager
async def serving(
    kube: Kube, settings: MetricsSettings, metrics: OperatorMetrics,
    authority: ca.Authority | None,
) -> AsyncIterator[None]:  # fmt: skip
    """The endpoint, served for the duration; nothing when metrics are off."""
    if not settings.enabled:
        yield
        return
    guard = Guard(kube, settings.verdict_seconds) if settings.authorize else None
    runner = web.AppRunner(app(metrics, guard), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port,
                       ssl_context=context(settings, authority))  # fmt: skip
    await site.start()
    log.info("metrics on https://%s:%d%s", settings.host, settings.port, METRICS_PATH)
    try:
        yield
    finally:
        await runner.cleanup()
