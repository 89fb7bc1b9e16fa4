"""Local VLAN tags on the node's bridge: one per Network with guests on this node, as
Neutron's OVS agent keeps them on its integration bridge. Every port of a Network's guests
carries its tag, so guests of different Networks never share a frame, even with equal CIDRs.

Tags are local to the node (another node may give the same Network another tag), chosen
lowest free first from 1-4094, and kept in one JSON file replaced whole, so a restarted
agent puts a guest's port back into its network.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

FIRST, LAST = 1, 4094  # 0 and 4095 are reserved by 802.1Q


class LocalVlans:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._tags: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("local VLANs: cannot read %s, starting without it: %s", self.path, exc)
            return {}
        return {
            uid: tag for uid, tag in raw.items()
            if naming.is_uid(uid) and isinstance(tag, int) and FIRST <= tag <= LAST
        }  # fmt: skip

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps(self._tags, sort_keys=True))
        os.replace(partial, self.path)

    def tag_of(self, network_uid: str) -> int:
        """The Network's tag, given now if it has none. Blocking (writes the file)."""
        tag = self._tags.get(network_uid)
        if tag is not None:
            return tag
        used = set(self._tags.values())
        tag = next((t for t in range(FIRST, LAST + 1) if t not in used), None)
        if tag is None:
            raise ProvisioningError(
                GuestFailure.NETWORK_SETUP_FAILED,
                f"no free local VLAN tag on this node: {LAST} Networks have guests here",
            )
        self._tags[network_uid] = tag
        self._save()
        return tag

    def release(self, tags: set[int]) -> list[str]:
        """No port carries these tags any more: their Networks give them back; the UIDs of
        those Networks. Blocking."""
        gone = sorted(uid for uid, tag in self._tags.items() if tag in tags)
        for uid in gone:
            del self._tags[uid]
        if gone:
            self._save()
        return gone

    def tags(self) -> dict[str, int]:
        return dict(self._tags)
