"""The metrics token: Prometheus's scrape credential opens GET /metrics and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stratus_agent import config as agent_config
from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.manager.guests import GuestManager
from testsupport import AGENT_AUTH, AGENT_TOKEN, guest_spec

METRICS_TOKEN = "scrape-token-0123456789abcdef"
SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    hub = EventHub()
    manager = GuestManager(FakeComputeDriver(), agent_main.fake_provisioner(tmp_path), hub)
    await manager.start()
    app = create_app(manager, hub, token=AGENT_TOKEN, metrics_token=METRICS_TOKEN, node="n")
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await manager.stop()


async def test_the_metrics_token_reads_metrics_and_nothing_else(
    client: TestClient[Any, Any],
) -> None:
    spec = guest_spec()
    uid = spec["uid"]
    assert (await client.put(f"/v1/guests/{uid}", json=spec, headers=AGENT_AUTH)).status == 202

    scraped = await client.get("/metrics", headers=SCRAPE)
    assert scraped.status == 200
    assert "stratus_guest_state{" in await scraped.text()
    assert (await client.get("/metrics", headers=AGENT_AUTH)).status == 200  # still works
    for method, path in (("GET", "/v1/guests"), ("GET", f"/v1/guests/{uid}"),
                         ("PUT", f"/v1/guests/{uid}"), ("DELETE", f"/v1/guests/{uid}"),
                         ("GET", "/v1/events"), ("GET", "/healthz"), ("POST", "/metrics"),
                         ("GET", "/metrics/")):  # fmt: skip
        response = await client.request(method, path, headers=SCRAPE, json=spec)
        assert response.status == 401, (method, path)
    # The guest is still there: the refused DELETE did nothing.
    assert (await client.get(f"/v1/guests/{uid}", headers=AGENT_AUTH)).status == 200


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token-0123456789", f"Basic {METRICS_TOKEN}", METRICS_TOKEN]
)
async def test_a_wrong_token_reads_no_metrics(
    client: TestClient[Any, Any], header: str | None
) -> None:
    response = await client.get("/metrics", headers={"Authorization": header} if header else {})
    assert response.status == 401
    body = await response.text()
    assert "stratus_" not in body and "bearer token" in body


def config(tmp_path: Path, token: str, mode: int = 0o600) -> agent_config.AgentConfig:
    api = tmp_path / "token"
    api.write_text(AGENT_TOKEN)
    api.chmod(0o600)
    scrape = tmp_path / "metrics-token"
    scrape.write_text(token + "\n")
    scrape.chmod(mode)
    return agent_config.AgentConfig.model_validate(
        {"token_file": str(api), "metrics_token_file": str(scrape), "compute": "fake",
         "listen": {"insecure": True}}
    )  # fmt: skip


def test_the_metrics_token_file_is_read_like_the_token_file(tmp_path: Path) -> None:
    assert config(tmp_path, METRICS_TOKEN).read_metrics_token() == METRICS_TOKEN
    with pytest.raises(agent_config.ConfigError, match="at least 16 characters"):
        config(tmp_path, "short").read_metrics_token()
    with pytest.raises(agent_config.ConfigError, match="chmod 600"):
        config(tmp_path, METRICS_TOKEN, 0o644).read_metrics_token()
    with pytest.raises(agent_config.ConfigError, match="must differ from the API token"):
        config(tmp_path, AGENT_TOKEN).read_metrics_token()
    missing = config(tmp_path, METRICS_TOKEN).model_copy(
        update={"metrics_token_file": tmp_path / "absent"}
    )
    with pytest.raises(agent_config.ConfigError, match="cannot read token file"):
        missing.read_metrics_token()


def test_without_a_metrics_token_file_there_is_none(tmp_path: Path) -> None:
    settings = config(tmp_path, METRICS_TOKEN).model_copy(update={"metrics_token_file": None})
    assert settings.read_metrics_token() is None
