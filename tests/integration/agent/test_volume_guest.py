"""A Volume attached to a real guest (libvirt + QEMU under its own user): the domain has the
volume's file as a disk with the volume's serial, the file belongs to the guest's QEMU user
while attached, and the volume cannot be deleted until the guest is gone."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stratus_agent.domain import xml as dx
from stratus_api import naming
from stratus_api.volume_wire import disk_serial
from testsupport import AGENT_AUTH, volume_spec

if TYPE_CHECKING:
    from conftest import AgentUnderTest

SpecFactory = Callable[..., dict[str, Any]]


async def available(agent: AgentUnderTest, spec: dict[str, Any]) -> dict[str, Any]:
    path = f"/v1/volumes/{spec['uid']}"
    put = await agent.client.put(path, json=spec, headers=AGENT_AUTH)
    assert put.status == 200, await put.text()
    for _ in range(500):
        body: dict[str, Any] = await (await agent.client.get(path, headers=AGENT_AUTH)).json()
        if body["state"] == "Available":
            return body
        assert body["state"] != "Failed", body
        await asyncio.sleep(0.02)
    raise AssertionError(f"volume never Available: {body}")


async def test_an_attached_volume_is_a_disk_with_its_serial_owned_by_the_guest(
    agent: AgentUnderTest, make_guest_spec: SpecFactory
) -> None:
    volume = await available(agent, volume_spec(sizeBytes=16 * 2**20))
    uid = volume["uid"]
    spec = make_guest_spec()
    serial = disk_serial(uid)
    spec["disks"].append(
        {"name": "data", "volume": {"uid": uid, "backend": "file", "serial": serial}}
    )
    await agent.put(spec)
    await agent.wait_for_state(spec["uid"], "Running")

    domain = dx.Domain.from_xml(agent.node.domain_xml(spec["uid"]))
    disks = {disk.source_file: disk for disk in domain.devices.disks}
    path = str(agent.node.state_dir / "volumes" / naming.volume_file(uid))
    assert volume["location"] == path
    assert (disks[path].serial, disks[path].driver_type, disks[path].target_dev) == (
        serial, "qcow2", "vdb"
    )  # fmt: skip
    assert domain.seclabel is not None
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
        domain.seclabel.uid, domain.seclabel.gid, 0o600
    )  # fmt: skip

    refused = await agent.client.delete(f"/v1/volumes/{uid}", headers=AGENT_AUTH)
    assert refused.status == 409 and spec["uid"] in (await refused.json())["error"]

    await agent.delete(spec["uid"])
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)
    deleted = await agent.client.delete(f"/v1/volumes/{uid}", headers=AGENT_AUTH)
    assert deleted.status == 204 and not os.path.exists(path)
