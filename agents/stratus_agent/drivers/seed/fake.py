"""A seed drive that writes nothing, for the fake compute mode."""

from __future__ import annotations

from pathlib import Path

from stratus_agent.base import GuestOwner
from stratus_api import naming
from stratus_api.guest import GuestSpec


class FakeSeed:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def write(self, spec: GuestSpec, owner: GuestOwner | None) -> str:
        return str(self.directory / naming.seed_iso_file(spec.uid))

    async def remove(self, uid: str) -> None:
        return None
