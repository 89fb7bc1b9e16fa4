"""The node's image cache: download over HTTP(S), verify sha256, check format, evict.

An image is cached under its Image UID. It appears under its final name only once it is
whole and verified, so a failed or interrupted download leaves nothing usable behind; its
.json metadata says what it is, when it was last used and whether its Image released it.

Which images guests use is asked of the disk driver (`users`): for files, it reads the
guests' root overlays themselves (the backing file in each qcow2 header), so it survives
agent restarts. A released image goes when no disk uses it; beyond the size budget, the least
recently used unused images go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from stratus_agent.base import CachedImage, ImageCacheStats, Released
from stratus_agent.config import ImagesConfig
from stratus_agent.drivers.formats import imageformat
from stratus_agent.drivers.images import download
from stratus_agent.errors import ProvisioningError
from stratus_api import naming, sources
from stratus_api.imageref import ImageRef
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

# Image UIDs guests' disks depend on (DiskDriver.images_in_use).
ImageUsers = Callable[[], Awaitable[set[str]]]


async def _no_users() -> set[str]:
    return set()


@dataclass(frozen=True)
class _Meta:
    format: str
    virtual_size: int
    sha256: str
    # Wall-clock seconds: kept across agent restarts, compared between images only.
    last_used: float = 0.0
    released: bool = False

    @classmethod
    def parse(cls, text: str) -> _Meta | None:
        try:
            raw = json.loads(text)
            return cls(
                format=str(raw["format"]),
                virtual_size=int(raw["virtual_size"]),
                sha256=str(raw["sha256"]),
                last_used=float(raw.get("last_used", 0.0)),
                released=bool(raw.get("released", False)),
            )
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class _Entry:
    uid: str
    allocated_bytes: int
    meta: _Meta | None


class ImageCache:
    def __init__(
        self,
        directory: Path,
        settings: ImagesConfig | None = None,
        *,
        users: ImageUsers = _no_users,
        own_ports: tuple[int, ...] = (),
    ) -> None:
        """`users`: which images guests' disks use (the disk driver's images_in_use);
        none are by default. `own_ports`: the agent's own service ports, never a download
        source."""
        self.directory = directory
        self.settings = settings if settings is not None else ImagesConfig()
        self.users = users
        self.policy = self.settings.sources.refusing_ports(*own_ports)
        self._locks: dict[str, asyncio.Lock] = {}
        # Released while a download or ensure held the image (so its metadata could not be
        # written then): counts as released until the image is evicted.
        self._release_pending: set[str] = set()
        self._collecting = asyncio.Lock()
        # Ensures answered from the cache, and those that had to download (since start).
        self._hits = 0
        self._misses = 0

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def path(self, image_uid: str) -> Path:
        return self.directory / naming.image_cache_file(image_uid)

    def _meta_path(self, image_uid: str) -> Path:
        return self.path(image_uid).with_suffix(".json")

    # Metadata (blocking: called in a thread).

    def _read_meta(self, uid: str) -> _Meta | None:
        if not self.path(uid).exists():
            return None
        try:
            return _Meta.parse(self._meta_path(uid).read_text())
        except OSError:
            return None

    def _write_meta(self, uid: str, meta: _Meta) -> None:
        target = self._meta_path(uid)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            temporary.write_text(json.dumps(asdict(meta)))
            temporary.replace(target)
        finally:
            temporary.unlink(missing_ok=True)

    def _evict_files(self, uid: str) -> None:
        self.path(uid).unlink(missing_ok=True)
        self._meta_path(uid).unlink(missing_ok=True)

    # Ensure: the image in the cache, downloaded once.

    async def ensure(self, ref: ImageRef) -> CachedImage:
        async with self._lock(ref.uid):
            meta = await asyncio.to_thread(self._read_meta, ref.uid)
            # Another checksum under the same UID (the Image was re-created): refetch.
            if meta is not None and ref.sha256 in (None, meta.sha256):
                self._hits += 1
                released = meta.released or ref.uid in self._release_pending
                meta = replace(meta, last_used=time.time(), released=released)
                await asyncio.to_thread(self._write_meta, ref.uid, meta)
                return CachedImage(
                    ref.uid, self.path(ref.uid), meta.format, meta.virtual_size, meta.sha256
                )
            self._misses += 1
            cached = await self._fetch(ref, released=meta is not None and meta.released)
        await self.collect(keep=ref.uid)  # the new image may have put the cache over budget
        return cached

    async def _fetch(self, ref: ImageRef, *, released: bool) -> CachedImage:
        path = self.path(ref.uid)
        partial = path.with_name(f".{path.name}.partial")
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        limits = download.Limits(
            max_bytes=self.settings.max_image_bytes,
            min_free_bytes=self.settings.min_free_bytes,
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
            read_timeout_seconds=self.settings.read_timeout_seconds,
        )
        try:
            digest = await download.fetch(
                ref.url, partial, name=ref.name, policy=self.policy, limits=limits
            )
            if ref.sha256 is not None and digest != ref.sha256:
                raise ProvisioningError(
                    GuestFailure.IMAGE_CHECKSUM_MISMATCH,
                    f"image {ref.name}: downloaded file has sha256 {digest}, "
                    f"spec.source.http.sha256 is {ref.sha256}",
                )
            expected = ref.format.value if ref.format is not None else None
            detected = await imageformat.inspect(partial, ref.name, expected)
            meta = _Meta(
                format=detected.format,
                virtual_size=detected.virtual_size,
                sha256=digest,
                last_used=time.time(),
                released=released or ref.uid in self._release_pending,
            )
            await asyncio.to_thread(self._write_meta, ref.uid, meta)
            await asyncio.to_thread(partial.replace, path)
            log.info(
                "image %s (%s): cached from %s, %s, %d bytes virtual",
                ref.name, ref.uid, sources.redact(ref.url), detected.format, detected.virtual_size,
            )  # fmt: skip
            return CachedImage(ref.uid, path, detected.format, detected.virtual_size, digest)
        finally:
            partial.unlink(missing_ok=True)  # blocking but short; also runs when cancelled

    async def stats(self) -> ImageCacheStats:
        images, allocated = await asyncio.to_thread(self._usage_now)
        return ImageCacheStats(images=images, bytes=allocated, hits=self._hits, misses=self._misses)

    def _usage_now(self) -> tuple[int, int]:
        """Whole cached images and the bytes they take on disk (blocking); partial
        downloads are not counted."""
        images = allocated = 0
        try:
            listing = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0, 0
        for item in listing:
            uid, _, suffix = item.name.partition(".")
            if suffix != "img" or not naming.is_uid(uid):  # naming.image_cache_file
                continue
            try:
                allocated += item.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                continue  # evicted meanwhile
            images += 1
        return images, allocated

    # Eviction.

    async def in_use(self) -> set[str]:
        return await self.users()

    def _entries_now(self) -> tuple[list[_Entry], list[tuple[str, Path]]]:
        """Every cached image with its allocated size and metadata, and the files a crash
        may have left (partial downloads, metadata of no image) by image UID (blocking)."""
        entries: list[_Entry] = []
        leftovers: list[tuple[str, Path]] = []
        try:
            listing = list(os.scandir(self.directory))
        except FileNotFoundError:
            return entries, leftovers
        for item in listing:
            name = item.name
            if name.startswith(".") and name.endswith((".partial", ".tmp")):
                leftovers.append((name[1:].split(".", 1)[0], Path(item.path)))
                continue
            uid, _, suffix = name.partition(".")
            if not naming.is_uid(uid):
                continue
            if suffix == "json" and not self.path(uid).exists():
                leftovers.append((uid, Path(item.path)))
            if suffix != "img":  # naming.image_cache_file: <uid>.img
                continue
            try:
                allocated = item.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                continue
            entries.append(_Entry(uid, allocated, self._read_meta(uid)))
        return entries, leftovers

    def _remove_leftovers(self, leftovers: list[tuple[str, Path]]) -> None:
        """Unlinks in the event loop, each right after checking that no task holds its
        image: a download starts only with the lock held, so none can start in between."""
        for uid, path in leftovers:
            if not self._lock(uid).locked():
                path.unlink(missing_ok=True)

    async def _evict(self, uid: str, why: str) -> bool:
        """Remove a cached image unless a task holds it right now."""
        lock = self._lock(uid)
        if lock.locked():
            return False
        async with lock:  # free: acquired at once, so nothing changed since the check
            await asyncio.to_thread(self._evict_files, uid)
        log.info("image cache: evicted %s (%s)", uid, why)
        return True

    async def release(self, image_uid: str) -> Released:
        """The Image is gone: remove its cached file now if no guest uses it, else once
        the last guest using it is gone (see `collect`)."""
        lock = self._lock(image_uid)
        if lock.locked():
            # Being downloaded or ensured for a guest: mark it, `collect` finishes the job.
            self._release_pending.add(image_uid)
            return Released(evicted=False, in_use=True)
        async with lock:
            if not await asyncio.to_thread(self.path(image_uid).exists):
                await asyncio.to_thread(self._evict_files, image_uid)  # a stray .json
                return Released(evicted=False, in_use=False)
            if image_uid in await self.in_use():
                meta = await asyncio.to_thread(self._read_meta, image_uid)
                if meta is None:
                    self._release_pending.add(image_uid)
                else:
                    new = replace(meta, released=True)
                    await asyncio.to_thread(self._write_meta, image_uid, new)
                return Released(evicted=False, in_use=True)
            await asyncio.to_thread(self._evict_files, image_uid)
        log.info("image cache: evicted %s (released)", image_uid)
        return Released(evicted=True, in_use=False)

    async def collect(self, *, keep: str | None = None) -> list[str]:
        """Evict released images no guest uses any more, then least recently used unused
        ones while the cache is over its budget (never `keep`); return the UIDs evicted.
        Never raises: it runs after guest deletions and downloads, which must not fail
        because of it."""
        try:
            return await self._collect(keep)
        except Exception:
            log.exception("image cache: collection failed")
            return []

    async def _collect(self, keep: str | None) -> list[str]:
        async with self._collecting:
            used = await self.in_use()
            entries, leftovers = await asyncio.to_thread(self._entries_now)
            self._remove_leftovers(leftovers)
            evicted: list[str] = []
            for entry in entries:
                released = (entry.meta is not None and entry.meta.released) or (
                    entry.uid in self._release_pending
                )
                if (
                    released
                    and entry.uid not in used
                    and entry.uid != keep
                    and await self._evict(entry.uid, "released, no guest uses it")
                ):
                    self._release_pending.discard(entry.uid)
                    evicted.append(entry.uid)
            total = sum(e.allocated_bytes for e in entries if e.uid not in evicted)
            budget = self.settings.cache_budget_bytes
            if total <= budget:
                return evicted
            recent = time.time() - self.settings.eviction_grace_seconds
            candidates = sorted(
                (
                    e
                    for e in entries
                    if e.uid not in evicted and e.uid not in used and e.uid != keep
                    and (e.meta is None or e.meta.last_used < recent)
                ),
                key=lambda e: e.meta.last_used if e.meta is not None else 0.0,
            )  # fmt: skip
            for entry in candidates:
                if total <= budget:
                    break
                if await self._evict(entry.uid, f"least recently used, cache over {budget} B"):
                    evicted.append(entry.uid)
                    total -= entry.allocated_bytes
            if total > budget:
                log.warning(
                    "image cache: %d bytes cached, over the budget of %d; the rest is in use",
                    total, budget,
                )  # fmt: skip
            return evicted

    async def remove(self, image_uid: str) -> None:
        """Remove a cached image whether or not guests use it."""
        async with self._lock(image_uid):
            await asyncio.to_thread(self._evict_files, image_uid)
