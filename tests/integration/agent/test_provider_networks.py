"""Provider networks on a real OVS and libvirt: a vlan Network's NIC is a port on its
physical network's bridge tagged with the VLAN id, a flat one is untagged there, an overlay
one stays on the integration bridge in its local VLAN, and a physical network the node has
no bridge for fails the guest clearly (NetworkSetupFailed, naming the config key)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from stratus_agent import config as agent_config
from stratus_api import naming

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
