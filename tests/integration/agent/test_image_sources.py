"""Where and how the image cache downloads: source policy at every connection and redirect,
no remote text in messages, size cap, free space, timeouts. Real aiohttp servers on
loopback, real files, a real tmpfs for a small filesystem."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from yarl import URL

from stratus_agent.config import ImagesConfig
from stratus_agent.drivers.images import download
from stratus_agent.drivers.images.cache import ImageCache
from stratus_agent.errors import ProvisioningError
from stratus_api.imageref import ImageRef
from stratus_api.sources import SourcePolicy

MiB = 2**20
SECRET = "s3cr3t-T0KEN"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ref(url: str, name: str = "img") -> ImageRef:
    return ImageRef(uid=str(uuid.uuid4()), name=name, url=url)


def images_config(*endpoints: str, **settings: Any) -> ImagesConfig:
    return ImagesConfig(sources=SourcePolicy(allowed_endpoints=endpoints), **settings)


async def failure(cache: ImageCache, url: str) -> ProvisioningError:
    with pytest.raises(ProvisioningError) as caught:
        await cache.ensure(ref(url))
    return caught.value


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Starts a local HTTP server with the given routes; yields its base URL."""
    servers: list[TestServer] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


def raw_image(size: int) -> Handler:
    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=b"\0" * size)

    return handle


def chunked(total: int, chunk: int = MiB) -> Handler:
    """A body of `total` bytes with no Content-Length (chunked encoding)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        sent = 0
        try:
            while sent < total:
                await response.write(b"\0" * chunk)
                sent += chunk
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    return handle


# Source policy.


async def test_loopback_is_refused_by_default_and_allowed_when_listed(
    tmp_path: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    base = await serve({"/disk.raw": raw_image(4096)})
    url = f"{base}disk.raw"
    refused = await failure(ImageCache(tmp_path / "a"), url)
    assert refused.reason == "ImageSourceRefused" and not refused.transient
    assert "127.0.0.0/8" in str(refused)
    assert leftovers(tmp_path / "a") == []
    allowed = ImageCache(tmp_path / "b", images_config(URL(base).raw_authority))
    assert (await allowed.ensure(ref(url))).format == "raw"


async def test_names_resolving_to_refused_addresses_are_refused(
    tmp_path: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    base = URL(await serve({"/disk.raw": raw_image(4096)}))
    by_name = f"http://localhost:{base.port}/disk.raw"  # resolves to 127.0.0.1 (or ::1)
    # Allowing the literal 127.0.0.1 endpoint does not open other names of it... unless
    # they resolve to exactly that endpoint, which is what an allowed endpoint means.
    other_port = ImageCache(tmp_path / "a", images_config("127.0.0.1:1"))
    refused = await failure(other_port, by_name)
    assert refused.reason == "ImageSourceRefused"
    assert "localhost" in str(refused) and "refused network" in str(refused)
    named = ImageCache(tmp_path / "b", images_config(f"localhost:{base.port}"))
    assert (await named.ensure(ref(by_name))).format == "raw"


class _Answers(AbstractResolver):
    """What a hostile DNS server answers: every name is the cloud's metadata service."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answer = ResolveResult(
            hostname=host, host="169.254.169.254", port=port, family=socket.AF_INET, proto=0,
            flags=socket.AI_NUMERICHOST,
        )  # fmt: skip
        return [answer]

    async def close(self) -> None:
        return None


async def test_policy_resolver_refuses_the_metadata_service() -> None:
    resolver = download.PolicyResolver(SourcePolicy(), _Answers())
    with pytest.raises(ValueError, match=r"169\.254\.169\.254 is in refused network"):
        await resolver.resolve("images.example", 80)
    allowed = download.PolicyResolver(
        SourcePolicy(allowed_endpoints=("images.example:80",)), _Answers()
    )
    assert len(await allowed.resolve("images.example", 80)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:80/x",
        "http://0.0.0.0:80/x",
        "ftp://images.example/x",
        "file:///etc/passwd",
        "http://2130706433/x",
        "http://evil.example\\@127.0.0.1/x",
    ],
)
async def test_refused_urls_never_connect(tmp_path: Path, url: str) -> None:
    err = await failure(ImageCache(tmp_path / "images"), url)
    assert err.reason == "ImageSourceRefused", err


async def test_the_agents_own_port_is_refused_even_when_listed(
    tmp_path: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    base = URL(await serve({"/disk.raw": raw_image(4096)}))
    cache = ImageCache(
        tmp_path / "images", images_config(base.raw_authority), own_ports=(base.port or 0,)
    )
    err = await failure(cache, str(base / "disk.raw"))
    assert err.reason == "ImageSourceRefused" and "own" in str(err)


async def test_redirects_are_checked_at_every_hop(
    tmp_path: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    hidden = await serve({"/secret": raw_image(4096)})  # not allowed: loopback

    def to(location: str) -> Handler:
        async def handle(_request: web.Request) -> web.Response:
            raise web.HTTPFound(location)

        return handle

    hops = {f"/hop{i}": to(f"/hop{i + 1}") for i in range(7)}
    base = await serve(
        {"/out": to(f"{hidden}secret"), "/in": to("/hop4"), "/hop7": raw_image(4096), **hops}
    )
    cache = ImageCache(tmp_path / "images", images_config(URL(base).raw_authority))
    outside = await failure(cache, f"{base}out")
    assert outside.reason == "ImageSourceRefused"
    assert URL(hidden).raw_authority in str(outside)
    assert (await cache.ensure(ref(f"{base}in"))).format == "raw"  # 4 hops: fine
    too_many = await failure(cache, f"{base}hop0")  # 7 hops
    assert too_many.reason == "ImageSourceError" and "more than 5 redirects" in str(too_many)
    # Only the image fetched through 4 hops, and its metadata.
    assert [name.rsplit(".", 1)[1] for name in leftovers(tmp_path / "images")] == ["img", "json"]


# What a server says stays out of messages and logs.


async def test_status_and_url_credentials_are_not_echoed(
    tmp_path: Path,
    serve: Callable[[dict[str, Handler]], Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(_request: web.Request) -> web.Response:
        return web.Response(status=500, reason=f"Oops {SECRET}", text=f"stack trace {SECRET}")

    async def gone(_request: web.Request) -> web.Response:
        return web.Response(status=404, reason=f"Nope {SECRET}", text=SECRET)

    async def busy(_request: web.Request) -> web.Response:
        return web.Response(status=429, reason=SECRET)

    base = URL(await serve({"/broken": broken, "/gone": gone, "/busy": busy}))
    cache = ImageCache(tmp_path / "images", images_config(base.raw_authority))
    with_credentials = base.with_user("alice").with_password("hunter2-pw")
    caplog.set_level(logging.DEBUG)
    seen = {}
    for path in ("broken", "gone", "busy"):
        seen[path] = await failure(cache, str(with_credentials / path))
    assert (seen["broken"].reason, seen["broken"].transient) == ("ImageDownloadFailed", True)
    assert "answered 500 Internal Server Error" in str(seen["broken"])
    assert (seen["gone"].reason, seen["gone"].transient) == ("ImageSourceError", False)
    assert "answered 404 Not Found" in str(seen["gone"])
    assert (seen["busy"].reason, seen["busy"].transient) == ("ImageDownloadFailed", True)
    assert "answered 429 Too Many Requests" in str(seen["busy"])
    everything = " ".join(str(e) for e in seen.values()) + caplog.text
    assert SECRET not in everything and "hunter2-pw" not in everything
    assert f"http://***@{base.raw_authority}/broken" in str(seen["broken"])


async def test_garbage_instead_of_http_is_not_echoed(tmp_path: Path) -> None:
    async def garbage(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 {SECRET}\r\nX-{SECRET} {SECRET}\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cache = ImageCache(tmp_path / "images", images_config(f"127.0.0.1:{port}"))
        err = await failure(cache, f"http://127.0.0.1:{port}/x")
    finally:
        server.close()
        await server.wait_closed()
    assert err.reason == "ImageDownloadFailed" and SECRET not in str(err)


# Size cap, free space, timeouts; nothing partial stays behind.


async def test_size_cap_from_content_length_and_while_streaming(
    tmp_path: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    base = await serve({"/big": raw_image(3 * MiB), "/stream": chunked(64 * MiB)})
    cache = ImageCache(
        tmp_path / "images", images_config(URL(base).raw_authority, max_image_bytes=2 * MiB)
    )
    declared = await failure(cache, f"{base}big")
    assert declared.reason == "ImageTooLarge" and "Content-Length of 3145728 bytes" in str(declared)
    streamed = await failure(cache, f"{base}stream")
    assert streamed.reason == "ImageTooLarge" and not streamed.transient
    assert leftovers(tmp_path / "images") == []


@pytest.fixture
def small_filesystem() -> Iterator[Path]:
    """A real 24 MiB tmpfs: a filesystem that fills up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mountpoint = Path(tempfile.mkdtemp(prefix="stratus-small-fs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mountpoint)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        mountpoint.rmdir()


async def test_free_space_is_checked_before_and_during_the_download(
    small_filesystem: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    base = await serve({"/declared": raw_image(20 * MiB), "/stream": chunked(20 * MiB)})
    directory = small_filesystem / "images"
    cache = ImageCache(directory, images_config(URL(base).raw_authority, min_free_bytes=8 * MiB))
    before = await failure(cache, f"{base}declared")  # 20 MiB + 8 MiB kept > 24 MiB
    assert before.reason == "NodeStorageFull" and before.transient
    assert "images.min_free_bytes" in str(before)
    during = await failure(cache, f"{base}stream")  # unknown length: stops on the way
    assert during.reason == "NodeStorageFull"
    assert leftovers(directory) == []
    assert download.available_bytes(small_filesystem) > 20 * MiB  # the partial file is gone


async def test_a_full_filesystem_fails_as_storage_full(
    small_filesystem: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    base = await serve({"/stream": chunked(40 * MiB)})
    directory = small_filesystem / "images"
    cache = ImageCache(directory, images_config(URL(base).raw_authority, min_free_bytes=0))
    err = await failure(cache, f"{base}stream")
    assert err.reason == "NodeStorageFull"
    assert leftovers(directory) == []


async def test_a_hanging_server_times_out(
    tmp_path: Path, serve: Callable[[dict[str, Handler]], Awaitable[str]]
) -> None:
    async def hang_before(_request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=b"late")

    async def hang_midway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(4 * MiB)})
        await response.prepare(request)
        await response.write(b"\0" * MiB)
        await asyncio.sleep(30)
        return response

    base = await serve({"/before": hang_before, "/midway": hang_midway})
    cache = ImageCache(
        tmp_path / "images", images_config(URL(base).raw_authority, read_timeout_seconds=0.5)
    )
    loop = asyncio.get_running_loop()
    for path in ("before", "midway"):
        started = loop.time()
        err = await failure(cache, f"{base}{path}")
        assert err.reason == "ImageDownloadFailed" and err.transient
        assert "no data for 0.5 s" in str(err)
        assert loop.time() - started < 10
    assert leftovers(tmp_path / "images") == []
