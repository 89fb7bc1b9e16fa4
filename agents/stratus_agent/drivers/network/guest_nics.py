"""Which NICs each local guest has (Network, MAC, address), kept in one JSON file under
state_dir/network: the DHCP servers' reservations, which must survive an agent restart (the
running dnsmasq keeps serving them, and its hosts file must not be rewritten empty before the
guests' specs come back). Blocking: call from a thread."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuestNic:
    """`port`: its OVS port (tap) name; `groups`: the security groups filtering it
    ("namespace/name"), None when it is not filtered."""

    network_uid: str
    mac: str
    address: str | None
    port: str | None = None
    groups: tuple[str, ...] | None = None


class GuestNics:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._nics = self._load()

    def _load(self) -> dict[str, tuple[GuestNic, ...]]:
        try:
            raw = json.loads(self.path.read_text())
            return {uid: tuple(_nic(nic) for nic in nics) for uid, nics in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            # Lost reservations come back as each guest is ensured again.
            log.warning("guest NICs in %s cannot be read, starting empty: %s", self.path, exc)
            return {}

    def record(self, guest_uid: str, nics: tuple[GuestNic, ...]) -> set[str]:
        """The guest's NICs now; the Networks whose reservations changed."""
        before = self._nics.get(guest_uid, ())
        if before == nics:
            return set()
        if nics:
            self._nics[guest_uid] = nics
        else:
            self._nics.pop(guest_uid, None)
        self._save()
        return {nic.network_uid for nic in (*before, *nics)}

    def guarded(self) -> list[GuestNic]:
        """Every NIC filtered by security groups."""
        return [nic for nics in self._nics.values() for nic in nics if nic.groups is not None]

    def forget(self, guest_uid: str) -> set[str]:
        return self.record(guest_uid, ())

    def on_network(self, network_uid: str) -> list[GuestNic]:
        return [nic for nics in self._nics.values() for nic in nics
                if nic.network_uid == network_uid]  # fmt: skip

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        data = {uid: [asdict(nic) for nic in nics] for uid, nics in self._nics.items()}
        partial.write_text(json.dumps(data, sort_keys=True))
        os.replace(partial, self.path)


def _nic(raw: dict[str, Any]) -> GuestNic:
    groups = raw.get("groups")
    return GuestNic(**{**raw, "groups": tuple(groups) if groups is not None else None})
