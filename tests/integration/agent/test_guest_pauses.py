"""A guest QEMU pauses by itself: its volume's filesystem fills up under a real guest's
writes (ENOSPC), QEMU stops the vCPUs rather than fail the write, and the agent says why,
in its event and in its inventory, so the Instance can tell the user."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
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
def volumes_fs(libvirt_node: Node) -> Iterator[Path]:
    """The node's file volumes on a filesystem of their own (an 80 MiB ext4 on a loop
    device), to fill. Mounted where libvirtd (so QEMU) sees it too: the node services may
    run libvirtd in a private mount namespace (nodeservices.py), which a mount made here
    does not reach; the same device mounted there is the same filesystem."""
    where = libvirt_node.state_dir / "volumes"
    where.mkdir(parents=True, exist_ok=True)
    image = libvirt_node.root / "volumes.ext4"
    with image.open("wb") as made:
        made.truncate(80 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    pid = subprocess.run(["pgrep", "-o", "-x", "libvirtd"], capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    private = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    namespaces = [[], ["nsenter", "-t", pid, "-m"]] if private else [[]]
    try:
        for enter in namespaces:
            subprocess.run([*enter, "mount", device, str(where)], check=True)
        yield where
    finally:
        for enter in reversed(namespaces):
            subprocess.run([*enter, "umount", "--lazy", str(where)], check=False)
        subprocess.run(["losetup", "--detach", device], check=False)


def fill(directory: Path, leave: int) -> None:
    """Something else takes the filesystem's room but `leave` bytes."""
    st = os.statvfs(directory)
    assert st.f_blocks * st.f_frsize < 2**30, f"{directory} is not the test's small filesystem"
    with (directory / "ballast").open("wb") as ballast:
        os.posix_fallocate(ballast.fileno(), 0, st.f_bavail * st.f_frsize - leave)


async def test_a_guest_paused_on_a_full_disk_is_reported_paused_on_error(
    volumes_fs: Path, agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    # The agent makes a volume only where it fits (64 MiB), and the guest boots first: the
    # room goes afterwards, then the volume is plugged in and the guest writes to it.
    volume = await agent.volume_available(volume_spec(sizeBytes=64 * 2**20))
    spec = make_guest_spec(name="vm-fills")
    spec["cloudInit"]["userData"] = base64.b64encode(FILL).decode()
    uid = spec["uid"]
    await agent.put(spec)
    await agent.wait_for_state(uid, "Running")
    fill(volumes_fs, leave=4 * 2**20)
    disk = {"uid": volume["uid"], "backend": "file", "serial": disk_serial(volume["uid"])}
    plugged = [*spec["disks"], {"name": "data", "volume": disk}]
    await agent.put({**spec, "generation": 2, "disks": plugged})

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
