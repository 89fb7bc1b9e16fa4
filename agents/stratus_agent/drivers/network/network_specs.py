"""The node network specs the operator sent (PUT /v1/networks/{uid}), one JSON file per
Network under state_dir/network/specs, each replaced whole: a restarted agent rebuilds its
overlay from them before the operator resends anything. Blocking: call from a thread."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError

from stratus_api import naming
from stratus_api.network_wire import NodeNetworkSpec

log = logging.getLogger(__name__)


class NetworkSpecFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, uid: str) -> Path:
        return self.directory / f"{uid}.json"

    def load(self) -> dict[str, NodeNetworkSpec]:
        """Every spec kept; an unreadable one is logged and left out."""
        specs = {}
        for path in sorted(self.directory.glob("*.json")):
            if not naming.is_uid(path.stem):
                continue
            try:
                spec = NodeNetworkSpec.model_validate_json(path.read_text())
            except (OSError, ValidationError) as exc:
                log.warning("network spec %s cannot be read, left out: %s", path, exc)
                continue
            if spec.uid == path.stem:
                specs[spec.uid] = spec
        return specs

    def save(self, spec: NodeNetworkSpec) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._file(spec.uid)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(spec.model_dump_json(by_alias=True))
        os.replace(partial, path)

    def remove(self, uid: str) -> bool:
        """True if there was a spec."""
        try:
            self._file(uid).unlink()
        except FileNotFoundError:
            return False
        return True
