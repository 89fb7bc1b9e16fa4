"""The real agent app (fake compute driver) on a real socket, plain http or https."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.manager.guests import GuestManager
from stratus_devcloud import pki
from stratus_operator.services import agent_client
from testsupport import AGENT_TOKEN


@dataclass
class RunningAgent:
    """One agent process's worth of state; the HTTP side can stop and start again on the
    same port while the guests (manager, hub) live on, as when the agent restarts."""

    manager: GuestManager
    hub: EventHub
    compute: FakeComputeDriver
    tls: ssl.SSLContext | None
    heartbeat: float
    port: int = 0
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> None:
        app = create_app(
            self.manager, self.hub, token=AGENT_TOKEN, node="node-1", heartbeat=self.heartbeat
        )
        # Open event streams only end when cancelled: do not wait long for them.
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


StartAgent = Callable[..., Awaitable[RunningAgent]]


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    pki.ensure_pki(directory)
    return directory


@pytest.fixture(scope="session")
def other_ca_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("other-pki")
    pki.ensure_pki(directory)
    return (directory / "ca.crt").read_bytes()


@pytest.fixture
async def start_agent(tmp_path: Path, pki_dir: Path) -> AsyncIterator[StartAgent]:
    started: list[RunningAgent] = []

    async def start(*, tls: bool = False, heartbeat: float = 10.0) -> RunningAgent:
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(pki_dir / "apiserver.crt", pki_dir / "apiserver.key")
        compute = FakeComputeDriver(cpu=8, memory_bytes=16 * 2**30)
        hub = EventHub()
        manager = GuestManager(
            compute, agent_main.fake_provisioner(tmp_path / f"a{len(started)}"), hub
        )
        await manager.start()
        agent = RunningAgent(manager, hub, compute, context, heartbeat)
        started.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in started:
        await agent.stop()
        await agent.manager.stop()


@pytest.fixture(params=["http", "https"])
async def agent(request: pytest.FixtureRequest, start_agent: StartAgent) -> RunningAgent:
    return await start_agent(tls=request.param == "https")


@pytest.fixture
def endpoint_of(pki_dir: Path) -> Callable[..., agent_client.AgentEndpoint]:
    """The endpoint an operator would have for `agent`: its URL, token and CA."""

    def endpoint(agent: RunningAgent, token: str = AGENT_TOKEN) -> agent_client.AgentEndpoint:
        ca = (pki_dir / "ca.crt").read_bytes() if agent.tls else None
        return agent_client.AgentEndpoint(agent.url, token, ca)

    return endpoint


@pytest.fixture
async def client(
    agent: RunningAgent, endpoint_of: Callable[..., agent_client.AgentEndpoint]
) -> AsyncIterator[agent_client.AgentClient]:
    async with agent_client.AgentClient(endpoint_of(agent), timeout=5.0) as client:
        yield client
