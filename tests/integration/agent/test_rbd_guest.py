"""RBD volumes through the agent's API, with the session's Ceph cluster and a real guest
(libvirt + QEMU): a volume made from the test image by PUT /v1/volumes/{uid} with the pool's
`ceph` access (the agent makes the pool's driver from it), a guest booted from it by PUT
/v1/guests/{uid} (a network disk with the pool's libvirt secret, the key never on QEMU's
command line or in its log), a second RBD volume plugged into the running guest, grown
online and unplugged, the inventory with the RBD volumes and the pool's usage, and after a
restart the pool served again from the access the agent kept; the pool's libvirt secret
outlives the guest until it is removed.

The routing itself (two backends at once, UIDs to their driver) is unit-tested in
tests/unit/agent/test_volume_backends.py."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratus_agent.domain import xml as dx
from stratus_api import naming
from stratus_api.volume_wire import CephAccess, disk_serial
from testsupport import AGENT_AUTH, disk_watcher, volume_spec

if TYPE_CHECKING:
    from conftest import AgentUnderTest

SpecFactory = Callable[..., dict[str, Any]]
MiB = 2**20
# Bounds: a volume from the image imports it into the pool first (a few seconds here).
VOLUME_TIMEOUT = 120.0


def command_lines() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return found


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


async def check_the_secret_outlives_the_guest(compute: Any, ceph: CephAccess) -> None:
    """The pool's libvirt secret stays for the next guest (private: libvirt does not hand
    its value back), until it is removed on demand."""
    secret = naming.ceph_secret_uuid(ceph.pool_uid)
    usage = virsh("secret-dumpxml", secret).stdout
    assert f"{ceph.pool} client.{ceph.user} {ceph.pool_uid}" in usage
    assert ceph.key.get_secret_value() not in usage
    assert virsh("secret-get-value", secret).returncode != 0
    assert await compute.ensure_ceph_secret(ceph) == secret  # idempotent
    assert await compute.remove_ceph_secret(ceph.pool_uid) is True
    assert virsh("secret-dumpxml", secret).returncode != 0
    assert await compute.remove_ceph_secret(ceph.pool_uid) is False


def rbd_spec(ceph: CephAccess, **overrides: Any) -> dict[str, Any]:
    access = ceph.model_dump(mode="json", by_alias=True)
    return volume_spec(backend="ceph", ceph=access, **overrides)


async def put_volume(agent: AgentUnderTest, spec: dict[str, Any]) -> dict[str, Any]:
    """PUT the spec, then poll until the volume is Available (fails early on Failed)."""
    path = f"/v1/volumes/{spec['uid']}"
    put = await agent.client.put(path, json=spec, headers=AGENT_AUTH)
    assert put.status == 200, await put.text()
    deadline, body = time.monotonic() + VOLUME_TIMEOUT, {}
    while time.monotonic() < deadline:
        body = await (await agent.client.get(path, headers=AGENT_AUTH)).json()
        if body["state"] == "Available" and body["generation"] == spec["generation"]:
            return body
        assert body["state"] != "Failed", body
        await asyncio.sleep(0.1)
    raise AssertionError(f"volume never Available: {body}")


async def console_line(agent: AgentUnderTest, uid: str, start: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.console(uid).text().splitlines():
            if start in line:
                return line[line.index(start) :]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no console line {start!r} in {timeout} s\n{agent.diagnostics(uid)}")


async def inventory(agent: AgentUnderTest) -> dict[str, Any]:
    response = await agent.client.get("/v1/volumes", headers=AGENT_AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


def rbd_disk(name: str, uid: str, ceph: CephAccess) -> dict[str, Any]:
    access = ceph.model_dump(mode="json", by_alias=True)
    volume = {"uid": uid, "backend": "ceph", "serial": disk_serial(uid), "ceph": access}
    return {"name": name, "volume": volume}


def check_booted_from_rbd(agent: AgentUnderTest, guest: str, uid: str, ceph: CephAccess) -> None:
    """A network disk with the pool's secret and the volume's serial; the key is neither on
    QEMU's command line nor in its log."""
    root = dx.Domain.from_xml(agent.node.domain_xml(guest)).devices.disks[0]
    assert root.source_network is not None and root.source_file is None
    assert root.source_network.name == f"{ceph.pool}/volume-{uid}"
    secret = naming.ceph_secret_uuid(ceph.pool_uid)
    assert root.auth == dx.DiskAuth(username=ceph.user, secret_uuid=secret)
    assert (root.target_dev, root.serial) == ("vda", disk_serial(uid))
    key = ceph.key.get_secret_value()
    qemu = [c for c in command_lines() if naming.domain_name(guest) in c]
    assert qemu and all(key not in c for c in qemu)
    qemu_log = Path("/var/log/libvirt/qemu") / f"{naming.domain_name(guest)}.log"
    assert key not in qemu_log.read_text(errors="replace")


async def plug_grow_and_unplug(
    agent: AgentUnderTest, spec: dict[str, Any], uid: str, ceph: CephAccess
) -> dict[str, Any]:
    """Plug volume `uid` into the running guest, grow it there, unplug it; the inventory
    taken while it was plugged and grown."""
    guest, serial = spec["uid"], disk_serial(uid)
    spec["generation"] = 2
    spec["disks"].append(rbd_disk("data", uid, ceph))
    await agent.put(spec)
    await agent.wait_for_state(guest, "Running", generation=2)
    seen = await console_line(agent, guest, f"VOL-SEEN {serial} ")
    assert seen.endswith(f"sectors={16 * MiB // 512} data="), seen
    await console_line(agent, guest, f"VOL-WROTE {serial}")
    image = f"{ceph.pool}/volume-{uid}"
    live = dx.Domain.from_xml(agent.node.domain_xml(guest)).devices.disks
    assert image in {d.source_network.name for d in live if d.source_network is not None}

    # Grown online: QEMU resizes the image it holds open, the guest sees the new size.
    grow = rbd_spec(ceph, uid=uid, generation=2, sizeBytes=24 * MiB)
    assert (await put_volume(agent, grow))["sizeBytes"] == 24 * MiB
    await console_line(agent, guest, f"VOL-SEEN {serial} dev=vdb sectors={24 * MiB // 512}")
    listed = await inventory(agent)

    # Unplugged: gone from the guest and both definitions; only then may it be deleted.
    refused = await agent.client.delete(f"/v1/volumes/{uid}", headers=AGENT_AUTH)
    assert refused.status == 409, await refused.text()
    spec["generation"] = 3
    spec["disks"] = spec["disks"][:1]
    await agent.put(spec)
    await agent.wait_for_state(guest, "Running", generation=3)
    await console_line(agent, guest, f"VOL-GONE {serial}")
    assert image not in agent.node.domain_xml(guest)
    assert image not in agent.node.domain_xml(guest, inactive=True)
    return listed


async def test_rbd_volumes_boot_plug_grow_unplug_and_go_through_the_agent_api(
    ceph_agent: AgentUnderTest,
    start_agent: Callable[..., Awaitable[AgentUnderTest]],
    make_guest_spec: SpecFactory,
    image_server: dict[str, Any],
    ceph_access: CephAccess,
) -> None:
    agent = ceph_agent
    started = time.monotonic()
    boot = await put_volume(
        agent, rbd_spec(ceph_access, sizeBytes=256 * MiB, source={"image": image_server})
    )
    made = time.monotonic() - started
    data = await put_volume(agent, rbd_spec(ceph_access, sizeBytes=16 * MiB))
    boot_uid, data_uid = boot["uid"], data["uid"]
    assert boot["location"] == f"{ceph_access.pool}/volume-{boot_uid}"

    spec = make_guest_spec()
    spec["disks"] = [rbd_disk("root", boot_uid, ceph_access)]
    spec["cloudInit"]["userData"] = base64.b64encode(disk_watcher("7").encode()).decode()
    guest = spec["uid"]
    started = time.monotonic()
    await agent.put(spec)
    markers = await agent.wait_for_marker(guest, "user-data exit=0")
    booted = time.monotonic() - started
    print(f"\nboot volume from the image: {made:.2f} s (import included); guest: {booted:.1f} s")
    assert "booted" in markers
    check_booted_from_rbd(agent, guest, boot_uid, ceph_access)

    listed = await plug_grow_and_unplug(agent, spec, data_uid, ceph_access)
    volumes = {v["uid"]: v for v in listed["volumes"]}
    assert volumes[boot_uid]["attachedTo"] == [guest] == volumes[data_uid]["attachedTo"]
    assert volumes[data_uid]["sizeBytes"] == 24 * MiB
    pools = {p["backend"]: p for p in listed["pools"]}
    assert (pools["ceph"]["pool"], pools["ceph"]["poolUid"]) == (
        ceph_access.pool, ceph_access.pool_uid
    )  # fmt: skip
    assert pools["ceph"]["usedBytes"] >= (256 + 24) * MiB and "file" in pools
    deleted = await agent.client.delete(f"/v1/volumes/{data_uid}", headers=AGENT_AUTH)
    assert deleted.status == 204, await deleted.text()
    gone = await agent.client.get(f"/v1/volumes/{data_uid}", headers=AGENT_AUTH)
    assert gone.status == 404

    # The guest goes, the boot volume stays; a restarted agent serves the pool again from
    # the access it kept, before any spec names it.
    await agent.delete(guest)
    await agent.stop()
    restarted = await start_agent()
    listed = await inventory(restarted)
    assert [v["uid"] for v in listed["volumes"] if v["uid"] in (boot_uid, data_uid)] == [boot_uid]
    assert ceph_access.pool in {p.get("pool") for p in listed["pools"]}
    deleted = await restarted.client.delete(f"/v1/volumes/{boot_uid}", headers=AGENT_AUTH)
    assert deleted.status == 204, await deleted.text()
    await check_the_secret_outlives_the_guest(restarted.manager.compute, ceph_access)

    # The CephPool deleted: the node stops serving it, and its key leaves the node's files
    # and libvirt's secrets.
    await restarted.manager.compute.ensure_ceph_secret(ceph_access)
    kept = restarted.node.state_dir / "ceph" / ceph_access.pool_uid
    assert (kept / "keyring").exists()
    forgot = await restarted.client.delete(f"/v1/cephpools/{ceph_access.pool_uid}",
                                           headers=AGENT_AUTH)  # fmt: skip
    assert forgot.status == 200 and (await forgot.json())["forgotten"] is True
    assert not kept.exists()
    assert virsh("secret-dumpxml", naming.ceph_secret_uuid(ceph_access.pool_uid)).returncode != 0
    assert ceph_access.pool not in {p.get("pool") for p in (await inventory(restarted))["pools"]}
    again = await restarted.client.delete(f"/v1/cephpools/{ceph_access.pool_uid}",
                                          headers=AGENT_AUTH)  # fmt: skip
    assert (await again.json())["forgotten"] is False
