"""How the agent heals guests by itself: backoff delays, and restart counts kept on disk.

Pure policy plus one small JSON file per guest; the GuestManager decides when to use them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from stratus_api import naming

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Waits that double from `initial` up to `maximum` seconds."""

    initial: float = 1.0
    maximum: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (0: the first retry)."""
        # Capped before the power is taken, so a long streak cannot overflow a float.
        return min(self.initial * float(2 ** min(attempt, 62)), self.maximum)


@dataclass(frozen=True)
class RecoveryPolicy:
    retry: Backoff = field(default_factory=Backoff)  # transient failures of a converge
    restart: Backoff = field(default_factory=Backoff)  # guests that stopped on their own
    # A guest that ran this long before it stopped starts its restart backoff afresh.
    restart_stable_seconds: float = 600.0
    # How often node state guests depend on (the bridge) is re-ensured.
    node_check_seconds: float = 30.0


@dataclass(frozen=True)
class RestartRecord:
    restarts: int = 0
    last_reason: str = ""


class RestartBook:
    """Restart counts that survive an agent restart: `<uid>-restarts.json` per guest.

    Losing one is harmless (the count starts over), so a file that cannot be read or written
    is logged, never raised.
    """

    SUFFIX = "-restarts.json"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, uid: str) -> Path:
        if not naming.is_uid(uid):
            raise ValueError(f"{uid!r} is not a Kubernetes UID")
        return self.directory / f"{uid}{self.SUFFIX}"

    def load_all(self) -> dict[str, RestartRecord]:
        records: dict[str, RestartRecord] = {}
        for path in sorted(self.directory.glob(f"*{self.SUFFIX}")):
            uid = path.name.removesuffix(self.SUFFIX)
            if not naming.is_uid(uid):
                continue
            try:
                raw = json.loads(path.read_text())
                records[uid] = RestartRecord(int(raw["restarts"]), str(raw["lastReason"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable restart record %s: %s", path, exc)
        return records

    def save(self, uid: str, record: RestartRecord) -> None:
        path = self.path(uid)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(
                json.dumps({"restarts": record.restarts, "lastReason": record.last_reason})
            )
            os.replace(tmp, path)  # never half a file under the final name
        except OSError as exc:
            log.warning("guest %s: cannot save its restart count: %s", uid, exc)

    def remove(self, uid: str) -> None:
        try:
            self.path(uid).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("guest %s: cannot remove its restart record: %s", uid, exc)
