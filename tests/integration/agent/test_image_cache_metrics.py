"""The image cache's metrics: a real cache downloading from a real HTTP server (qemu-img
inspects each image), scraped through the agent's /metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.config import ImagesConfig
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.drivers.images.cache import ImageCache
from stratus_agent.manager.guests import GuestManager
from stratus_api.imageref import ImageRef
from stratus_api.sources import SourcePolicy
from testsupport import AGENT_AUTH, AGENT_TOKEN, sample, samples

MiB = 2**20


@pytest.fixture
async def image_url() -> AsyncIterator[str]:
    """Every name is a 1 MiB raw image with no holes."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=b"\1" * MiB)

    app = web.Application()
    app.router.add_get("/{name}", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/"))


async def test_hits_misses_and_what_the_cache_holds(tmp_path: Path, image_url: str) -> None:
    policy = SourcePolicy(allowed_endpoints=(image_url.split("/")[2],))
    cache = ImageCache(tmp_path / "images", ImagesConfig(sources=policy))
    hub = EventHub()
    manager = GuestManager(FakeComputeDriver(), agent_main.fake_provisioner(tmp_path), hub)
    await manager.start()
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1", images=cache)
    client: TestClient[Any, Any]
    async with TestClient(TestServer(app)) as client:

        async def scrape() -> dict[str, float | None]:
            found = samples(await (await client.get("/metrics", headers=AGENT_AUTH)).text())
            return {name: sample(found, f"stratus_image_cache_{name}")
                    for name in ("images", "bytes", "hits_total", "misses_total")}  # fmt: skip

        assert await scrape() == {"images": 0, "bytes": 0, "hits_total": 0, "misses_total": 0}
        first, second = (ImageRef(uid=str(uuid.uuid4()), name=n, url=image_url + n)
                         for n in ("one", "two"))  # fmt: skip
        await cache.ensure(first)  # downloaded
        await cache.ensure(first)  # from the cache
        await cache.ensure(second)
        found = await scrape()
        assert (found["images"], found["hits_total"], found["misses_total"]) == (2, 1, 2)
        assert found["bytes"] is not None and found["bytes"] >= 2 * MiB  # allocated, no holes

        await cache.release(first.uid)  # no guest uses it: evicted at once
        found = await scrape()
        assert (found["images"], found["hits_total"], found["misses_total"]) == (1, 1, 2)
    await manager.stop()
