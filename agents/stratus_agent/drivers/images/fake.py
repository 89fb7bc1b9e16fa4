"""An image store that stores nothing, for the fake compute mode: every image is 'cached'
at once, at a path nobody reads, so scale tests and benchmarks spend nothing on images."""

from __future__ import annotations

from pathlib import Path

from stratus_agent.base import CachedImage, ImageCacheStats, Released
from stratus_api import naming
from stratus_api.imageref import ImageRef

# What a fake image claims to be: small enough for any root disk size in a spec.
FAKE_VIRTUAL_SIZE = 2**20


class FakeImageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def ensure(self, ref: ImageRef) -> CachedImage:
        return CachedImage(
            ref.uid,
            self.directory / naming.image_cache_file(ref.uid),
            "qcow2",
            FAKE_VIRTUAL_SIZE,
            ref.sha256 or "",
        )

    async def release(self, image_uid: str) -> Released:
        return Released(evicted=False, in_use=False)

    async def collect(self) -> list[str]:
        return []

    async def stats(self) -> ImageCacheStats:
        # It holds no image and never looks one up: nothing to count.
        return ImageCacheStats(images=0, bytes=0, hits=0, misses=0)
