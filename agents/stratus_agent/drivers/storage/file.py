"""The file disk driver: a guest's root disk is a qcow2 overlay on the cached base image.

Files stay private to the guest's own user; the cached base images stay root's and read-only
for every guest. Which images are in use is read from the overlays themselves (the backing
file in each qcow2 header), so it survives agent restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path, PurePath

from stratus_agent import process
from stratus_agent.base import CachedImage, DiskSource, GuestOwner
from stratus_agent.drivers.formats import qcow2
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

# Overlays being made are `.<name>.partial` until complete: they count as image users too.
_OVERLAY_SUFFIXES = ("-root.qcow2", "-root.qcow2.partial")
_IMAGE_SUFFIX = ".img"  # naming.image_cache_file


def make_private(path: Path, owner: GuestOwner | None) -> None:
    """Readable and writable by the guest's own QEMU user only (root when no owner)."""
    if owner is not None:
        st = path.stat()
        if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
            os.chown(path, owner.uid, owner.gid)
    path.chmod(0o600)


def share_read_only(path: Path) -> None:
    """A file every guest's QEMU may read and none may write: a cached base image, which
    overlays of many guests use as their backing file. Root-owned, so no guest user owns it
    (the owner could chmod it back to writable)."""
    st = path.stat()
    if (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, 0, 0)
    if st.st_mode & 0o777 != 0o644:
        path.chmod(0o644)


class FileDiskDriver:
    """Root disks as `<uid>-root.qcow2` under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def root_disk(self, uid: str) -> Path:
        return self.directory / naming.root_disk_file(uid)

    async def ensure_root_disk(
        self,
        uid: str,
        image: CachedImage,
        size_bytes: int | None,
        owner: GuestOwner | None = None,
    ) -> DiskSource:
        """A qcow2 overlay on the cached image, private to the guest's owner; kept as it is
        when it already exists, so a guest's data survives every later ensure."""
        path = self.root_disk(uid)
        if size_bytes is not None and size_bytes < image.virtual_size:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"root disk of {size_bytes} bytes is smaller than the image's virtual size "
                f"of {image.virtual_size} bytes",
            )
        if owner is not None:
            # Every guest's QEMU reads the base image through its overlay's backing chain.
            await asyncio.to_thread(share_read_only, image.path)
        source = DiskSource(path=str(path), format="qcow2")
        if await asyncio.to_thread(path.exists):
            # e.g. made before guests had owners of their own
            await asyncio.to_thread(make_private, path, owner)
            return source
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.format]
        argv += ["-b", str(image.path), str(partial)]
        if size_bytes is not None:
            argv.append(str(size_bytes))
        try:
            await process.run(*argv)
            await asyncio.to_thread(make_private, partial, owner)
            await asyncio.to_thread(partial.replace, path)
        finally:
            partial.unlink(missing_ok=True)  # blocking but short; also runs when cancelled
        return source

    async def grow(self, uid: str, size_bytes: int) -> None:
        """`qemu-img resize` of the overlay, which must not be open: for a stopped guest. A
        running one needs the compute driver's block resize as well (not offered yet)."""
        path = self.root_disk(uid)
        info = json.loads(
            (await process.run("qemu-img", "info", "--output=json", str(path))).stdout
        )
        current = int(info["virtual-size"])
        if size_bytes < current:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"root disk is {current} bytes; shrinking it to {size_bytes} would lose data",
            )
        if size_bytes > current:
            await process.run("qemu-img", "resize", "-q", str(path), str(size_bytes))

    async def backing_file(self, uid: str) -> str | None:
        info = await process.run("qemu-img", "info", "--output=json", str(self.root_disk(uid)))
        backing = json.loads(info.stdout).get("backing-filename")
        return str(backing) if backing else None

    async def remove(self, uid: str) -> None:
        """Remove the overlay; one that cannot be removed is logged, so a delete never fails
        for good on one leftover."""
        path = self.root_disk(uid)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            log.warning("guest %s: cannot remove %s: %s", uid, path, exc)

    async def images_in_use(self) -> set[str]:
        return await asyncio.to_thread(self._images_in_use_now)

    def _images_in_use_now(self) -> set[str]:
        """Image UIDs some guest's root overlay has as its backing file (blocking)."""
        used: set[str] = set()
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return used
        for entry in entries:
            name = entry.name.lstrip(".")
            if not name.endswith(_OVERLAY_SUFFIXES):
                continue
            try:
                header = qcow2.read_header(Path(entry.path))
            except (OSError, qcow2.Qcow2Error) as exc:
                log.warning("disks: cannot read overlay %s: %s", entry.path, exc)
                continue
            if header is None or header.backing_file is None:
                continue
            base = PurePath(header.backing_file).name
            uid = base.removesuffix(_IMAGE_SUFFIX)
            if base.endswith(_IMAGE_SUFFIX) and naming.is_uid(uid):
                used.add(uid)
        return used
