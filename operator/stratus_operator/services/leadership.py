"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it: of
several operator replicas one holds the Lease and reconciles; the others wait, and take it
over once its holder has not renewed it for the lease's duration.

Expiry is judged on this process's own clock, from when it last saw the Lease change (its
holder or renew time), never by comparing the holder's timestamps with ours, so skewed
clocks between nodes do not matter. A leader that cannot renew within its deadline stops
(the process exits: another may already be acting); one that stops cleanly gives the Lease
up so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stratus_operator.services.kube import Kube, KubeError
from stratus_operator.services.settings import LeaderSettings

log = logging.getLogger(__name__)


def _micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Seen:
    """The Lease's record as last seen, and when (this process's monotonic clock)."""

    record: tuple[str, str]  # (holder, renew time): it changes at every renewal
    at: float


def claim(
    lease: dict[str, Any] | None, me: str, seen: Seen | None, now: float, duration: float,
    wall: datetime.datetime,
) -> dict[str, Any] | None:  # fmt: skip
    """The Lease to write for `me` to hold it now (its resourceVersion kept, so a write that
    raced another fails), or None while another holder's lease runs: it ran out when its
    record has not changed for `duration` seconds since it was `seen`."""
    spec = (lease or {}).get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    record = (holder, spec.get("renewTime") or "")
    if holder and holder != me:
        theirs = float(spec.get("leaseDurationSeconds") or duration)  # the holder's promise
        if seen is None or seen.record != record or now - seen.at < theirs:
            return None
    transitions = int(spec.get("leaseTransitions") or 0)
    renewed = {"holderIdentity": me, "leaseDurationSeconds": max(1, round(duration)),
               "renewTime": _micro_time(wall)}  # fmt: skip
    if holder != me:
        renewed |= {"acquireTime": _micro_time(wall), "leaseTransitions": transitions + 1}
    metadata = dict((lease or {}).get("metadata") or {})
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {**spec, **renewed}}  # fmt: skip


class Leader:
    """Holds the Lease named by `settings` for `identity` while the operator runs."""

    def __init__(
        self, connect: Callable[[], Kube], settings: LeaderSettings, identity: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._connect = connect  # again after a 401: the pod's token file is rotated
        self._kube = connect()
        self._settings = settings
        self.identity = identity
        self._clock = clock
        self._seen: Seen | None = None
        self._renewed_at: float | None = None

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        s = self._settings
        log.info("leader election: %s waits for Lease %s/%s", self.identity, s.namespace, s.name)
        while not await self._try():
            await asyncio.sleep(s.retry_seconds)
        log.info("leader election: %s leads (Lease %s/%s)", self.identity, s.namespace, s.name)

    async def keep(self, lost: Callable[[], None]) -> None:
        """Renew the Lease every retry period; call `lost` once it was not renewed within the
        renew deadline (another may hold it by now)."""
        s = self._settings
        while True:
            await asyncio.sleep(s.retry_seconds)
            if await self._try():
                continue
            assert self._renewed_at is not None
            if self._clock() - self._renewed_at > s.renew_deadline_seconds:
                log.error("leader election: %s lost Lease %s/%s (not renewed for %.0f s)",
                          self.identity, s.namespace, s.name, s.renew_deadline_seconds)  # fmt: skip
                lost()
                return

    async def release(self) -> None:
        """Give the Lease up, if held, so a standby takes it at once."""
        s = self._settings
        try:
            lease = await self._kube.lease(s.namespace, s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            await self._kube.write_lease(s.namespace, {**lease, "spec": spec})
            log.info("leader election: %s gave up Lease %s/%s", self.identity, s.namespace,
                     s.name)  # fmt: skip
        except (KubeError, OSError) as exc:
            log.warning("leader election: Lease %s/%s not given up: %s", s.namespace, s.name,
                        exc)  # fmt: skip
        finally:
            await self._kube.close()

    async def _try(self) -> bool:
        """One attempt to take or renew the Lease; True when this process holds it now."""
        s = self._settings
        try:
            lease = await self._kube.lease(s.namespace, s.name)
            now = self._clock()
            spec = (lease or {}).get("spec") or {}
            record = (spec.get("holderIdentity") or "", spec.get("renewTime") or "")
            if self._seen is None or self._seen.record != record:
                self._seen = Seen(record, now)
            wanted = claim(lease, self.identity, self._seen, now, s.lease_seconds,
                           datetime.datetime.now(datetime.UTC))  # fmt: skip
            if wanted is None:
                return False
            if lease is None:
                wanted["metadata"] = {"name": s.name, "namespace": s.namespace}
            written = await self._kube.write_lease(s.namespace, wanted, create=lease is None)
        except (KubeError, OSError) as exc:
            log.warning("leader election: Lease %s/%s not read or written: %s", s.namespace,
                        s.name, exc)  # fmt: skip
            if isinstance(exc, KubeError) and exc.status == 401:
                await self._kube.close()
                self._kube = self._connect()
            return False
        if not written:
            return False  # another wrote it first
        self._renewed_at = now
        return True
