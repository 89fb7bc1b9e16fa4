"""Provider networks on a real OVS and libvirt: a vlan Network's NIC is a port on its
physical network's bridge tagged with the VLAN id, a flat one is untagged there, an overlay
one stays on the integration bridge in its local VLAN, and a physical network the node has
no bridge for fails the guest clearly (NetworkSetupFailed, naming the config key)."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from stratus_agent import config as agent_config
from stratus_api import naming
from testsupport import AGENT_AUTH

if TYPE_CHECKING:
    from conftest import AgentUnderTest, Node

SpecFactory = Callable[..., dict[str, Any]]


def vsctl(*args: str) -> str:
    return subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


@pytest.fixture
def provider_bridge() -> Iterator[str]:
    """The node admin's bridge for physnet1 (no uplink here: the ports are what is shown)."""
    name = f"stp-{uuid.uuid4().hex[:8]}"
    vsctl("add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev")
    yield name
    vsctl("--if-exists", "del-br", name)


def nic(kind: str, **fields: Any) -> dict[str, Any]:
    return {"network": kind, "networkUid": str(uuid.uuid4()), "networkType": kind,
            "mac": "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3]),
            **fields}  # fmt: skip


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tag_of(port: str) -> int | None:
    tag = json.loads(vsctl("--format=json", "get", "Port", port, "tag"))
    return tag if isinstance(tag, int) else None


async def test_vlan_and_flat_nics_go_to_their_physical_networks_bridge(
    start_agent: Callable[..., Awaitable[AgentUnderTest]],
    make_guest_spec: SpecFactory,
    libvirt_node: Node,
    provider_bridge: str,
) -> None:
    network = agent_config.NetworkConfig(
        bridge=libvirt_node.bridge, datapath_type="netdev",
        physical_networks={"physnet1": provider_bridge},
    )  # fmt: skip
    agent = await start_agent(network=network)
    spec = make_guest_spec(nics=[
        nic("vlan", physicalNetwork="physnet1", segmentationId=100),
        nic("flat", physicalNetwork="physnet1"),
        nic("overlay", segmentationId=5001),
    ])  # fmt: skip
    await agent.put(spec)
    await agent.wait_for_state(spec["uid"], "Running")
    vlan, flat, overlay = (naming.tap_name(spec["uid"], i) for i in range(3))
    on_provider = set(vsctl("list-ports", provider_bridge).split())
    assert {vlan, flat} <= on_provider and overlay not in on_provider
    assert (tag_of(vlan), tag_of(flat)) == (100, None)
    assert overlay in libvirt_node.bridge_ports() and tag_of(overlay) is not None
    assert (await agent.inventory())["physicalNetworks"] == ["physnet1"]

    await agent.delete(spec["uid"])
    assert not set(vsctl("list-ports", provider_bridge).split()) & {vlan, flat}

    unmapped = make_guest_spec(nics=[nic("vlan", physicalNetwork="physnet9", segmentationId=7)])
    await agent.put(unmapped)
    failed = await agent.wait_for_state(unmapped["uid"], "Failed")
    assert failed["reason"] == "NetworkSetupFailed"
    assert (
        "physical network physnet9 has no bridge on this node (agent config "
        "network.physical_networks maps physnet1)" in failed["message"]
    )


async def test_a_vlan_networks_guest_gets_its_address_from_its_nodes_dhcp_server(
    start_agent: Callable[..., Awaitable[AgentUnderTest]],
    make_guest_spec: SpecFactory,
    libvirt_node: Node,
    provider_bridge: str,
) -> None:
    """DHCP on a provider Network: the node's dnsmasq sits on the physical network's bridge,
    in its VLAN, and answers the guest (which drops its seed's address first) with the
    reserved address and the subnet's gateway; nothing of it is left after the guest."""
    network = agent_config.NetworkConfig(
        bridge=libvirt_node.bridge, datapath_type="netdev",
        physical_networks={"physnet1": provider_bridge},
    )  # fmt: skip
    agent = await start_agent(network=network)
    guest_nic = nic("vlan", physicalNetwork="physnet1", segmentationId=100,
                    address="10.78.0.21", prefixLength=24, gateway="10.78.0.1")  # fmt: skip
    net_uid = guest_nic["networkUid"]
    share = {"uid": net_uid, "namespace": "default", "name": "vlan", "type": "vlan",
             "segmentationId": 100, "physicalNetwork": "physnet1", "mtu": 1500,
             "dhcp": [{"cidr": "10.78.0.0/24", "serverAddress": "10.78.0.254",
                       "gateway": "10.78.0.1"}]}  # fmt: skip
    answered = await agent.client.put(f"/v1/networks/{net_uid}", json=share, headers=AGENT_AUTH)
    assert answered.status == 200, await answered.text()
    spec = make_guest_spec(name="vm-dhcp", nics=[guest_nic])
    spec["cloudInit"] = {"instanceId": "i-dhcp", "hostname": "vm-dhcp", "userData": b64(
        "#!/bin/sh\nip addr flush dev eth0\n"
        "udhcpc -i eth0 -n -q -t 10 -T 2 -s /etc/udhcpc.script && echo DHCP-OK\n")}  # fmt: skip
    await agent.put(spec)
    await agent.wait_for_state(spec["uid"], "Running")
    markers = await agent.wait_for_marker(spec["uid"], "ready")
    console = agent.console(spec["uid"]).text()
    assert "DHCP-OK" in console, agent.diagnostics(spec["uid"])
    assert "udhcpc: lease of 10.78.0.21 obtained from 10.78.0.254" in console
    assert "ip eth0 10.78.0.21/24" in markers
    [port] = [p for p in vsctl("list-ports", provider_bridge).split() if p.startswith("dhcp")]
    assert tag_of(port) == 100

    await agent.delete(spec["uid"])
    assert not [p for p in vsctl("list-ports", provider_bridge).split() if p.startswith("dhcp")]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
    assert f"dhcp-{provider_bridge}-{net_uid}" not in namespaces
