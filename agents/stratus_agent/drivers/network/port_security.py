"""Security groups on the integration bridge: the groups' node specs, kept one JSON file
each (a restarted agent filters its guests before the operator resends anything), and the
bridge's flow table computed whole from them, the guest NICs and the ports on the bridge
(firewall.py), applied after every change and by the periodic check.

A filtered NIC whose port libvirt has not made yet is pending: frames to its MAC are
dropped, and frames from a port the table does not know yet are dropped too, so a new port
is never open, only closed until the next apply.
"""

from __future__ import annotations

import asyncio
import logging

from stratus_agent import process
from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_agent.drivers.network.conntrack import Conntrack
from stratus_agent.drivers.network.firewall import (
    Firewall,
    GuardedPort,
    OpenPort,
    PendingPort,
    flow_table,
)
from stratus_agent.drivers.network.guest_nics import GuestNics
from stratus_agent.drivers.network.local_vlans import LocalVlans
from stratus_agent.drivers.network.spec_files import SpecFiles
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure
from stratus_api.security_group_wire import NodeSecurityGroupSpec

log = logging.getLogger(__name__)


class PortSecurity:
    def __init__(
        self,
        bridge: OvsBridge,
        firewall: Firewall,
        specs: SpecFiles[NodeSecurityGroupSpec],
        nics: GuestNics,
        vlans: LocalVlans,
        conntrack: Conntrack | None = None,
        *,
        enabled: bool = True,
    ) -> None:
        """`specs` are read now (blocking). `conntrack`: where connections the rules no
        longer allow are cut (None: they run on until they end). Not `enabled`: every
        port is open (plain switching), whatever its groups."""
        self.bridge = bridge
        self.firewall = firewall
        self._files = specs
        self._specs = specs.load()
        self._nics = nics
        self._vlans = vlans
        self._lock = asyncio.Lock()  # one table computed and applied at a time
        self._conntrack = conntrack
        self._judged: object = None  # the ports and rules connections were last judged by
        self.enabled = enabled
        self._fail_mode_set = False

    async def ensure(self, spec: NodeSecurityGroupSpec) -> None:
        await asyncio.to_thread(self._files.save, spec.uid, spec)
        self._specs[spec.uid] = spec
        await self.sync()

    async def remove(self, uid: str) -> bool:
        removed = await asyncio.to_thread(self._files.remove, uid)
        held = self._specs.pop(uid, None) is not None
        await self.sync()
        return removed or held

    def uids(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, uid: str) -> NodeSecurityGroupSpec | None:
        return self._specs.get(uid)

    async def sync(self) -> None:
        """Compute the bridge's flow table from what is kept and what is on the bridge, and
        apply it (replace-flows sends only the difference)."""
        async with self._lock:
            try:
                await self._set_fail_mode()
                guarded, flows = await self._table()
                await self.firewall.apply(flows)
            except (process.CommandError, OSError, ValueError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"security group flows on {self.bridge.name} not applied: {exc}",
                ) from exc
            await self._cut(guarded)

    def bridge_made(self) -> None:
        """The bridge was (re-)made: its fail mode is set again at the next sync."""
        self._fail_mode_set = False

    async def _set_fail_mode(self) -> None:
        """Filtering: secure, so a bridge whose flows are gone (a restarted ovs-vswitchd)
        drops everything until the next sync rather than switch unfiltered; else the
        default, standalone."""
        if self._fail_mode_set:
            return
        mode = "secure" if self.enabled else "standalone"
        await self.bridge.vsctl("set-fail-mode", self.bridge.name, mode)
        self._fail_mode_set = True

    async def _cut(self, guarded: list[GuardedPort]) -> None:
        """Cut what the rules no longer allow, when the ports or rules changed since the
        last time (the first time too: they may have changed while the agent was down)."""
        groups = {spec.key: spec for spec in self._specs.values()}
        judged = (
            tuple(guarded),
            tuple(sorted((k, v.model_dump_json()) for k, v in groups.items())),
        )
        if self._conntrack is None or judged == self._judged:
            return
        try:
            cut = await self._conntrack.cut(guarded, groups)
        except (process.CommandError, OSError) as exc:
            log.warning("connections the rules no longer allow not cut yet: %s", exc)
            return
        self._judged = judged
        if cut:
            log.info("cut %d connection(s) the security groups no longer allow", cut)

    async def _table(self) -> tuple[list[GuardedPort], list[str]]:
        tags = await self.bridge.port_tags()
        ofports = await self.firewall.ofports()
        local_tags = self._vlans.tags()
        guarded, pending, taken = [], [], set()
        for nic in self._nics.guarded() if self.enabled else ():
            tag = local_tags.get(nic.network_uid)
            if tag is None:
                continue  # not on this node's integration bridge (yet)
            ofport = ofports.get(nic.port or "")
            if ofport is not None and tags.get(nic.port or "") == tag:
                assert nic.groups is not None
                guarded.append(GuardedPort(ofport, tag, nic.mac, nic.address, nic.groups))
                taken.add(nic.port)
            else:
                pending.append(PendingPort(tag, nic.mac))
        open_ports = [
            OpenPort(ofports[name], tag)
            for name, tag in sorted(tags.items())
            if name not in taken and name in ofports
        ]
        groups = {spec.key: spec for spec in self._specs.values()}
        return guarded, flow_table(guarded, open_ports, pending, groups)
