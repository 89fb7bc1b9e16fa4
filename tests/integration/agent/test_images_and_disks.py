"""Image cache and root disks with real qemu-img, images served over local HTTP.

The server is on loopback, which the default source policy refuses: each cache here
allows the server's exact host:port, as the all-in-one does for its image server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from stratus_agent.config import ImagesConfig
from stratus_agent.drivers.images.cache import ImageCache
from stratus_agent.drivers.storage.file import FileDiskDriver
from stratus_agent.errors import ProvisioningError
from stratus_api.imageref import ImageRef
from stratus_api.sources import SourcePolicy
from stratus_api.v1alpha1.image import DiskFormat
from testsupport import qcow2_naming_data_file

PASSWD_LINE = "root:x:0:0"  # /etc/passwd's first line: must never show in a message


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def allowing(base: str, **settings: object) -> ImagesConfig:
    """Settings whose source policy allows the local test server at `base`."""
    policy = SourcePolicy(allowed_endpoints=(URL(base).raw_authority,))
    return ImagesConfig(sources=policy, **settings)  # type: ignore[arg-type]


def cache_for(tmp_path: Path, base: str, **settings: object) -> ImageCache:
    return ImageCache(tmp_path / "images", allowing(base, **settings))


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
    made = {"base.qcow2": qcow2.read_bytes(), "disk.raw": b"\0" * 65536,
            "backed.qcow2": backed.read_bytes()}  # fmt: skip
    # Another tenant's file as an external data file: a read of the guest disk would be a
    # read of /etc/passwd (data_file_raw: the same bytes at the same offsets).
    qcow2_naming_data_file(tmp_path / "datafile.qcow2", "/etc/passwd")
    # A FIFO as data file: opening it would block whoever opens it.
    fifo_data = tmp_path / "fifo-data"
    fifo_data.touch()
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={fifo_data}",
             str(tmp_path / "fifo.qcow2"), "1M")  # fmt: skip
    fifo_data.unlink()
    os.mkfifo(fifo_data)
    # Backing files that are not plain paths: QEMU's json: pseudo-protocol and a network
    # protocol (-u: not opened while creating).
    json_backing = 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}'
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", json_backing, "-u",
             str(tmp_path / "json.qcow2"), "1M")  # fmt: skip
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "nbd://127.0.0.1:10809/x", "-u",
             str(tmp_path / "nbd.qcow2"), "1M")  # fmt: skip
    # Other formats QEMU reads, some of which name files outside themselves.
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "disk.vmdk"), "1M")
    qemu_img("create", "-q", "-f", "qed", "-F", "raw", "-b", "/etc/passwd", "-u",
             str(tmp_path / "backed.qed"), "1M")  # fmt: skip
    descriptor = (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\nRW 2048 FLAT "/etc/passwd" 0\n'
    )
    made["extent.vmdk"] = descriptor.encode()
    for name in ("datafile.qcow2", "fifo.qcow2", "json.qcow2", "nbd.qcow2", "disk.vmdk",
                 "backed.qed"):  # fmt: skip
        made[name] = (tmp_path / name).read_bytes()
    return made


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
    cache = cache_for(tmp_path, base)
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
        ("missing.qcow2", {}, "ImageSourceError"),
        ("disk.raw", {"format": DiskFormat.QCOW2}, "ImageFormatMismatch"),
        ("base.qcow2", {"format": DiskFormat.RAW}, "ImageFormatMismatch"),
        ("backed.qcow2", {}, "ImageHasExternalReference"),
        ("datafile.qcow2", {}, "ImageHasExternalReference"),
        ("fifo.qcow2", {}, "ImageHasExternalReference"),
        ("json.qcow2", {}, "ImageHasExternalReference"),
        ("nbd.qcow2", {}, "ImageHasExternalReference"),
        ("disk.vmdk", {}, "ImageFormatUnsupported"),
        ("extent.vmdk", {}, "ImageFormatUnsupported"),
        ("backed.qed", {}, "ImageFormatUnsupported"),
    ],
)
async def test_bad_images_fail_clearly_and_cache_nothing(
    tmp_path: Path, server: tuple[str, list[str]], name: str, kw: dict[str, object], reason: str
) -> None:
    base, _ = server
    cache = cache_for(tmp_path, base)
    with pytest.raises(ProvisioningError) as caught:
        await cache.ensure(ref(base, name, **kw))
    assert caught.value.reason == reason
    assert name in str(caught.value)
    assert PASSWD_LINE not in str(caught.value)
    assert list((tmp_path / "images").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("backed.qcow2", "backing file '/etc/hostname'"),
        ("datafile.qcow2", "external data file '/etc/passwd'"),
        ("json.qcow2", "backing file 'json:"),
        ("nbd.qcow2", "backing file 'nbd://127.0.0.1:10809/x'"),
    ],
)
async def test_external_references_are_named_in_the_message(
    tmp_path: Path, server: tuple[str, list[str]], name: str, named: str
) -> None:
    base, _ = server
    with pytest.raises(ProvisioningError) as caught:
        await cache_for(tmp_path, base).ensure(ref(base, name))
    assert named in str(caught.value)
    assert not caught.value.transient


async def test_unreachable_server(tmp_path: Path) -> None:
    cache = cache_for(tmp_path, "http://127.0.0.1:9/")
    with pytest.raises(ProvisioningError, match="cannot connect") as caught:
        await cache.ensure(ref("http://127.0.0.1:9/", "nothing.qcow2"))
    assert caught.value.reason == "ImageDownloadFailed" and caught.value.transient


async def test_root_disk_is_an_overlay_kept_across_ensures(
    tmp_path: Path, server: tuple[str, list[str]]
) -> None:
    base, _ = server
    cached = await cache_for(tmp_path, base).ensure(ref(base, "base.qcow2"))
    files = FileDiskDriver(tmp_path / "guests")
    uid = str(uuid.uuid4())
    source = await files.ensure_root_disk(uid, cached, 16 * 2**20)
    assert source.format == "qcow2"
    disk = Path(source.path)
    assert await files.backing_file(uid) == str(cached.path)
    info = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    assert "virtual size: 16 MiB" in info
    before = disk.stat().st_mtime_ns
    assert await files.ensure_root_disk(uid, cached, 16 * 2**20) == source
    assert disk.stat().st_mtime_ns == before
    with pytest.raises(ProvisioningError) as too_small:
        await files.ensure_root_disk(str(uuid.uuid4()), cached, 2**20)
    assert too_small.value.reason == "DiskTooSmall"
    await files.remove(uid)
    assert not disk.exists()
    assert list((tmp_path / "guests").iterdir()) == []
