"""Per-guest files on the node: the root disk overlay, the seed ISO, the console log."""

from __future__ import annotations

import json
from pathlib import Path

from stratus_agent import process
from stratus_agent.errors import ProvisioningError
from stratus_agent.images import CachedImage
from stratus_api import naming
from stratus_api.reasons import GuestFailure


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

    async def ensure_root_disk(self, uid: str, base: CachedImage, size_bytes: int | None) -> Path:
        """A qcow2 overlay on the cached image; kept as it is when it already exists, so a
        guest's data survives every later ensure."""
        path = self.root_disk(uid)
        if size_bytes is not None and size_bytes < base.virtual_size:
            raise ProvisioningError(
                GuestFailure.DISK_TOO_SMALL,
                f"root disk of {size_bytes} bytes is smaller than the image's virtual size "
                f"of {base.virtual_size} bytes",
            )
        if path.exists():
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base.format, "-b", str(base.path)]
        argv += [str(partial)]
        if size_bytes is not None:
            argv.append(str(size_bytes))
        try:
            await process.run(*argv)
            partial.chmod(0o600)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    async def backing_file(self, uid: str) -> str | None:
        info = await process.run("qemu-img", "info", "--output=json", str(self.root_disk(uid)))
        backing = json.loads(info.stdout).get("backing-filename")
        return str(backing) if backing else None

    def remove(self, uid: str) -> list[Path]:
        removed = []
        for path in self.all(uid):
            if path.exists():
                path.unlink()
                removed.append(path)
        return removed
