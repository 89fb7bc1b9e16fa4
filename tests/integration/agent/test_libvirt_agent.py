"""The agent on a real node: libvirtd + QEMU (TCG), Open vSwitch (netdev), the test image.

The agent app is assembled as `stratus_agent.main.build` does it and served over HTTP on
127.0.0.1; the tests speak only its API, and check the node with virsh, ovs-vsctl and the
guest's serial console log, where the test image prints "STRATUS-GUEST: ..." markers.
Fixtures (conftest.py) remove every domain a test made, pass or fail.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stratus_agent.drivers.compute import libvirt_driver
from stratus_api import naming
from stratus_devcloud import nodeservices
from testsupport import AGENT_AUTH, sample, samples

if TYPE_CHECKING:
    from conftest import AgentUnderTest, Node

SpecFactory = Callable[..., dict[str, Any]]
StartAgent = Callable[[], Awaitable["AgentUnderTest"]]
# Bounds, not expectations: a stop takes ~4 s here, but ACPI gets 20 s before the destroy.
STOP_TIMEOUT = 120.0
SUBNET = "10.77.0"  # only on this module's own bridge, which has no host address
PING_OK = "PING-OK"


NETWORK_UID = str(uuid.uuid4())  # one Network for this module's guests, unless a test says


def nic(address: str, network_uid: str = NETWORK_UID) -> dict[str, Any]:
    return {
        "network": "test-net",
        "networkUid": network_uid,
        "mac": "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3]),
        "address": address,
        "prefixLength": 24,
    }


def spec_for(
    make_guest_spec: SpecFactory, hostname: str, address: str, user_data: str,
    network_uid: str = NETWORK_UID,
) -> dict[str, Any]:  # fmt: skip
    spec = make_guest_spec(name=hostname, nics=[nic(address, network_uid)])
    spec["cloudInit"] = {
        "instanceId": f"i-{spec['uid'][:8]}",
        "hostname": hostname,
        "userData": base64.b64encode(user_data.encode()).decode(),
    }
    return spec


def file_identity(path: Path) -> tuple[int, int, int]:
    """Changes when the file is replaced or written to."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def report(what: str, seconds: float) -> None:
    print(f"TIMING {what}: {seconds:.2f} s")  # shown with `pytest -s`


async def boot(agent: AgentUnderTest, spec: dict[str, Any]) -> list[str]:
    """PUT the spec; wait for Running, then for 'ready' on the console; its markers."""
    started = time.monotonic()
    accepted = await agent.put(spec)
    assert accepted["state"] in ("Provisioning", "Running")
    await agent.wait_for_state(spec["uid"], "Running", generation=spec["generation"])
    report(f"{spec['name']}: PUT -> Running", time.monotonic() - started)
    markers = await agent.wait_for_marker(spec["uid"], "ready")
    report(f"{spec['name']}: PUT -> 'ready' on the console", time.monotonic() - started)
    return markers


async def test_ensure_boots_a_guest_and_again_changes_nothing(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    spec = spec_for(
        make_guest_spec, "vm-one", f"{SUBNET}.11", "#!/bin/sh\necho hello-from-user-data\n"
    )
    uid = spec["uid"]
    markers = await boot(agent, spec)

    for expected in (
        "hostname=vm-one",
        f"instance-id=i-{uid[:8]}",
        f"ip eth0 {SUBNET}.11/24",
        "user-data start",
        "user-data exit=0",
    ):
        assert expected in markers, agent.diagnostics(uid)
    assert "\nhello-from-user-data\n" in agent.console(uid).text()
    assert libvirt_node.domain_state(uid) == "running"
    virt_type = (await agent.inventory())["virtType"]
    if not nodeservices.kvm_usable():
        assert virt_type == "qemu", "libvirtd offers a KVM that does not work here"
    assert f"<domain type='{virt_type}'" in libvirt_node.domain_xml(uid)
    tap = naming.tap_name(uid, 0)
    assert libvirt_node.ovs_ports_of(uid) == [tap]
    assert tap in libvirt_node.bridge_ports()

    # Ensure again with the same spec: same domain, not restarted, disk and seed untouched.
    overlay = libvirt_node.guests_dir / naming.root_disk_file(uid)
    seed = libvirt_node.guests_dir / naming.seed_iso_file(uid)
    console = agent.console(uid)
    before = libvirt_node.domain_id(uid), file_identity(overlay), file_identity(seed)
    console_before = console.text()
    again = await agent.put(spec)
    assert (again["state"], again["generation"]) == ("Running", 1)
    assert (libvirt_node.domain_id(uid), file_identity(overlay), file_identity(seed)) == before
    assert console.text().startswith(console_before)  # went on, did not start over
    assert console.markers().count("booted") == 1
    assert libvirt_node.domains().count(naming.domain_name(uid)) == 1


async def test_guests_reach_their_own_network_only(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    """Two Networks with the same CIDR on one bridge: a guest of the other one, its
    address in the same subnet, hears nothing (not even ARP) from the first's guests."""
    first = spec_for(make_guest_spec, "vm-a", f"{SUBNET}.21", "#!/bin/sh\ntrue\n")
    target = f"{SUBNET}.21"
    # The first guest may still be booting: wait for its first answer, then ping for real.
    pinger = (
        "#!/bin/sh\n"
        f"i=0; until ping -c 1 -W 1 {target} >/dev/null 2>&1; do\n"
        '  i=$((i + 1)); [ "$i" -lt 60 ] || break\n'
        "done\n"
        f"ping -c 3 -W 2 {target} && echo {PING_OK}\n"
    )
    second = spec_for(make_guest_spec, "vm-b", f"{SUBNET}.22", pinger)
    other_network = str(uuid.uuid4())
    outsider = spec_for(make_guest_spec, "vm-c", f"{SUBNET}.23", pinger, other_network)
    await agent.put(first)
    await agent.put(outsider)
    await boot(agent, second)
    await agent.wait_for_marker(first["uid"], "ready")
    await agent.wait_for_marker(outsider["uid"], "user-data exit=1", timeout=240)

    console = agent.console(second["uid"]).text()
    assert f"\n{PING_OK}\n" in console, agent.diagnostics(second["uid"])
    assert "3 packets transmitted, 3 packets received, 0% packet loss" in console
    assert "user-data exit=0" in agent.console(second["uid"]).markers()
    shut_out = agent.console(outsider["uid"]).text()
    assert f"\n{PING_OK}\n" not in shut_out, agent.diagnostics(outsider["uid"])
    assert "3 packets transmitted, 0 packets received, 100% packet loss" in shut_out
    tags = libvirt_node.port_tags()
    ports = {uid: naming.tap_name(uid, 0) for uid in (first["uid"], second["uid"],
                                                      outsider["uid"])}  # fmt: skip
    assert tags[ports[first["uid"]]] == tags[ports[second["uid"]]] != tags[ports[outsider["uid"]]]


async def test_stop_start_and_delete(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    spec = spec_for(make_guest_spec, "vm-stop", f"{SUBNET}.31", "#!/bin/sh\ntrue\n")
    uid = spec["uid"]
    await boot(agent, spec)
    first_id = libvirt_node.domain_id(uid)

    # runStrategy Halted: graceful (ACPI) shutdown, reported as Stopped.
    spec = {**spec, "generation": 2, "power": "Stopped"}
    started = time.monotonic()
    await agent.put(spec)
    await agent.wait_for_state(uid, "Stopped", generation=2, timeout=STOP_TIMEOUT)
    report("Running -> Stopped (ACPI)", time.monotonic() - started)
    assert libvirt_node.domain_state(uid) == "shut off"
    assert "power button" in agent.console(uid).markers(), "stopped, but not through ACPI"
    # Its state and size stay on /metrics; its usage goes (libvirt reports a CPU time for
    # a shut-off domain that is not the guest's).
    found = samples(await (await agent.client.get("/metrics", headers=AGENT_AUTH)).text())
    guest = {"namespace": spec["namespace"], "name": spec["name"], "uid": uid}
    assert sample(found, "stratus_guest_state", **guest, state="shutoff") == 1
    assert sample(found, "stratus_guest_vcpus", **guest) == spec["cpu"]
    assert sample(found, "stratus_guest_cpu_seconds_total", **guest) is None
    assert sample(found, "stratus_guest_disk_read_bytes_total", **guest, device="vda") is None

    # runStrategy Always again: the same domain starts anew, from the same disk.
    spec = {**spec, "generation": 3, "power": "Running"}
    await agent.put(spec)
    await agent.wait_for_state(uid, "Running", generation=3)
    assert libvirt_node.domain_id(uid) != first_id
    markers = await agent.wait_for_marker(uid, "ready")
    assert markers.count("booted") == 1  # the console log starts over with each boot
    assert libvirt_node.ovs_ports_of(uid) == [naming.tap_name(uid, 0)]

    # DELETE leaves nothing behind, and is idempotent.
    assert await agent.delete(uid) == {"deleted": True}
    assert naming.domain_name(uid) not in libvirt_node.domains()
    assert libvirt_node.ovs_ports_of(uid) == []
    assert naming.tap_name(uid, 0) not in libvirt_node.bridge_ports()
    assert sorted(libvirt_node.guests_dir.glob(f"{uid}*")) == []
    assert await agent.get(uid) is None
    assert await agent.delete(uid) == {"deleted": False}


async def test_stop_falls_back_to_power_off(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    """A guest that ignores the ACPI power button is powered off after the grace time."""
    # The test image handles the power button only once it is ready, and user-data runs
    # before that: this guest ignores ACPI for as long as its user-data sleeps.
    spec = spec_for(make_guest_spec, "vm-deaf", f"{SUBNET}.51", "#!/bin/sh\nsleep 600\n")
    uid = spec["uid"]
    compute = agent.manager.compute
    assert isinstance(compute, libvirt_driver.LibvirtComputeDriver)
    compute.shutdown_grace = 3.0
    await agent.put(spec)
    await agent.wait_for_marker(uid, "user-data start")

    started = time.monotonic()
    await agent.put({**spec, "generation": 2, "power": "Stopped"})
    await agent.wait_for_state(uid, "Stopped", generation=2, timeout=STOP_TIMEOUT)
    report("Running -> Stopped (ACPI ignored, destroyed)", time.monotonic() - started)
    assert time.monotonic() - started >= compute.shutdown_grace
    assert libvirt_node.domain_state(uid) == "shut off"
    assert "power button" not in agent.console(uid).markers()


async def test_wrong_token_is_refused(agent: AgentUnderTest) -> None:
    response = await agent.client.get("/v1/guests", headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    assert (await agent.client.get("/v1/guests", headers=AGENT_AUTH)).status == 200


async def assert_metered(agent: AgentUnderTest, spec: dict[str, Any]) -> None:
    """/metrics has the running guest's CPU time and disk reads, under its Instance."""
    response = await agent.client.get("/metrics", headers=AGENT_AUTH)
    assert response.status == 200
    found = samples(await response.text())
    guest = {"namespace": spec["namespace"], "name": spec["name"], "uid": spec["uid"]}
    assert sample(found, "stratus_guest_state", **guest, state="running") == 1
    assert (sample(found, "stratus_guest_vcpu_seconds_total", **guest) or 0) > 0
    assert (sample(found, "stratus_guest_cpu_seconds_total", **guest) or 0) > 0
    assert (sample(found, "stratus_guest_disk_read_bytes_total", **guest, device="vda") or 0) > 0
    assert (sample(found, "stratus_guest_disk_read_requests_total", **guest, device="vda")
            or 0) > 0  # fmt: skip
    assert (sample(found, "stratus_guest_memory_resident_bytes", **guest) or 0) > 0
    assert sample(found, "stratus_guest_vcpus", **guest) == spec["cpu"]
    assert sample(found, "stratus_guest_memory_bytes", **guest) == spec["memoryBytes"]
    assert sample(found, "stratus_guest_network_transmit_packets_total", **guest,
                  interface="0") is not None  # fmt: skip
    assert sample(found, "stratus_agent_scrape_collector_success", collector="guests") == 1


async def test_restarted_agent_finds_its_guest(
    start_agent: StartAgent, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    spec = spec_for(make_guest_spec, "vm-restart", f"{SUBNET}.41", "#!/bin/sh\ntrue\n")
    uid = spec["uid"]
    first = await start_agent()
    await boot(first, spec)
    await assert_metered(first, spec)
    domain_id = libvirt_node.domain_id(uid)
    await first.stop()

    second = await start_agent()  # same state directory, bridge and libvirtd
    listed = {guest["uid"]: guest for guest in (await second.inventory())["guests"]}
    assert listed[uid]["state"] == "Running"
    assert (await second.get(uid) or {}).get("state") == "Running"
    # Holding no spec of it yet, the new agent names it by its definition.
    await assert_metered(second, spec)

    await second.put(spec)
    await second.wait_for_state(uid, "Running", generation=1)
    assert libvirt_node.domains().count(naming.domain_name(uid)) == 1
    assert libvirt_node.domain_id(uid) == domain_id
    assert second.console(uid).markers().count("booted") == 1
    assert libvirt_node.ovs_ports_of(uid) == [naming.tap_name(uid, 0)]


async def test_delete_while_the_domain_starts_leaves_nothing(
    agent: AgentUnderTest,
    make_guest_spec: SpecFactory,
    libvirt_node: Node,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DELETE arrives while the driver's define/start runs in a worker thread, which no
    cancellation stops: the guest must not come back after the DELETE."""
    original_define = libvirt_driver.LibvirtHost.define
    defining = threading.Event()

    def slow_define(host: libvirt_driver.LibvirtHost, xml: str) -> Any:
        # As slow as a libvirtd that re-probes QEMU on each call (see nodeservices).
        defining.set()
        time.sleep(2)
        return original_define(host, xml)

    monkeypatch.setattr(libvirt_driver.LibvirtHost, "define", slow_define)
    spec = spec_for(make_guest_spec, "vm-short", f"{SUBNET}.61", "#!/bin/sh\ntrue\n")
    uid = spec["uid"]
    await agent.put(spec)
    assert await asyncio.to_thread(defining.wait, 60), agent.diagnostics(uid)
    assert await agent.delete(uid) == {"deleted": True}
    await agent.stop()
    await asyncio.get_running_loop().shutdown_default_executor()  # the define has ended
    assert naming.domain_name(uid) not in libvirt_node.domains()
    assert libvirt_node.ovs_ports_of(uid) == []
    assert sorted(libvirt_node.guests_dir.glob(f"{uid}*")) == []
