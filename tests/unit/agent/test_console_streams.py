"""The agent's console streams, over a real pty standing in for a guest's: bytes both ways,
one session at a time, clear refusals, and frames over the limit ending the session."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from stratus_agent.api import consoles
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from testsupport import AGENT_AUTH as AUTH
from testsupport import guest_spec

Agent = tuple[TestClient[Any, Any], FakeComputeDriver]


@pytest.fixture
def pty(monkeypatch: pytest.MonkeyPatch, agent: Agent) -> Iterator[int]:
    """A pty whose far end is the guest's console: the fixture's fd is the guest side."""
    guest_side, console_side = os.openpty()
    path = os.ttyname(console_side)

    async def device(uid: str) -> str | None:
        return path

    monkeypatch.setattr(agent[1], "console_device", device)
    yield guest_side
    os.close(guest_side)
    os.close(console_side)


async def running_guest(client: TestClient[Any, Any]) -> str:
    spec = guest_spec()
    assert (await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AUTH)).status == 202
    for _ in range(200):
        if (await client.get(f"/v1/guests/{spec['uid']}", headers=AUTH)).status == 200:
            break
        await asyncio.sleep(0.01)
    return str(spec["uid"])


async def test_the_console_carries_bytes_both_ways_for_one_session(agent: Agent, pty: int) -> None:
    client, _ = agent
    uid = await running_guest(client)
    async with client.ws_connect(f"/v1/guests/{uid}/console", headers=AUTH) as ws:
        os.write(pty, b"login: ")  # the guest prints
        assert (await ws.receive_bytes(timeout=5)) == b"login: "
        await ws.send_bytes(b"root\r")  # the user types
        await asyncio.sleep(0.1)
        assert os.read(pty, 100) == b"root\r"  # raw: no echo, no line editing
        # A second session while this one holds the console: refused, saying why.
        second = await client.get(f"/v1/guests/{uid}/console", headers=AUTH)
        assert second.status == 409 and "another session" in (await second.json())["message"]
    await asyncio.sleep(0.1)
    again = await client.ws_connect(f"/v1/guests/{uid}/console", headers=AUTH)
    await again.close()


async def test_a_frame_over_the_limit_ends_the_session_and_reaches_no_guest(
    agent: Agent, pty: int
) -> None:
    client, _ = agent
    uid = await running_guest(client)
    async with client.ws_connect(f"/v1/guests/{uid}/console", headers=AUTH) as ws:
        await ws.send_bytes(b"x" * (consoles.MAX_FRAME_BYTES + 1))
        closed = await ws.receive(timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    os.set_blocking(pty, False)
    with pytest.raises(BlockingIOError):
        os.read(pty, 10)


async def test_refusals_say_why(agent: Agent) -> None:
    client, _ = agent
    missing = "00000000-0000-4000-8000-000000000000"
    found = await client.get(f"/v1/guests/{missing}/console", headers=AUTH)
    assert found.status == 404 and "no guest" in (await found.json())["message"]
    uid = await running_guest(client)
    # The fake driver's guests have no console, nor VNC display.
    for kind in ("console", "vnc"):
        refused = await client.get(f"/v1/guests/{uid}/{kind}", headers=AUTH)
        assert refused.status == 409, kind
    assert (await client.get(f"/v1/guests/{uid}/console")).status == 401
