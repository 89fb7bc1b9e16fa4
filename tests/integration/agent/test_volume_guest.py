"""A Volume attached to a real guest (libvirt + QEMU under its own user): the domain has the
volume's file as a disk with the volume's serial, the file belongs to the guest's QEMU user
while attached, and the volume cannot be deleted until the guest is gone."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stratus_agent.domain import xml as dx
from stratus_api import naming
from stratus_api.volume_wire import disk_serial
from testsupport import AGENT_AUTH, disk_watcher, volume_spec

if TYPE_CHECKING:
    from conftest import AgentUnderTest

SpecFactory = Callable[..., dict[str, Any]]


async def test_an_attached_volume_is_a_disk_with_its_serial_owned_by_the_guest(
    agent: AgentUnderTest, make_guest_spec: SpecFactory
) -> None:
    volume = await agent.volume_available(volume_spec(sizeBytes=16 * 2**20))
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


async def console_line(agent: AgentUnderTest, uid: str, start: str, timeout: float = 60) -> str:
    """The first console line of guest `uid` with `start` in it, from there on (the shell's
    prompt may come first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.console(uid).text().splitlines():
            if start in line:
                return line[line.index(start) :]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no console line {start!r} in {timeout} s\n{agent.diagnostics(uid)}")


async def test_a_volume_plugs_into_a_running_guest_grows_there_and_unplugs(
    agent: AgentUnderTest, make_guest_spec: SpecFactory
) -> None:
    volume = await agent.volume_available(volume_spec(sizeBytes=16 * 2**20))
    uid, serial = volume["uid"], disk_serial(volume["uid"])
    path = volume["location"]
    spec = make_guest_spec()
    spec["cloudInit"]["userData"] = base64.b64encode(disk_watcher("7").encode()).decode()
    await agent.put(spec)
    await agent.wait_for_marker(spec["uid"], "user-data exit=0")  # the watcher runs

    # Plugged in: the guest sees a disk with the volume's serial and writes to it.
    spec["generation"] = 2
    spec["disks"].append(
        {"name": "data", "volume": {"uid": uid, "backend": "file", "serial": serial}}
    )
    await agent.put(spec)
    await agent.wait_for_state(spec["uid"], "Running", generation=2)
    seen = await console_line(agent, spec["uid"], f"VOL-SEEN {serial} ")
    assert seen.endswith(f"sectors={16 * 2**20 // 512} data="), seen
    await console_line(agent, spec["uid"], f"VOL-WROTE {serial}")
    live = dx.Domain.from_xml(agent.node.domain_xml(spec["uid"]))
    assert path in {d.source_file for d in live.devices.disks}

    # Grown online: QEMU resizes the file it holds open, the guest sees the new size.
    grow = volume_spec(uid=uid, generation=2, sizeBytes=24 * 2**20)
    put = await agent.client.put(f"/v1/volumes/{uid}", json=grow, headers=AGENT_AUTH)
    assert put.status == 200, await put.text()
    await console_line(agent, spec["uid"], f"VOL-SEEN {serial} dev=vdb sectors={24 * 2**20 // 512}")
    assert (await agent.volume_available(grow))["sizeBytes"] == 24 * 2**20

    # Unplugged: gone from the guest, from the live and the persistent definition, and the
    # file is root's again; only now may the volume be deleted.
    spec["generation"] = 3
    spec["disks"] = spec["disks"][:1]
    await agent.put(spec)
    await agent.wait_for_state(spec["uid"], "Running", generation=3)
    await console_line(agent, spec["uid"], f"VOL-GONE {serial}")
    assert path not in agent.node.domain_xml(spec["uid"])
    assert path not in agent.node.domain_xml(spec["uid"], inactive=True)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (0, 0)
    deleted = await agent.client.delete(f"/v1/volumes/{uid}", headers=AGENT_AUTH)
    assert deleted.status == 204 and not os.path.exists(path)


async def test_a_guest_boots_from_a_volume_made_from_the_image_and_the_volume_outlives_it(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, image_server: dict[str, Any]
) -> None:
    volume = await agent.volume_available(
        volume_spec(sizeBytes=256 * 2**20, source={"image": image_server})
    )
    uid, path = volume["uid"], volume["location"]
    spec = make_guest_spec()
    spec["disks"] = [
        {"name": "root", "volume": {"uid": uid, "backend": "file", "serial": disk_serial(uid)}}
    ]
    await agent.put(spec)
    markers = await agent.wait_for_marker(spec["uid"], "ready")
    assert "booted" in markers
    domain = dx.Domain.from_xml(agent.node.domain_xml(spec["uid"]))
    root = domain.devices.disks[0]
    assert (root.source_file, root.target_dev, root.serial) == (path, "vda", disk_serial(uid))

    await agent.delete(spec["uid"])
    st = os.stat(path)  # kept, and root's again
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)
    deleted = await agent.client.delete(f"/v1/volumes/{uid}", headers=AGENT_AUTH)
    assert deleted.status == 204 and not os.path.exists(path)
