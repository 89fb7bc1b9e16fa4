"""One Open vSwitch bridge, through ovs-vsctl: the node's own Open vSwitch, or another one
named by its database socket (a tunnel bridge in a simulated node's namespace)."""

from __future__ import annotations

import json
import logging

from stratus_agent import process

log = logging.getLogger(__name__)


class OvsBridge:
    def __init__(
        self, name: str, datapath_type: str, vsctl: str = "ovs-vsctl", db: str | None = None
    ) -> None:
        """`db`: "unix:/path/db.sock" of the Open vSwitch holding the bridge (None: the
        default one)."""
        self.name = name
        self.datapath_type = datapath_type
        self._vsctl = (vsctl, "--timeout=10", *((f"--db={db}",) if db else ()))

    async def vsctl(self, *args: str) -> str:
        """Run ovs-vsctl against this bridge's Open vSwitch; its output."""
        return (await process.run(*self._vsctl, *args)).stdout

    async def exists(self) -> bool:
        # br-exists answers 2 for "no such bridge"; anything else is a real failure.
        argv = (*self._vsctl, "br-exists", self.name)
        result = await process.run(*argv, check=False)
        if result.code in (0, 2):
            return result.code == 0
        raise process.CommandError(argv, result.code, result.stderr)

    async def ensure(self, *settings: str) -> bool:
        """Make the bridge unless it exists (a read-only check, cheap enough for every
        guest), with these Bridge column=value `settings` too; True if it had to be made."""
        if await self.exists():
            return False
        await self.vsctl(
            "--may-exist", "add-br", self.name,
            "--", "set", "Bridge", self.name, f"datapath_type={self.datapath_type}", *settings,
        )  # fmt: skip
        return True

    async def ports(self) -> list[str]:
        return sorted((await self.vsctl("list-ports", self.name)).split())

    async def ports_of(self, instance_uid: str) -> list[str]:
        """OVS ports (interface names) plugged for an Instance."""
        out = await self.vsctl(
            "--format=json", "--columns=name", "find", "Interface",
            f"external_ids:vm-id={instance_uid}",
        )  # fmt: skip
        return sorted(row[0] for row in json.loads(out)["data"])

    async def port_tags(self) -> dict[str, int | None]:
        """Every port on the bridge with its VLAN tag (None: untagged)."""
        out = await self.vsctl("--format=json", "--columns=name,tag", "list", "Port")
        ports = set(await self.ports())
        found: dict[str, int | None] = {}
        for name, tag in json.loads(out)["data"]:
            if name in ports:
                # OVSDB JSON: an empty optional column is ["set", []].
                found[name] = tag if isinstance(tag, int) else None
        return found

    async def remove_ports(self, instance_uid: str) -> list[str]:
        """Remove the Instance's ports; a port that cannot be removed is logged and skipped,
        so the others still go."""
        removed = []
        for port in await self.ports_of(instance_uid):
            try:
                await self.vsctl("--if-exists", "del-port", port)
            except process.CommandError as exc:
                log.warning("cannot remove OVS port %s of %s: %s", port, instance_uid, exc)
                continue
            removed.append(port)
        return removed
