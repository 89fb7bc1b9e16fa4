"""One user per guest: the UID its QEMU runs as and that owns its files, and only its files.

Guests' QEMU processes would otherwise all run as libvirt-qemu, so one compromised QEMU could
open every other guest's disk and seed ISO (user-data may hold credentials). Each guest gets
a UID from a configured range instead. The domain definition records it (a static DAC
seclabel), so after an agent restart the map is rebuilt from the defined domains: nothing
else is stored, and the domain that runs is the authority on which UID is taken.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from stratus_agent.base import GuestOwner
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)


class GuestOwners:
    """Hands out UIDs from [first, first + count): each guest keeps its own until deleted."""

    def __init__(self, first: int, count: int, gid: int | None = None) -> None:
        self.first, self.count = first, count
        # None: each guest also has its own group (numbered like its UID), so not even group
        # permissions are shared between guests.
        self.gid = gid
        self._by_guest: dict[str, GuestOwner] = {}
        self._taken: set[int] = set()

    def _in_range(self, uid: int) -> bool:
        return self.first <= uid < self.first + self.count

    def adopt(self, known: Mapping[str, GuestOwner]) -> None:
        """Take over the UIDs that defined domains already run as (agent restart)."""
        for guest, owner in sorted(known.items()):
            if not self._in_range(owner.uid):
                # Made with another range: it keeps its label until its next ensure.
                log.warning(
                    "guest %s runs as uid %d, outside the configured range", guest, owner.uid
                )
                continue
            if owner.uid in self._taken and self._by_guest.get(guest) != owner:
                # Two domains with one UID would share their files: the second gets a new one
                # at its next ensure (its QEMU keeps running as it is until restarted).
                log.error(
                    "guest %s: uid %d is already another guest's; reassigning", guest, owner.uid
                )
                continue
            self._by_guest[guest] = owner
            self._taken.add(owner.uid)

    def owner(self, guest: str) -> GuestOwner:
        """The guest's owner, allocated (lowest free UID) on first use."""
        existing = self._by_guest.get(guest)
        if existing is not None:
            return existing
        for uid in range(self.first, self.first + self.count):
            if uid not in self._taken:
                owner = GuestOwner(uid=uid, gid=uid if self.gid is None else self.gid)
                self._by_guest[guest] = owner
                self._taken.add(uid)
                return owner
        raise ProvisioningError(
            GuestFailure.AGENT_ERROR,
            f"all {self.count} guest UIDs from {self.first} are in use "
            "(isolation.uid_count); a deleted guest frees one",
        )

    def release(self, guest: str) -> None:
        owner = self._by_guest.pop(guest, None)
        if owner is not None:
            self._taken.discard(owner.uid)

    def known(self) -> dict[str, GuestOwner]:
        return dict(self._by_guest)
