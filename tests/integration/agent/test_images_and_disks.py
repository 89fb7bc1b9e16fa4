"""Image cache and root disks with real qemu-img, images served over local HTTP."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from stratus_agent.disks import GuestFiles
from stratus_agent.errors import ProvisioningError
from stratus_agent.images import ImageCache
from stratus_api.guest import ImageRef
from stratus_api.v1alpha1.image import DiskFormat


@pytest.fixture
def served(tmp_path: Path) -> dict[str, bytes]:
    qcow2 = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "8M"], check=True)
    backed = tmp_path / "backed.qcow2"
    subprocess.run(
        # Pointing at a file on the serving host: exactly what the cache must refuse.
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "-u",
         str(backed), "1M"], check=True,
    )  # fmt: skip
    return {"base.qcow2": qcow2.read_bytes(), "disk.raw": b"\0" * 65536,
            "backed.qcow2": backed.read_bytes()}  # fmt: skip


@pytest.fixture
async def server(served: dict[str, bytes]) -> AsyncIterator[tuple[str, list[str]]]:
    requests: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        requests.append(name)
        if name not in served:
            raise web.HTTPNotFound()
        return web.Response(body=served[name])

    app = web.Application()
    app.router.add_get("/{name}", handle)
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield str(test_server.make_url("/")), requests


def ref(base: str, name: str, **kw: object) -> ImageRef:
    return ImageRef(uid=str(uuid.uuid4()), name=name, url=f"{base}{name}", **kw)  # type: ignore[arg-type]


async def test_download_verify_detect_and_reuse(
    tmp_path: Path, server: tuple[str, list[str]], served: dict[str, bytes]
) -> None:
    base, requests = server
    cache = ImageCache(tmp_path / "images")
    digest = hashlib.sha256(served["base.qcow2"]).hexdigest()
    image = ref(base, "base.qcow2", sha256=digest, format=DiskFormat.QCOW2)
    cached = await cache.ensure(image)
    assert (cached.format, cached.virtual_size, cached.sha256) == ("qcow2", 8 * 2**20, digest)
    assert cached.path.read_bytes() == served["base.qcow2"]
    again = await cache.ensure(image)
    assert again == cached and requests == ["base.qcow2"]  # cached: not fetched twice


@pytest.mark.parametrize(
    ("name", "kw", "reason"),
    [
        ("base.qcow2", {"sha256": "0" * 64}, "ImageChecksumMismatch"),
        ("missing.qcow2", {}, "ImageDownloadFailed"),
        ("disk.raw", {"format": DiskFormat.QCOW2}, "ImageFormatMismatch"),
        ("backed.qcow2", {}, "ImageHasBackingFile"),
    ],
)
async def test_bad_images_fail_clearly_and_cache_nothing(
    tmp_path: Path, server: tuple[str, list[str]], name: str, kw: dict[str, object], reason: str
) -> None:
    base, _ = server
    cache = ImageCache(tmp_path / "images")
    with pytest.raises(ProvisioningError) as caught:
        await cache.ensure(ref(base, name, **kw))
    assert caught.value.reason == reason
    assert name in str(caught.value)
    assert list((tmp_path / "images").iterdir()) == []


async def test_unreachable_server(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images")
    with pytest.raises(ProvisioningError, match="failed") as caught:
        await cache.ensure(ref("http://127.0.0.1:9/", "nothing.qcow2"))
    assert caught.value.reason == "ImageDownloadFailed"


async def test_root_disk_is_an_overlay_kept_across_ensures(
    tmp_path: Path, server: tuple[str, list[str]]
) -> None:
    base, _ = server
    cached = await ImageCache(tmp_path / "images").ensure(ref(base, "base.qcow2"))
    files = GuestFiles(tmp_path / "guests")
    uid = str(uuid.uuid4())
    disk = await files.ensure_root_disk(uid, cached, 16 * 2**20)
    assert await files.backing_file(uid) == str(cached.path)
    info = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    assert "virtual size: 16 MiB" in info
    before = disk.stat().st_mtime_ns
    assert await files.ensure_root_disk(uid, cached, 16 * 2**20) == disk
    assert disk.stat().st_mtime_ns == before
    with pytest.raises(ProvisioningError) as too_small:
        await files.ensure_root_disk(str(uuid.uuid4()), cached, 2**20)
    assert too_small.value.reason == "DiskTooSmall"
    assert files.remove(uid) == [disk]
    assert list((tmp_path / "guests").iterdir()) == []
