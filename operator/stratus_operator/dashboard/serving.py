"""The console port: the console proxy's WebSockets and, unless turned off, the dashboard's
pages beside them, so the pages open consoles on their own origin with their session."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from stratus_operator.controllers import authority as ca
from stratus_operator.dashboard.sessions import Sealer
from stratus_operator.dashboard.views import Dashboard, routes, same_origin
from stratus_operator.services import console_proxy, tls
from stratus_operator.services.access import Access
from stratus_operator.services.kube import Kube
from stratus_operator.services.settings import ConsoleSettings

log = logging.getLogger(__name__)


def application(kube: Kube, settings: ConsoleSettings) -> tuple[web.Application, Dashboard | None]:
    access = Access(kube, settings.verdict_seconds)
    board = None
    if settings.dashboard:
        board = Dashboard(kube, access, Sealer.from_file(settings.session_key_file),
                          settings.session_seconds, settings.live_streams_per_user)  # fmt: skip

    def browser_token(request: web.Request) -> str | None:
        session = board.session(request) if board is not None else None
        return session.token if session is not None and same_origin(request) else None

    proxy = console_proxy.ConsoleProxy(kube, access, settings, browser_token)
    app = console_proxy.app(proxy)
    if board is not None:
        routes(board, app)
    return app, board


@contextlib.asynccontextmanager
async def serving(
    kube: Kube, settings: ConsoleSettings, authority: ca.Authority | None
) -> AsyncIterator[None]:
    """The proxy and the dashboard, served for the duration; nothing when off."""
    if not settings.enabled:
        yield
        return
    app, board = application(kube, settings)
    # A page that goes away cancels its handler at once: its live streams let go of their
    # watches (and of the user's count) then, not at their next ping.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    context = tls.endpoint_context(settings.certificate, authority)
    await web.TCPSite(runner, settings.host, settings.port, ssl_context=context).start()
    log.info("console proxy%s on https://%s:%d", " and dashboard" if board else "",
             settings.host, settings.port)  # fmt: skip
    try:
        yield
    finally:
        await runner.cleanup()
        if board is not None:
            await board.api.close()
