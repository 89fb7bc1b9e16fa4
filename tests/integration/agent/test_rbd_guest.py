"""A real guest booted from an RBD volume: the test image imported into the session's Ceph
and cloned into a volume (RbdVolumeDriver), the pool's libvirt secret made by the libvirt
compute driver, the domain written by the builder with a network disk; the guest boots to
its ready marker. The secret outlives the guest (other guests may use the pool) and goes
with remove_ceph_secret.

The compute, volume and seed drivers are driven directly rather than through the agent's
API: the VolumeManager serves one backend (files), and giving it RBD volumes is the
operator-side integration's work."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stratus_agent.base import CachedImage, DiskSource, NodeFacts
from stratus_agent.domain import xml as dx
from stratus_agent.drivers.compute.libvirt_driver import LibvirtComputeDriver
from stratus_agent.drivers.formats import qcow2
from stratus_agent.drivers.seed.nocloud import NoCloudSeed
from stratus_agent.drivers.storage.rbd_volumes import RbdVolumeDriver
from stratus_api import guest, naming
from stratus_api.volume_wire import CephAccess, disk_serial
from testsupport import guest_spec

if TYPE_CHECKING:
    from conftest import Node

LIBVIRT_URI = "qemu:///system"
BOOT_TIMEOUT = 180.0  # a bound; the test image is ready ~4 s after a TCG start here
MARKER = "STRATUS-GUEST: "


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


@pytest.fixture
async def compute(libvirt_node: Node) -> AsyncIterator[LibvirtComputeDriver]:
    driver = LibvirtComputeDriver(LIBVIRT_URI, console_dir=libvirt_node.guests_dir)
    libvirt_node.guests_dir.mkdir(parents=True, exist_ok=True)
    await driver.start(lambda _status: None)
    yield driver
    await driver.stop()


@pytest.fixture
async def volumes(ceph_access: CephAccess, libvirt_node: Node) -> AsyncIterator[RbdVolumeDriver]:
    driver = RbdVolumeDriver(ceph_access, libvirt_node.state_dir)
    yield driver
    for volume in await driver.list():
        await driver.remove(volume.uid)
    driver.close()


def command_lines() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return found


async def wait_for_marker(log: Path, marker: str, timeout: float = BOOT_TIMEOUT) -> None:
    """Until the test image writes `STRATUS-GUEST: <marker>` on its console."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = log.read_bytes().decode(errors="replace") if log.exists() else ""
        if f"{MARKER}{marker}" in text:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {marker!r} within {timeout} s; console:\n{text[-3000:]}")


async def test_a_guest_boots_from_an_rbd_volume(
    libvirt_node: Node,
    compute: LibvirtComputeDriver,
    volumes: RbdVolumeDriver,
    ceph_access: CephAccess,
    stratus_test_image: Path,
) -> None:
    header = qcow2.read_header(stratus_test_image)
    assert header is not None
    digest = hashlib.sha256(stratus_test_image.read_bytes()).hexdigest()
    image = CachedImage(str(uuid.uuid4()), stratus_test_image, "qcow2", header.virtual_size, digest)
    volume_uid = str(uuid.uuid4())
    started = time.monotonic()
    await volumes.create(volume_uid, header.virtual_size, image=image)
    made = time.monotonic() - started

    serial = disk_serial(volume_uid)
    wire = guest_spec()
    wire["disks"] = [
        {"name": "boot", "volume": {"uid": volume_uid, "backend": "ceph", "serial": serial,
                                    "ceph": ceph_access.model_dump(mode="json", by_alias=True)}}
    ]  # fmt: skip
    spec = guest.GuestSpec.model_validate(wire)
    uid = spec.uid
    attached = await volumes.attach(volume_uid, None)
    seed = await NoCloudSeed(libvirt_node.guests_dir).write(spec, None)
    facts = NodeFacts(
        root_disk=DiskSource(format="raw", serial=serial, rbd=attached.rbd), seed_iso_path=seed
    )
    secret = naming.ceph_secret_uuid(ceph_access.pool_uid)
    try:
        started = time.monotonic()
        status = await compute.ensure(spec, facts)
        assert status.state == guest.GuestState.RUNNING, status
        await wait_for_marker(compute.console_log(uid), "ready")
        booted = time.monotonic() - started
        print(f"\nvolume from the image: {made:.2f} s (import included); ready: {booted:.1f} s")

        [root, _seed] = dx.Domain.from_xml(libvirt_node.domain_xml(uid)).devices.disks
        assert root.source_network is not None and root.source_file is None
        assert root.source_network.name == f"stratus/volume-{volume_uid}"
        assert root.auth == dx.DiskAuth(username="stratus", secret_uuid=secret)
        assert root.serial == serial
        usage = virsh("secret-dumpxml", secret).stdout
        assert f"stratus client.stratus {ceph_access.pool_uid}" in usage
        assert ceph_access.key.get_secret_value() not in usage
        # QEMU gets the key from libvirt encrypted, never on its command line or in its log.
        key = ceph_access.key.get_secret_value()
        qemu = [c for c in command_lines() if naming.domain_name(uid) in c]
        assert qemu and all(key not in c for c in qemu)
        qemu_log = Path("/var/log/libvirt/qemu") / f"{naming.domain_name(uid)}.log"
        assert key not in qemu_log.read_text(errors="replace")
        # private='yes': libvirt does not hand the value back.
        assert virsh("secret-get-value", secret).returncode != 0
    finally:
        await compute.delete(uid)

    # The guest is gone, the pool's secret stays for the next guest, until it is removed.
    assert virsh("secret-dumpxml", secret).returncode == 0
    assert await compute.ensure_ceph_secret(ceph_access) == secret  # idempotent
    assert await compute.remove_ceph_secret(ceph_access.pool_uid) is True
    assert virsh("secret-dumpxml", secret).returncode != 0
    assert await compute.remove_ceph_secret(ceph_access.pool_uid) is False
    assert await volumes.remove(volume_uid)
    assert await volumes.remove_image(image.uid)
