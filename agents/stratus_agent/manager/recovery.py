"""How the agent heals guests by itself: backoff delays, and per-guest records kept on disk
(restart counts, and the restart token last acted on).

Pure policy plus one small JSON file per guest; the GuestManager decides when to use them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    restarts: int = 0  # restarts after the guest stopped on its own (runStrategy Always)
    last_reason: str = ""
    # The spec's restart_token last acted on; `token_known` tells "acted on no token" from
    # "never saw a spec" (whose first token is adopted without a restart).
    restart_token: str | None = None
    token_known: bool = False

    def to_json(self) -> dict[str, object]:
        raw: dict[str, object] = {"restarts": self.restarts, "lastReason": self.last_reason}
        if self.token_known:
            raw["restartToken"] = self.restart_token
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RestartRecord:
        token = raw.get("restartToken")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"restartToken {token!r} is not a string")
        return cls(
            restarts=int(raw["restarts"]),
            last_reason=str(raw["lastReason"]),
            restart_token=token,
            token_known="restartToken" in raw,
        )


class RestartBook:
    """Restart records that survive an agent restart: `<uid>-restarts.json` per guest.

    Losing one is harmless (the count starts over; the next token is adopted without a
    restart), so a file that cannot be read or written is logged, never raised.
    """

    SUFFIX = "-restarts.json"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Saves run in worker threads, which outlive a cancelled task: a save finishing
        # after its guest's delete would leave the file behind. Removed guests stay removed.
        self._lock = threading.Lock()
        self._removed: set[str] = set()

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
                records[uid] = RestartRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable restart record %s: %s", path, exc)
        return records

    def save(self, uid: str, record: RestartRecord) -> None:
        path = self.path(uid)
        tmp = path.with_name(f".{path.name}.tmp")
        with self._lock:
            if uid not in self._removed:
                self._write(uid, path, tmp, record)

    def _write(self, uid: str, path: Path, tmp: Path, record: RestartRecord) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record.to_json()))
            os.replace(tmp, path)  # never half a file under the final name
        except OSError as exc:
            log.warning("guest %s: cannot save its restart record: %s", uid, exc)

    def remove(self, uid: str) -> None:
        try:
            with self._lock:
                self._removed.add(uid)
                self.path(uid).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("guest %s: cannot remove its restart record: %s", uid, exc)
