"""A guest QEMU pauses by itself: its volume's filesystem fills up under a real guest's
writes (ENOSPC), QEMU stops the vCPUs rather than fail the write, and the agent says why,
in its event and in its inventory, so the Instance can tell the user."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from stratus_api import naming
from stratus_api.volume_wire import disk_serial
from testsupport import volume_spec

if TYPE_CHECKING:
    from conftest import AgentUnderTest, Node

SpecFactory = Callable[..., dict[str, Any]]
# The guest fills its second disk, then flushes: 48 MiB where the volume's files have 4.
FILL = (
    b"#!/bin/sh\nwhile [ ! -b /dev/vdb ]; do sleep 0.2; done\n"
    b"echo FILL-START >/dev/console\ndd if=/dev/zero of=/dev/vdb bs=1M count=48; sync\n"
)


@pytest.fixture
def small_volumes_dir(libvirt_node: Node) -> Iterator[None]:
    """The node's file volumes on a 4 MiB tmpfs: a full filesystem under a running guest."""
    where = libvirt_node.state_dir / "volumes"
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "stratus-test", str(where)],
                   check=True)  # fmt: skip
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


async def test_a_guest_paused_on_a_full_disk_is_reported_paused_on_error(
    small_volumes_dir: None, agent: AgentUnderTest, make_guest_spec: SpecFactory,
    libvirt_node: Node,
) -> None:  # fmt: skip
    volume = await agent.volume_available(volume_spec(sizeBytes=64 * 2**20))
    spec = make_guest_spec(name="vm-fills")
    spec["cloudInit"]["userData"] = base64.b64encode(FILL).decode()
    serial = disk_serial(volume["uid"])
    disk = {"uid": volume["uid"], "backend": "file", "serial": serial}
    spec["disks"].append({"name": "data", "volume": disk})
    uid = spec["uid"]
    await agent.put(spec)
    await agent.wait_for_state(uid, "Running")

    paused = await agent.wait_for_state(uid, "Paused", timeout=180.0)
    assert paused["reason"] == "PausedOnError", agent.diagnostics(uid)
    assert "disk I/O error" in paused["message"]
    assert "FILL-START" in agent.console(uid).text()
    assert libvirt_node.domain_state(uid) == "paused"
    reason = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", "--reason",
                             naming.domain_name(uid)], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert "I/O error" in reason
    # The inventory (what every health check reads) says the same, from libvirt's state.
    listed = {g["uid"]: g for g in (await agent.inventory())["guests"]}
    assert (listed[uid]["state"], listed[uid]["reason"]) == ("Paused", "PausedOnError")

    await agent.delete(uid)
