"""Evicting cached images: by release of the Image (once no guest's root overlay uses it),
and least recently used under the size budget. Real overlays made by `qemu-img create -b`
(the file disk driver), real files, a real HTTP server; the API route through the real app."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.base import Released
from stratus_agent.config import ImagesConfig
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.drivers.images.cache import ImageCache
from stratus_agent.drivers.storage.file import FileDiskDriver
from stratus_agent.manager.guests import GuestManager
from stratus_api.imageref import ImageRef
from stratus_api.sources import SourcePolicy
from testsupport import AGENT_AUTH, AGENT_TOKEN

MiB = 2**20


class Node:
    """A node's state directory: the image cache, the guests' files, an image server."""

    def __init__(self, root: Path, base: URL) -> None:
        self.root, self.base = root, base
        self.files = FileDiskDriver(root / "guests")
        self.gate = asyncio.Event()
        self.gate.set()

    def cache(self, **settings: Any) -> ImageCache:
        """A cache as the agent makes one; a second one over the same directories is an
        agent restart."""
        config = ImagesConfig(
            sources=SourcePolicy(allowed_endpoints=(self.base.raw_authority,)), **settings
        )
        return ImageCache(self.root / "images", config, users=self.files.images_in_use)

    def ref(self, name: str = "disk") -> ImageRef:
        return ImageRef(uid=str(uuid.uuid4()), name=name, url=str(self.base / name))

    async def guest_on(self, cache: ImageCache, image: ImageRef) -> str:
        """A guest whose root overlay is on `image`, as the provisioner makes it."""
        uid = str(uuid.uuid4())
        await self.files.ensure_root_disk(uid, await cache.ensure(image), None)
        return uid

    def cached(self) -> set[str]:
        directory = self.root / "images"
        return {p.name.split(".")[0] for p in directory.iterdir()} if directory.exists() else set()

    def meta(self, uid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "images" / f"{uid}.json").read_text())
        return data


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    holder: list[Node] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        # Every name is a 1 MiB raw image; its second half waits for the gate.
        response = web.StreamResponse(headers={"Content-Length": str(MiB)})
        await response.prepare(request)
        await response.write(b"\1" * (MiB // 2))
        await holder[0].gate.wait()
        await response.write(b"\1" * (MiB // 2))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        holder.append(Node(tmp_path, server.make_url("/")))
        yield holder[0]


async def test_release_evicts_an_unused_image_at_once(node: Node) -> None:
    cache = node.cache()
    image = node.ref()
    await cache.ensure(image)
    assert await cache.release(image.uid) == Released(evicted=True, in_use=False)
    assert node.cached() == set()
    assert await cache.release(image.uid) == Released(evicted=False, in_use=False)


async def test_a_released_image_goes_with_its_last_guest_even_after_a_restart(
    node: Node,
) -> None:
    cache = node.cache()
    image = node.ref()
    first = await node.guest_on(cache, image)
    second = await node.guest_on(cache, image)
    assert await cache.in_use() == {image.uid}
    assert await cache.release(image.uid) == Released(evicted=False, in_use=True)
    assert node.meta(image.uid)["released"] is True
    await node.files.remove(first)
    assert await cache.collect() == []  # the second guest still uses it
    restarted = node.cache()  # knows nothing in memory: overlays and metadata tell
    assert await restarted.collect() == []
    await node.files.remove(second)
    assert await restarted.collect() == [image.uid]
    assert node.cached() == set()


async def test_release_during_a_download_evicts_once_the_guest_is_gone(node: Node) -> None:
    cache = node.cache()
    image = node.ref()
    node.gate.clear()  # the server holds half its answer: the download is in flight
    guest = asyncio.create_task(node.guest_on(cache, image))
    while not any(p.name.endswith(".partial") for p in (node.root / "images").glob(".*")):
        await asyncio.sleep(0.01)
    assert await cache.release(image.uid) == Released(evicted=False, in_use=True)
    node.gate.set()
    uid = await guest
    assert node.meta(image.uid)["released"] is True
    assert await cache.collect() == []
    await node.files.remove(uid)
    assert await cache.collect() == [image.uid]


async def test_least_recently_used_unused_images_go_over_the_budget(node: Node) -> None:
    # Room for two 1 MiB images (plus a little, for metadata blocks).
    cache = node.cache(cache_budget_bytes=2 * MiB + MiB // 2, eviction_grace_seconds=0)
    a, b, c, d = (node.ref(name) for name in "abcd")
    await cache.ensure(a)
    await cache.ensure(b)
    await cache.ensure(c)  # three: a, the least recently used, goes
    assert node.cached() == {b.uid, c.uid}
    await node.guest_on(cache, b)  # b in use and most recently used
    await cache.ensure(c)
    await cache.ensure(d)  # b is older than c, but in use: c goes
    assert node.cached() == {b.uid, d.uid}
    assert node.meta(d.uid)["last_used"] >= node.meta(b.uid)["last_used"]


async def test_recently_used_images_are_kept_over_the_budget(node: Node) -> None:
    cache = node.cache(cache_budget_bytes=MiB, eviction_grace_seconds=300)
    images = [node.ref(name) for name in "ab"]
    for image in images:
        await cache.ensure(image)
    assert node.cached() == {image.uid for image in images}  # a guest may be starting
    assert await node.cache(cache_budget_bytes=MiB, eviction_grace_seconds=0).collect() == [
        images[0].uid
    ]


async def test_collect_removes_leftovers_of_a_crash(node: Node) -> None:
    cache = node.cache()
    directory = node.root / "images"
    directory.mkdir(parents=True)
    stray = str(uuid.uuid4())
    (directory / f".{stray}.img.partial").write_bytes(b"half")
    (directory / f".{stray}.json.tmp").write_text("{")
    (directory / f"{stray}.json").write_text("{}")  # metadata of no image
    assert await cache.collect() == []
    assert list(directory.iterdir()) == []


@pytest.fixture
async def api(node: Node) -> AsyncIterator[tuple[TestClient[Any, Any], ImageCache]]:
    cache = node.cache()
    hub = EventHub()
    manager = GuestManager(
        FakeComputeDriver(cpu=4, memory_bytes=8 * 2**30),
        agent_main.fake_provisioner(node.root),
        hub,
    )
    await manager.start()
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1", images=cache)
    async with TestClient(TestServer(app)) as client:
        yield client, cache
    await manager.stop()


async def test_delete_image_route(node: Node, api: tuple[TestClient[Any, Any], ImageCache]) -> None:
    client, cache = api
    free, used = node.ref("free"), node.ref("used")
    await cache.ensure(free)
    guest = await node.guest_on(cache, used)

    async def delete(uid: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        response = await client.delete(f"/v1/images/{uid}", **kw)
        body: dict[str, Any] = await response.json()
        return response.status, body

    assert (await delete(free.uid))[0] == 401  # the bearer token applies here too
    assert await delete(free.uid, headers=AGENT_AUTH) == (200, {"evicted": True, "inUse": False})
    assert await delete(used.uid, headers=AGENT_AUTH) == (200, {"evicted": False, "inUse": True})
    assert await delete(free.uid, headers=AGENT_AUTH) == (200, {"evicted": False, "inUse": False})
    status, body = await delete("..%2F..%2Fetc%2Fpasswd", headers=AGENT_AUTH)
    assert status == 400 and "not an image UID" in body["error"]
    assert (await delete("not-a-uid", headers=AGENT_AUTH))[0] == 400
    await node.files.remove(guest)
    assert await cache.collect() == [used.uid]
    assert node.cached() == set()


async def test_delete_image_route_without_an_image_cache(node: Node) -> None:
    hub = EventHub()
    manager = GuestManager(
        FakeComputeDriver(cpu=1, memory_bytes=2**30), agent_main.fake_provisioner(node.root), hub
    )
    await manager.start()
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1")
    async with TestClient(TestServer(app)) as client:
        response = await client.delete(f"/v1/images/{uuid.uuid4()}", headers=AGENT_AUTH)
        assert (response.status, await response.json()) == (200, {"evicted": False, "inUse": False})
    await manager.stop()
