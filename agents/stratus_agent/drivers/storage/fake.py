"""A disk driver that makes nothing, for the fake compute mode."""

from __future__ import annotations

from pathlib import Path

from stratus_agent.base import CachedImage, DiskSource, GuestOwner
from stratus_api import naming


class FakeDiskDriver:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def ensure_root_disk(
        self,
        uid: str,
        image: CachedImage,
        size_bytes: int | None,
        owner: GuestOwner | None = None,
    ) -> DiskSource:
        return DiskSource(path=str(self.directory / naming.root_disk_file(uid)), format="qcow2")

    async def grow(self, uid: str, size_bytes: int) -> None:
        return None

    async def remove(self, uid: str) -> None:
        return None

    async def images_in_use(self) -> set[str]:
        return set()
