"""The node's image cache: download over HTTP(S), verify sha256, detect and check format.

An image is cached under its Image UID. It appears under its final name only once it is
whole and verified, so a failed or interrupted download leaves nothing usable behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from stratus_agent import process
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.guest import ImageRef
from stratus_api.reasons import GuestFailure

CHUNK = 1 << 20
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=3600, sock_connect=30, sock_read=120)


@dataclass(frozen=True)
class CachedImage:
    path: Path
    format: str
    virtual_size: int
    sha256: str


class ImageCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._locks: dict[str, asyncio.Lock] = {}

    def _paths(self, ref: ImageRef) -> tuple[Path, Path]:
        path = self.directory / naming.image_cache_file(ref.uid)
        return path, path.with_suffix(".json")

    async def ensure(self, ref: ImageRef) -> CachedImage:
        lock = self._locks.setdefault(ref.uid, asyncio.Lock())
        async with lock:
            path, meta = self._paths(ref)
            if path.exists() and meta.exists():
                cached = CachedImage(path=path, **json.loads(meta.read_text()))
                if ref.sha256 is None or ref.sha256 == cached.sha256:
                    return cached
                # The Image was re-created with another checksum under the same UID: refetch.
            return await self._fetch(ref, path, meta)

    async def _fetch(self, ref: ImageRef, path: Path, meta: Path) -> CachedImage:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            digest = await self._download(ref, partial)
            if ref.sha256 is not None and digest != ref.sha256:
                raise ProvisioningError(
                    GuestFailure.IMAGE_CHECKSUM_MISMATCH,
                    f"image {ref.name}: downloaded file has sha256 {digest}, "
                    f"spec.source.http.sha256 is {ref.sha256}",
                )
            detected, virtual_size = await self._inspect(ref, partial)
            meta.write_text(
                json.dumps({"format": detected, "virtual_size": virtual_size, "sha256": digest})
            )
            partial.replace(path)
            return CachedImage(path, detected, virtual_size, digest)
        finally:
            partial.unlink(missing_ok=True)

    async def _download(self, ref: ImageRef, target: Path) -> str:
        digest = hashlib.sha256()
        try:
            async with (
                aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as session,
                session.get(ref.url) as response,
            ):
                if response.status != 200:
                    raise ProvisioningError(
                        GuestFailure.IMAGE_DOWNLOAD_FAILED,
                        f"image {ref.name}: GET {ref.url} answered {response.status} "
                        f"{response.reason}",
                    )
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
        except aiohttp.ClientError as exc:
            raise ProvisioningError(
                GuestFailure.IMAGE_DOWNLOAD_FAILED, f"image {ref.name}: GET {ref.url} failed: {exc}"
            ) from exc
        return digest.hexdigest()

    async def _inspect(self, ref: ImageRef, path: Path) -> tuple[str, int]:
        try:
            out = await process.run("qemu-img", "info", "--output=json", str(path))
        except process.CommandError as exc:
            raise ProvisioningError(
                GuestFailure.IMAGE_UNREADABLE,
                f"image {ref.name}: not a disk image ({exc.stderr.strip()})",
            ) from exc
        info = json.loads(out.stdout)
        detected = str(info["format"])
        if info.get("backing-filename"):
            # A backing file would let an image read arbitrary files on the node.
            raise ProvisioningError(
                GuestFailure.IMAGE_HAS_EXTERNAL_REFERENCE,
                f"image {ref.name}: images with a backing file are refused",
            )
        if detected not in ("qcow2", "raw"):
            raise ProvisioningError(
                GuestFailure.IMAGE_FORMAT_UNSUPPORTED,
                f"image {ref.name}: format {detected} is not supported",
            )
        if ref.format is not None and ref.format.value != detected:
            raise ProvisioningError(
                GuestFailure.IMAGE_FORMAT_MISMATCH,
                f"image {ref.name}: spec.format is {ref.format.value} but the file is {detected}",
            )
        return detected, int(info["virtual-size"])

    async def remove(self, image_uid: str) -> None:
        path = self.directory / naming.image_cache_file(image_uid)
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
