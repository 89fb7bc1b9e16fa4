"""Per-guest files on the node: the root disk overlay, the seed ISO, the console log."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from stratus_agent import process
from stratus_agent.compute.domain_builder import GuestOwner
from stratus_agent.errors import ProvisioningError
from stratus_agent.images import CachedImage
from stratus_api import naming
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)


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


class GuestFiles:
    """Names every file of a guest from its UID, under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def root_disk(self, uid: str) -> Path:
        return self.directory / naming.root_disk_file(uid)

    def seed_iso(self, uid: str) -> Path:
        return self.directory / naming.seed_iso_file(uid)

    def console_log(self, uid: str) -> Path:
        return self.directory / naming.console_log_file(uid)

    def all(self, uid: str) -> list[Path]:
        return [self.root_disk(uid), self.seed_iso(uid), self.console_log(uid)]

    async def ensure_root_disk(
        self, uid: str, base: CachedImage, size_bytes: int | None, owner: GuestOwner | None = None
    ) -> Path:
        """A qcow2 overlay on the cached image, private to the guest's owner; kept as it is
        when it already exists, so a guest's data survives every later ensure."""
        path = self.root_disk(uid)
        if size_bytes is not None and size_bytes < base.virtual_size:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"root disk of {size_bytes} bytes is smaller than the image's virtual size "
                f"of {base.virtual_size} bytes",
            )
        if path.exists():
            make_private(path, owner)  # e.g. made before guests had owners of their own
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base.format, "-b", str(base.path)]
        argv += [str(partial)]
        if size_bytes is not None:
            argv.append(str(size_bytes))
        try:
            await process.run(*argv)
            make_private(partial, owner)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    async def backing_file(self, uid: str) -> str | None:
        info = await process.run("qemu-img", "info", "--output=json", str(self.root_disk(uid)))
        backing = json.loads(info.stdout).get("backing-filename")
        return str(backing) if backing else None

    def remove(self, uid: str) -> list[Path]:
        """Remove the guest's files; one that cannot be removed is logged and skipped, so
        the others still go and a delete never fails for good on one leftover."""
        removed = []
        for path in self.all(uid):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("guest %s: cannot remove %s: %s", uid, path, exc)
                continue
            removed.append(path)
        return removed
