"""The node specs the operator sent for Networks (PUT /v1/networks/{uid}) and Routers
(PUT /v1/routers/{uid}), one JSON file per object under state_dir/network/<kind>, each
replaced whole: a restarted agent rebuilds its overlay and routers from them before the
operator resends anything. Blocking: call from a thread."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import ValidationError

from stratus_api import naming
from stratus_api.v1alpha1.base import ApiModel

S = TypeVar("S", bound=ApiModel)
log = logging.getLogger(__name__)


class SpecFiles(Generic[S]):
    def __init__(self, directory: Path, model: type[S]) -> None:
        self.directory = directory
        self.model = model

    def _file(self, uid: str) -> Path:
        return self.directory / f"{uid}.json"

    def load(self) -> dict[str, S]:
        """Every spec kept; an unreadable one is logged and left out."""
        specs = {}
        for path in sorted(self.directory.glob("*.json")):
            if not naming.is_uid(path.stem):
                continue
            try:
                spec = self.model.model_validate_json(path.read_text())
            except (OSError, ValidationError) as exc:
                log.warning("node spec %s cannot be read, left out: %s", path, exc)
                continue
            if getattr(spec, "uid", None) == path.stem:
                specs[path.stem] = spec
        return specs

    def save(self, uid: str, spec: S) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._file(uid)
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
