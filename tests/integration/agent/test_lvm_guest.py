"""lvm Volumes, as far as this machine lets them be shown.

This kernel has no device-mapper: a thin pool, a thin volume or an active logical volume
cannot exist here (ENVIRONMENT.md). So:

- Against **real LVM**, on a volume group on a loop device, with activation off (lvm's
  `global/activation=0`, which keeps every change in the metadata): the driver reads real
  `lvs` reports, lists and removes its own volumes and snapshots (and nothing else), grows
  them with `lvextend`, and names a missing thin pool. Not shown: that `lvcreate --type
  thin` and thin snapshots, which need the kernel's thin-pool target, accept the driver's
  command lines (the unit tests check those lines against EmulatedLvm).
- Through **the agent and a real guest**, with LVM emulated by loop devices
  (tests/lvm_emulator.py: each logical volume a sparse file on a loop device, at
  /dev/VG/NAME): qemu-img writes an Image onto a real block device, QEMU under the guest's
  own user opens it as `<disk type='block'>`, a volume plugs in live, grows online and is
  snapshotted while the guest writes, and the device is the guest user's only while
  attached. Not shown: LVM's own block sharing between a volume and its snapshots (the
  emulator copies).
"""

from __future__ import annotations

import asyncio
import base64
import grp
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lvm_emulator import EmulatedLvm
from stratus_agent import config as agent_config
from stratus_agent.config import LvmConfig
from stratus_agent.domain import xml as dx
from stratus_agent.drivers.storage.lvm_volumes import LvmVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure
from stratus_api.volume_wire import disk_serial
from testsupport import AGENT_AUTH, disk_watcher, volume_spec

if TYPE_CHECKING:
    from conftest import AgentUnderTest

SpecFactory = Callable[..., dict[str, Any]]
LVM_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
NO_ACTIVATION = "global/activation=0"


def lvm(*args: str) -> str:
    done = subprocess.run(["lvm", *args], env=LVM_ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def real_vg(tmp_path: Path) -> Iterator[str]:
    """A volume group on a 256 MiB sparse file on a loop device, removed afterwards."""
    vg = f"stratus-test-{uuid.uuid4().hex[:8]}"
    backing = tmp_path / "pv.img"
    with backing.open("wb") as file:
        file.truncate(256 * 2**20)
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    try:
        lvm("pvcreate", "--config", NO_ACTIVATION, loop)
        lvm("vgcreate", "--config", NO_ACTIVATION, vg, loop)
        yield vg
    finally:
        subprocess.run(["lvm", "vgremove", "--config", NO_ACTIVATION, "--force", "--yes", vg],
                       env=LVM_ENV, capture_output=True, check=False)  # fmt: skip
        subprocess.run(["lvm", "pvremove", "--config", NO_ACTIVATION, "--yes", loop],
                       env=LVM_ENV, capture_output=True, check=False)  # fmt: skip
        subprocess.run(["losetup", "--detach", loop], check=False)


def make_lv(vg: str, name: str, size: str, *tags: str) -> None:
    """A logical volume in the metadata only (linear: a thin one cannot be made here)."""
    tagged = [a for tag in tags for a in ("--addtag", tag)]
    lvm("lvcreate", "--config", NO_ACTIVATION, "--yes", "--activate", "n", "--zero", "n",
        "--size", size, "--name", name, *tagged, vg)  # fmt: skip


async def test_real_lvm_reports_are_read_and_only_our_volumes_are_touched(real_vg: str) -> None:
    driver = LvmVolumeDriver(LvmConfig(volume_group=real_vg, config=NO_ACTIVATION))
    ours, crashed, snap = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    make_lv(real_vg, f"volume-{ours}", "8m", "stratus")
    make_lv(real_vg, f"volume-{crashed}.partial", "4m", "stratus")
    make_lv(real_vg, f"snap-{snap}", "8m", "stratus", f"stratus-of={ours}")
    make_lv(real_vg, "not-ours", "4m")

    assert [(v.uid, v.size_bytes, v.location) for v in await driver.list()] == [
        (ours, 8 * 2**20, f"{real_vg}/volume-{ours}")
    ]
    assert [(s.uid, s.volume_uid) for s in await driver.list_snapshots()] == [(snap, ours)]

    assert (await driver.grow(ours, 10 * 2**20)).size_bytes == 12 * 2**20  # whole extents
    with pytest.raises(ProvisioningError) as shrink:
        await driver.grow(ours, 4 * 2**20)
    assert shrink.value.reason == GuestFailure.DISK_TOO_SMALL

    assert await driver.remove_snapshot(snap) and not await driver.remove_snapshot(snap)
    assert not await driver.remove(crashed)  # its partial goes; there was no volume
    assert await driver.remove(ours) and not await driver.remove(ours)
    left = lvm("lvs", "--config", NO_ACTIVATION, "--noheadings", "-o", "lv_name", real_vg)
    assert left.split() == ["not-ours"]


async def test_real_lvm_without_the_thin_pool_says_how_to_make_it(real_vg: str) -> None:
    driver = LvmVolumeDriver(LvmConfig(volume_group=real_vg, config=NO_ACTIVATION))
    make_lv(real_vg, "stratus-thin", "8m")  # named like the pool, but not a thin pool
    for call in (driver.usage(), driver.create(str(uuid.uuid4()), 2**20)):
        with pytest.raises(ProvisioningError) as refused:
            await call
        assert refused.value.reason == GuestFailure.BACKEND_UNSUPPORTED
        assert f"thin pool {real_vg}/stratus-thin is not a thin pool: make it with" in str(
            refused.value
        )
    missing = LvmVolumeDriver(LvmConfig(volume_group="no-such-vg", config=NO_ACTIVATION))
    with pytest.raises(ProvisioningError) as gone:
        await missing.list()
    assert 'Volume group "no-such-vg" not found' in str(gone.value)


# -- the agent and a guest, over LVM emulated with loop devices ---------------------------


@pytest.fixture
async def lvm_agent(
    start_agent: Callable[..., Awaitable[AgentUnderTest]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    vg = f"stratus-emu-{uuid.uuid4().hex[:8]}"
    emulated = EmulatedLvm(vg, "stratus-thin", 2**30, data_dir=tmp_path)

    async def run(_driver: LvmVolumeDriver, args: tuple[str, ...]) -> str:
        return await emulated(args)

    monkeypatch.setattr(LvmVolumeDriver, "_lvm", run)
    storage = agent_config.StorageConfig(lvm=LvmConfig(volume_group=vg))
    agent = await start_agent(storage=storage)
    yield agent, emulated
    emulated.close()


async def console_line(agent: AgentUnderTest, uid: str, start: str, timeout: float = 60) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for line in agent.console(uid).text().splitlines():
            if start in line:
                return line[line.index(start) :]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no console line {start!r} in {timeout} s\n{agent.diagnostics(uid)}")


def owner_of(device: str) -> tuple[int, int, int]:
    st = os.stat(os.path.realpath(device))
    return st.st_uid, st.st_gid, st.st_mode & 0o777


async def test_a_guest_boots_from_an_lvm_volume_and_uses_another_plugged_in_live(
    lvm_agent: Any, make_guest_spec: SpecFactory, image_server: dict[str, Any]
) -> None:
    agent, emulated = lvm_agent
    root = await agent.volume_available(volume_spec(
        backend="lvm", sizeBytes=256 * 2**20, source={"image": image_server},
    ))  # fmt: skip
    data = await agent.volume_available(volume_spec(backend="lvm", sizeBytes=16 * 2**20))
    root_device = f"/dev/{emulated.vg}/volume-{root['uid']}"
    assert root["location"] == f"{emulated.vg}/volume-{root['uid']}"

    spec = make_guest_spec()
    spec["disks"] = [{"name": "root", "volume": {
        "uid": root["uid"], "backend": "lvm", "serial": disk_serial(root["uid"])}}]  # fmt: skip
    spec["cloudInit"]["userData"] = base64.b64encode(disk_watcher("9").encode()).decode()
    await agent.put(spec)
    await agent.wait_for_marker(spec["uid"], "user-data exit=0")  # booted off the LV
    domain = dx.Domain.from_xml(agent.node.domain_xml(spec["uid"]))
    disk = domain.devices.disks[0]
    assert (disk.type, disk.source_dev, disk.driver_type, disk.driver_cache) == (
        "block", root_device, "raw", "none"
    )  # fmt: skip
    assert domain.seclabel is not None
    assert owner_of(root_device) == (domain.seclabel.uid, domain.seclabel.gid, 0o600)

    # Plugged in live; written by the guest; grown online; snapshotted while in use.
    serial = disk_serial(data["uid"])
    spec["generation"] = 2
    spec["disks"].append(
        {"name": "data", "volume": {"uid": data["uid"], "backend": "lvm", "serial": serial}}
    )
    await agent.put(spec)
    await agent.wait_for_state(spec["uid"], "Running", generation=2)
    seen = await console_line(agent, spec["uid"], f"VOL-SEEN {serial} ")
    assert f"sectors={16 * 2**20 // 512} " in seen, seen
    await console_line(agent, spec["uid"], f"VOL-WROTE {serial}")
    grow = volume_spec(uid=data["uid"], backend="lvm", generation=2, sizeBytes=24 * 2**20)
    assert (await agent.volume_available(grow))["sizeBytes"] == 24 * 2**20
    await console_line(agent, spec["uid"], f"VOL-SEEN {serial} dev=vdb sectors={24 * 2**20 // 512}")

    snap = str(uuid.uuid4())
    put = await agent.client.put(f"/v1/snapshots/{snap}", headers=AGENT_AUTH, json={
        "uid": snap, "name": "s", "namespace": "team-a", "generation": 1,
        "volume": data["uid"], "backend": "lvm",
    })  # fmt: skip
    assert put.status == 200, await put.text()
    for _ in range(500):
        taken = await (await agent.client.get(f"/v1/snapshots/{snap}", headers=AGENT_AUTH)).json()
        if taken["state"] != "Creating":
            break
        await asyncio.sleep(0.02)
    assert taken["state"] == "Ready", taken
    assert emulated.lvs[f"snap-{snap}"].tags == ["stratus", f"stratus-of={data['uid']}"]

    # Gone with the guest: the devices are root's and the disk group's again.
    await agent.delete(spec["uid"])
    disk_group = grp.getgrnam("disk").gr_gid
    assert owner_of(root_device) == (0, disk_group, 0o660)
    for uid in (snap,):
        deleted = await agent.client.delete(f"/v1/snapshots/{uid}", headers=AGENT_AUTH)
        assert deleted.status == 204
    for uid in (root["uid"], data["uid"]):
        deleted = await agent.client.delete(f"/v1/volumes/{uid}", headers=AGENT_AUTH)
        assert deleted.status == 204, await deleted.text()
    assert set(emulated.lvs) == {"stratus-thin"}
