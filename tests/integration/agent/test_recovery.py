"""The agent heals by itself on a real node: guests destroyed from outside start again
(runStrategy Always), a deleted OVS bridge comes back, a failing ovs-vsctl is retried."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import libvirt
import pytest

from stratus_agent import config as agent_config
from stratus_agent.drivers.compute import libvirt_driver
from stratus_api import naming

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from conftest import AgentUnderTest, Node

    SpecFactory = Callable[..., dict[str, Any]]
    StartAgent = Callable[..., Awaitable[AgentUnderTest]]

START_TIMEOUT = 240.0  # a bound, as in conftest: a define+start takes ~0.4 s here
FAST = agent_config.RecoveryConfig(
    retry_initial_seconds=0.2,
    retry_max_seconds=1.0,
    restart_initial_seconds=0.5,
    restart_max_seconds=2.0,
)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return run("virsh", "-c", "qemu:///system", *args)


def with_nic(make_guest_spec: SpecFactory, hostname: str) -> dict[str, Any]:
    spec = make_guest_spec(name=hostname)
    spec["nics"] = [
        {
            "network": "test-net",
            "networkUid": str(uuid.uuid4()),
            "mac": "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3]),
            "address": "10.78.0.5",
            "prefixLength": 24,
        }
    ]
    spec["cloudInit"] = {
        "instanceId": f"i-{spec['uid'][:8]}",
        "hostname": hostname,
        "userData": base64.b64encode(b"#!/bin/sh\ntrue\n").decode(),
    }
    return spec


async def wait_for(
    agent: AgentUnderTest,
    uid: str,
    what: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = START_TIMEOUT,
) -> dict[str, Any]:
    """Poll the agent's status of `uid` until `check` holds (Failed does not end the wait:
    here it is expected on the way)."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = await agent.get(uid)
        if status is not None and check(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"guest {uid}: not {what} within {timeout} s; last {status}")


def bridge_exists(bridge: str) -> bool:
    return run("ovs-vsctl", "--timeout=10", "br-exists", bridge, check=False).returncode == 0


async def test_a_guest_destroyed_from_outside_is_started_again(
    start_agent: StartAgent, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    agent = await start_agent(recovery=FAST)
    spec = with_nic(make_guest_spec, "vm-always")
    uid = spec["uid"]
    await agent.put(spec)
    await agent.wait_for_state(uid, "Running")
    first_id = libvirt_node.domain_id(uid)

    virsh("destroy", naming.domain_name(uid))
    status = await wait_for(
        agent, uid, "Running again", lambda s: s["state"] == "Running" and s["restarts"] == 1
    )
    assert status["lastRestartReason"] == "StoppedOutsideStratus"
    assert libvirt_node.domain_state(uid) == "running"
    assert libvirt_node.domain_id(uid) != first_id
    await agent.wait_for_marker(uid, "ready")
    listed = {g["uid"]: g for g in (await agent.inventory())["guests"]}
    assert listed[uid]["restarts"] == 1

    # The count survives an agent restart (a small JSON per guest, gone with the guest).
    await agent.stop()
    again = await start_agent(recovery=FAST)
    assert ((await again.get(uid)) or {}).get("restarts") == 1
    assert await again.delete(uid) == {"deleted": True}
    assert sorted(libvirt_node.guests_dir.glob(f"{uid}*")) == []


async def test_a_halted_guest_stays_down(
    start_agent: StartAgent, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    agent = await start_agent(recovery=FAST)
    spec = {**make_guest_spec(name="vm-halted"), "power": "Stopped"}
    uid = spec["uid"]
    await agent.put(spec)
    await agent.wait_for_state(uid, "Stopped")
    virsh("start", naming.domain_name(uid))  # someone starts it, then it goes down again
    await wait_for(agent, uid, "Running", lambda s: s["state"] == "Running")
    virsh("destroy", naming.domain_name(uid))
    await wait_for(agent, uid, "Stopped", lambda s: s["state"] == "Stopped")
    await asyncio.sleep(3 * FAST.restart_initial_seconds)
    assert libvirt_node.domain_state(uid) == "shut off"
    assert ((await agent.get(uid)) or {}).get("restarts") == 0


async def test_a_deleted_bridge_is_made_again(
    start_agent: StartAgent, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    bridge = libvirt_node.bridge
    agent = await start_agent(
        recovery=FAST,
        network=agent_config.NetworkConfig(
            bridge=bridge, datapath_type="netdev", check_seconds=0.5
        ),
    )
    first = with_nic(make_guest_spec, "vm-bridge-1")
    await agent.put(first)
    await agent.wait_for_state(first["uid"], "Running")

    # Deleted while the agent runs: the next guest's prepare makes it again.
    run("ovs-vsctl", "--timeout=10", "del-br", bridge)
    second = with_nic(make_guest_spec, "vm-bridge-2")
    await agent.put(second)
    await agent.wait_for_state(second["uid"], "Running")
    assert bridge_exists(bridge)
    assert naming.tap_name(second["uid"], 0) in libvirt_node.bridge_ports()

    # And without any guest asking: the periodic node check.
    run("ovs-vsctl", "--timeout=10", "del-br", bridge)
    deadline = time.monotonic() + 30
    while not bridge_exists(bridge):
        assert time.monotonic() < deadline, "the node check did not make the bridge again"
        await asyncio.sleep(0.1)
    assert run("ovs-vsctl", "--timeout=10", "get", "Bridge", bridge,
               "datapath_type").stdout.strip() == "netdev"  # fmt: skip


async def test_a_network_failure_is_reported_and_heals_by_itself(
    start_agent: StartAgent, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    flag = libvirt_node.root / "ovs-broken"
    wrapper = libvirt_node.root / "ovs-vsctl-flaky"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ]; then echo "ovs-vsctl: database connection failed" >&2; exit 1; fi\n'
        'exec ovs-vsctl "$@"\n'
    )
    wrapper.chmod(0o755)
    flag.touch()
    run("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", libvirt_node.bridge)
    agent = await start_agent(
        recovery=FAST,
        network=agent_config.NetworkConfig(
            bridge=libvirt_node.bridge, datapath_type="netdev", vsctl=str(wrapper)
        ),
    )
    spec = with_nic(make_guest_spec, "vm-flaky")
    uid = spec["uid"]
    await agent.put(spec)
    failed = await wait_for(agent, uid, "Failed", lambda s: s["state"] == "Failed")
    assert failed["reason"] == "NetworkSetupFailed"
    assert "database connection failed" in failed["message"]
    assert naming.domain_name(uid) not in libvirt_node.domains()

    flag.unlink()  # the fault clears; nobody PUTs again
    await wait_for(agent, uid, "Running", lambda s: s["state"] == "Running", timeout=60)
    assert bridge_exists(libvirt_node.bridge)
    assert libvirt_node.ovs_ports_of(uid) == [naming.tap_name(uid, 0)]


async def test_one_unreadable_domain_does_not_break_the_inventory(
    agent: AgentUnderTest,
    make_guest_spec: SpecFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good, bad = make_guest_spec(name="vm-good"), make_guest_spec(name="vm-bad")
    for spec in (good, bad):
        await agent.put(spec)
        await agent.wait_for_state(spec["uid"], "Running")
    original = libvirt_driver.LibvirtGuest.describe

    def describe(guest: libvirt_driver.LibvirtGuest) -> Any:
        if guest.uid == bad["uid"]:  # e.g. undefined between listing and reading it
            raise libvirt.libvirtError("Domain not found: vanished meanwhile")
        return original(guest)

    monkeypatch.setattr(libvirt_driver.LibvirtGuest, "describe", describe)
    listed = {g["uid"]: g["state"] for g in (await agent.inventory())["guests"]}
    assert listed[good["uid"]] == "Running"
