"""The node's Open vSwitch bridge, through ovs-vsctl.

libvirt plugs each NIC itself (`<virtualport type='openvswitch'/>`) and tags the OVS
Interface with external_ids:vm-id = the domain UUID, which is the Instance UID; that tag is
how leftover ports of a guest are found and removed.
"""

from __future__ import annotations

import json

from stratus_agent import process


class OvsBridge:
    def __init__(self, name: str, datapath_type: str, vsctl: str = "ovs-vsctl") -> None:
        self.name = name
        self.datapath_type = datapath_type
        self._vsctl = vsctl

    async def _vsctl_run(self, *args: str) -> str:
        return (await process.run(self._vsctl, "--timeout=10", *args)).stdout

    async def ensure(self) -> None:
        await self._vsctl_run(
            "--may-exist", "add-br", self.name,
            "--", "set", "Bridge", self.name, f"datapath_type={self.datapath_type}",
        )  # fmt: skip

    async def ports_of(self, instance_uid: str) -> list[str]:
        """OVS ports (interface names) plugged for an Instance."""
        out = await self._vsctl_run(
            "--format=json", "--columns=name", "find", "Interface",
            f"external_ids:vm-id={instance_uid}",
        )  # fmt: skip
        return sorted(row[0] for row in json.loads(out)["data"])

    async def remove_ports(self, instance_uid: str) -> list[str]:
        ports = await self.ports_of(instance_uid)
        for port in ports:
            await self._vsctl_run("--if-exists", "del-port", port)
        return ports
