"""Agent API tests against the fake compute driver, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.manager.guests import GuestManager
from testsupport import AGENT_TOKEN as TOKEN


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], FakeComputeDriver]]:
    compute = FakeComputeDriver(cpu=8, memory_bytes=16 * 2**30)
    hub = EventHub()
    manager = GuestManager(compute, agent_main.fake_provisioner(tmp_path), hub)
    await manager.start()
    app = create_app(manager, hub, token=TOKEN, node="node-1", heartbeat=0.2)
    async with TestClient(TestServer(app)) as client:
        yield client, compute
    await manager.stop()
