"""The console proxy's relay between a user's WebSocket and a node's, over real aiohttp
servers in this process: bytes pass both ways, an idle session is closed saying so, and a
frame over the limit ends the session without reaching the node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from stratus_operator.services import console_proxy
from stratus_operator.services.access import Access
from stratus_operator.services.kube import Kube
from stratus_operator.services.settings import ConsoleSettings


@pytest.fixture
async def proxied() -> AsyncIterator[Callable[[ConsoleSettings], Any]]:
    """Start a node (an echoing WebSocket that records what it got) and a proxy relaying to
    it with `settings`; yields the proxy's URL and the node's record."""
    servers: list[TestServer] = []

    async def start(settings: ConsoleSettings) -> tuple[str, list[bytes]]:
        got: list[bytes] = []

        async def node(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            async for message in ws:
                got.append(message.data)
                await ws.send_bytes(b"echo:" + message.data)
            return ws

        node_app = web.Application()
        node_app.router.add_get("/", node)
        node_server = TestServer(node_app)
        await node_server.start_server()
        proxy = console_proxy.ConsoleProxy(Kube(), Access(Kube()), settings)

        async def user(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes)
            await ws.prepare(request)
            async with aiohttp.ClientSession() as session:
                upstream = await session.ws_connect(str(node_server.make_url("/")))
                record = console_proxy.Session("alice", "ns/vm", "console", time.monotonic())
                await proxy._relay(ws, upstream, record)
                await upstream.close()
            await ws.close()
            return ws

        proxy_app = web.Application()
        proxy_app.router.add_get("/", user)
        proxy_server = TestServer(proxy_app)
        await proxy_server.start_server()
        servers.extend([node_server, proxy_server])
        return str(proxy_server.make_url("/")), got

    yield start
    for server in servers:
        await server.close()


async def test_bytes_pass_and_an_idle_session_is_closed_saying_so(
    proxied: Callable[[ConsoleSettings], Any],
) -> None:
    url, got = await proxied(ConsoleSettings(idle_seconds=1.0))
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for _ in range(4):  # typing keeps it open past the idle limit
            await ws.send_bytes(b"k")
            assert (await ws.receive_bytes(timeout=5)) == b"echo:k"
            await asyncio.sleep(0.4)
        closed = await ws.receive(timeout=5)  # then silence: closed
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert (closed.data, closed.extra) == (console_proxy.IDLE, "idle for 1 s")
    assert got == [b"k"] * 4


async def test_a_frame_over_the_limit_ends_the_session_and_never_reaches_the_node(
    proxied: Callable[[ConsoleSettings], Any],
) -> None:
    url, got = await proxied(ConsoleSettings(max_frame_bytes=1024))
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_bytes(b"x" * 2048)
        closed = await ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert closed.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await asyncio.sleep(0.1)
    assert got == []
