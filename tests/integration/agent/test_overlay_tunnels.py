"""The VXLAN overlay between three simulated nodes A, B and C on real Open vSwitch.

Each node's integration bridge sits on the host's default Open vSwitch (where libvirt would
plug guests); its tunnel bridge in the node's own vswitchd and namespace, made by the
agent's network driver (stratus_devcloud.simnodes). "Guests" are OVS internal ports plugged
with the tag the driver's plug() gives, moved into namespaces of their own, so they are
tested with busybox ping rather than booted. Network 1 (VNI 1001) has guests on A and B;
Network 2 (VNI 1002, the same CIDR) on B and C.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stratus_agent import config as agent_config
from stratus_agent import main as agent_main
from stratus_agent.drivers.network.ovs import OvsNetworkDriver
from stratus_agent.drivers.network.tunnels import port_name
from stratus_api.guest import Nic
from stratus_api.network_wire import NodeNetworkSpec, OverlayPeer
from stratus_api.v1alpha1.network import NetworkType
from stratus_devcloud.nodeservices import NodeServices
from stratus_devcloud.simnodes import SimNode, SimNodes

STATE_ROOT = Path(os.environ.get("STRATUS_TEST_STATE_ROOT", "/var/lib/stratus-test"))
TOOLS = ("ovs-vsctl", "ovs-ofctl", "ovsdb-server", "ovs-vswitchd", "ip", "busybox")
NET1, NET2 = str(uuid.uuid4()), str(uuid.uuid4())
VNI1, VNI2 = 1001, 1002
MTU = 1450
PING_TIMEOUT = 30.0


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


@dataclass
class Guest:
    uid: str
    port: str  # the OVS internal port, moved into `netns`
    netns: str
    address: str
    mac: str
    network: str

    def ping(self, address: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.netns, "busybox", "ping", *args, address,
                   check=False)  # fmt: skip

    def arping(self, address: str) -> subprocess.CompletedProcess[str]:
        """Three broadcast ARP requests (-b: never unicast once answered)."""
        return run("ip", "netns", "exec", self.netns, "busybox", "arping", "-b", "-c", "3",
                   "-w", "5", "-I", self.port, address, check=False)  # fmt: skip

    def rx_packets(self) -> int:
        path = f"/sys/class/net/{self.port}/statistics/rx_packets"
        return int(run("ip", "netns", "exec", self.netns, "cat", path).stdout)


@dataclass
class OverlayNode:
    name: str
    config: agent_config.AgentConfig
    driver: OvsNetworkDriver
    facts: SimNode
    guests: list[Guest] = field(default_factory=list)

    @property
    def tunnel(self) -> agent_config.TunnelConfig:
        assert self.config.network.tunnel is not None
        return self.config.network.tunnel

    @property
    def local_ip(self) -> str:
        return self.tunnel.local_ip

    def restart(self) -> None:
        """A new driver over the same state directory, as after an agent restart."""
        self.driver = _driver(self.config)

    def vsctl(self, *args: str) -> str:
        return run("ovs-vsctl", f"--db={self.tunnel.ovsdb}", "--timeout=10", *args).stdout

    def flows(self, table: int | None = None) -> str:
        target = f"unix:{self.tunnel.rundir}/{self.tunnel.bridge}.mgmt"
        match = () if table is None else (f"table={table}",)
        return run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", target, *match).stdout

    def packets(self, table: int) -> int:
        return sum(int(n) for n in re.findall(r"n_packets=(\d+)", self.flows(table)))

    def tunnel_ports(self) -> list[str]:
        return sorted(p for p in self.vsctl("list-ports", self.tunnel.bridge).split()
                      if p.startswith("vxlan"))  # fmt: skip


def _driver(config: agent_config.AgentConfig) -> OvsNetworkDriver:
    driver = agent_main.network_driver(config)
    assert isinstance(driver, OvsNetworkDriver)
    return driver


@dataclass
class World:
    root: Path
    prefix: str
    nodes: dict[str, OverlayNode]
    services: NodeServices
    sim: SimNodes
    bridges: list[str] = field(default_factory=list)  # on the host's Open vSwitch
    closed: bool = False

    def close(self) -> None:
        """Remove every guest namespace, bridge, veth and daemon the module made."""
        if self.closed:
            return
        self.closed = True
        for node in self.nodes.values():
            for guest in node.guests:
                run("ip", "netns", "del", guest.netns, check=False)
            self.bridges.append(node.config.network.bridge)
        for bridge in self.bridges:
            run("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge, check=False)
        self.sim.down()
        self.services.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _missing_tools() -> list[str]:
    return [t for t in TOOLS if not (shutil.which(t) or Path("/usr/sbin", t).exists())]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and Open vSwitch")
    if missing := _missing_tools():
        pytest.skip(f"{', '.join(missing)} not installed: run hack/install-deps")
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ovl-", dir=STATE_ROOT))
    services = NodeServices(root / "node-services")
    sim = SimNodes(root)
    prefix = f"ov{secrets.token_hex(3)}"  # 8 characters, + node letter + guest number
    world = World(root, prefix, {}, services, sim)
    try:
        services.up(libvirt=False)
        token_file = root / "token"
        token_file.write_text("unused-by-this-test-0123456789")
        for index, name in enumerate("abc", start=1):
            facts = sim.up(index)
            tunnel = agent_config.TunnelConfig(
                local_ip=facts.local_ip,
                ovsdb=facts.ovsdb,
                rundir=facts.rundir,
                link=agent_config.TunnelLinkConfig(
                    int_port=facts.int_port, tun_port=facts.tun_port
                ),
            )
            config = agent_config.AgentConfig(
                node_name=f"node-{name}",
                token_file=token_file,
                state_dir=root / f"node-{name}",
                listen=agent_config.ListenConfig(insecure=True),
                network=agent_config.NetworkConfig(
                    bridge=f"{prefix}{name}", datapath_type="netdev", tunnel=tunnel
                ),
            )
            world.nodes[name] = OverlayNode(name, config, _driver(config), facts)
        yield world
    finally:
        world.close()


def spec(uid: str, vni: int, *peers: OverlayNode, mtu: int = MTU) -> NodeNetworkSpec:
    return NodeNetworkSpec(
        uid=uid,
        namespace="tenant",
        name=f"net-{vni}",
        type=NetworkType.OVERLAY,
        segmentation_id=vni,
        mtu=mtu,
        peers=[
            OverlayPeer(endpoint=p.local_ip, macs=[g.mac for g in p.guests if g.network == uid])
            for p in peers
        ],
    )


async def add_guest(world: World, node: OverlayNode, network: str, address: str) -> Guest:
    """Plug a guest as libvirt would (the tag plug() gives, external_ids:vm-id), then give
    its port a namespace and an address of its own."""
    number = sum(len(n.guests) for n in world.nodes.values())
    guest = Guest(
        uid=str(uuid.uuid4()),
        port=f"{world.prefix}{node.name}{number}",
        netns=f"{world.prefix}-g{number}",
        address=address,
        mac=f"52:54:00:00:{number:02x}:{ord(node.name):02x}",
        network=network,
    )
    nic = Nic(network=f"net-{network[:4]}", network_uid=network, mac=guest.mac, mtu=MTU)
    (binding,) = await node.driver.plug(guest.uid, [nic])
    assert binding.bridge == node.config.network.bridge and binding.vlan_tag is not None
    run("ovs-vsctl", "--timeout=10", "add-port", binding.bridge, guest.port,
        f"tag={binding.vlan_tag}", "--", "set", "Interface", guest.port, "type=internal",
        f"external_ids:vm-id={guest.uid}")  # fmt: skip
    node.guests.append(guest)
    run("ip", "netns", "add", guest.netns)
    in_ns = ("ip", "netns", "exec", guest.netns)
    # No IPv6: its own chatter would make "hears nothing" untestable.
    run(*in_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
    run("ip", "link", "set", guest.port, "netns", guest.netns)
    run(*in_ns, "ip", "link", "set", guest.port, "address", guest.mac, "mtu", str(MTU), "up")
    run(*in_ns, "ip", "addr", "add", f"{address}/24", "dev", guest.port)
    return guest


async def wait_ping(guest: Guest, address: str) -> None:
    deadline = time.monotonic() + PING_TIMEOUT
    while time.monotonic() < deadline:
        if guest.ping(address, "-c", "1", "-W", "1").returncode == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{guest.address} never reached {address}")


def tunnel_flows_of(node: OverlayNode, vni: int) -> list[str]:
    return [line for line in node.flows().splitlines()
            if f"tun_id={vni:#x}" in line or f"{vni:#x}->tun_id" in line]  # fmt: skip


async def test_guests_of_one_network_talk_across_nodes_and_nobody_else_hears(world: World) -> None:
    a, b, c = world.nodes["a"], world.nodes["b"], world.nodes["c"]
    guest_a = await add_guest(world, a, NET1, "10.77.0.1")
    guest_b = await add_guest(world, b, NET1, "10.77.0.2")
    # Network 2 shares the CIDR, and even guest B's address.
    other_b = await add_guest(world, b, NET2, "10.77.0.2")
    other_c = await add_guest(world, c, NET2, "10.77.0.3")
    await a.driver.ensure_network(spec(NET1, VNI1, b))
    await b.driver.ensure_network(spec(NET1, VNI1, a))
    await b.driver.ensure_network(spec(NET2, VNI2, c))
    await c.driver.ensure_network(spec(NET2, VNI2, b))
    assert c.tunnel_ports() == [port_name(b.local_ip)]  # C could hear B: it has a port to it
    heard_by_other_b, c_inbound = other_b.rx_packets(), c.packets(table=4)

    await wait_ping(guest_a, guest_b.address)
    three = guest_a.ping(guest_b.address, "-c", "3", "-W", "2")
    assert " 0% packet loss" in three.stdout, three.stdout
    # 1422 bytes of payload + ICMP and IP headers fill the 1450-byte MTU exactly.
    full = guest_a.ping(guest_b.address, "-c", "2", "-W", "2", "-s", "1422")
    assert " 0% packet loss" in full.stdout, full.stdout
    # Broadcasts from B's side too (unicast alone is never flooded): Network 1's guest on A
    # answers them, and no node without a guest of Network 1 may see them.
    a_inbound = a.packets(table=4)
    arping = guest_b.arping(guest_a.address)
    assert "Received 3 response" in arping.stdout, arping.stdout + arping.stderr
    assert a.packets(table=4) >= a_inbound + 3

    assert other_b.rx_packets() == heard_by_other_b, "Network 2's guest heard Network 1"
    assert b.packets(table=4) > 0, "B's inbound table counts nothing: this check proves nothing"
    assert c.packets(table=4) == c_inbound, c.flows(table=4)
    # Network 2 works too, between B and C only.
    await wait_ping(other_c, other_b.address)
    assert guest_b.rx_packets() > 0 and a.packets(table=4) > 0


async def test_a_restarted_agent_rebuilds_the_tunnel_bridge(world: World) -> None:
    a, b = world.nodes["a"], world.nodes["b"]
    guest_a = next(g for g in a.guests if g.network == NET1)
    guest_b = next(g for g in b.guests if g.network == NET1)
    before = sorted(re.sub(r"(duration|n_packets|n_bytes)=[^,]*, ?", "", f)
                    for f in a.flows().splitlines()[1:])  # fmt: skip
    a.vsctl("del-br", a.tunnel.bridge)
    assert guest_a.ping(guest_b.address, "-c", "1", "-W", "1").returncode != 0
    a.restart()
    await a.driver.check()
    after = sorted(re.sub(r"(duration|n_packets|n_bytes)=[^,]*, ?", "", f)
                   for f in a.flows().splitlines()[1:])  # fmt: skip
    assert after == before
    await wait_ping(guest_a, guest_b.address)


async def test_the_last_guest_gone_takes_its_networks_flows(world: World) -> None:
    a, b = world.nodes["a"], world.nodes["b"]
    guest_b = next(g for g in b.guests if g.network == NET1)
    assert tunnel_flows_of(b, VNI1) and port_name(a.local_ip) in b.tunnel_ports()
    await b.driver.unplug(guest_b.uid)
    b.guests.remove(guest_b)
    run("ip", "netns", "del", guest_b.netns)
    assert tunnel_flows_of(b, VNI1) == []
    assert b.tunnel_ports() == [port_name(world.nodes["c"].local_ip)]  # Network 2's only
    assert b.driver.networks() == sorted([NET1, NET2])  # the spec stays until DELETE

    b_port = a.vsctl("get", "Interface", port_name(b.local_ip), "ofport").strip()
    assert f"output:{b_port}" in "".join(tunnel_flows_of(a, VNI1))  # still floods to B
    await a.driver.ensure_network(spec(NET1, VNI1))  # the operator: B hosts it no more
    assert a.tunnel_ports() == []
    outbound = [f for f in tunnel_flows_of(a, VNI1) if "->tun_id" in f]
    assert outbound == [], outbound
    assert await b.driver.remove_network(NET1)
    assert b.driver.networks() == [NET2]


async def test_patch_ports_join_bridges_of_one_open_vswitch(world: World) -> None:
    """No link configured: the agent joins the bridges with a pair of patch ports named
    after them, and makes the VXLAN port as the overlay needs it."""
    integration, tunnel_bridge = f"{world.prefix}p", f"{world.prefix}t"
    world.bridges += [integration, tunnel_bridge]
    config = world.nodes["a"].config.model_copy(
        update={
            "state_dir": world.root / "node-patch",
            "network": agent_config.NetworkConfig(
                bridge=integration,
                datapath_type="netdev",
                tunnel=agent_config.TunnelConfig(local_ip="192.0.2.1", bridge=tunnel_bridge),
            ),
        }
    )
    driver = _driver(config)
    nic = Nic(network="net", network_uid=NET1, mac="52:54:00:00:00:99", mtu=MTU)
    await driver.plug(str(uuid.uuid4()), [nic])
    await driver.ensure_network(
        NodeNetworkSpec(uid=NET1, namespace="tenant", name="net", type=NetworkType.OVERLAY,
                        segmentation_id=VNI1, peers=[OverlayPeer(endpoint="192.0.2.1"),
                                                     OverlayPeer(endpoint="192.0.2.9")])
    )  # fmt: skip

    def vsctl(*args: str) -> str:
        return run("ovs-vsctl", "--timeout=10", *args).stdout.strip()

    int_port, tun_port = f"patch-{tunnel_bridge}", f"patch-{integration}"
    assert vsctl("list-ports", integration) == int_port
    assert vsctl("get", "Interface", int_port, "options:peer") == tun_port
    assert vsctl("get", "Port", int_port, "tag") == "[]"  # a trunk
    vxlan = port_name("192.0.2.9")  # its own endpoint (192.0.2.1) gets no port
    assert sorted(vsctl("list-ports", tunnel_bridge).split()) == sorted([tun_port, vxlan])
    options = vsctl("get", "Interface", vxlan, "options")
    assert options == '{key=flow, remote_ip="192.0.2.9"}', options
    link = vsctl("get", "Interface", tun_port, "ofport")
    flows = run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", tunnel_bridge).stdout
    assert f"in_port={link} actions=resubmit(,1)" in flows.replace(",actions", " actions"), flows
    assert vsctl("get", "Bridge", tunnel_bridge, "fail_mode") == "secure"


def test_teardown_leaves_nothing(world: World) -> None:
    netns = [n.facts.netns for n in world.nodes.values()]
    guests = [g.netns for n in world.nodes.values() for g in n.guests]
    bridges = [*world.bridges, *(n.config.network.bridge for n in world.nodes.values())]
    run_dir = world.root / "simnodes" / "run"
    assert list(run_dir.glob("*.json")), "no daemon records: this check proves nothing"
    world.close()
    left_netns = run("ip", "netns", "list").stdout
    assert not [ns for ns in (*netns, *guests) if ns in left_netns.split()], left_netns
    links = run("ip", "-o", "link", "show").stdout
    prefixes = (world.sim.prefix, world.prefix)
    assert not [ln for ln in links.splitlines() if any(f": {p}" in ln for p in prefixes)], links
    listed = run("ovs-vsctl", "--timeout=5", "list-br", check=False).stdout.split()
    assert not set(bridges) & set(listed)
    assert not world.root.exists()
    daemons = run("pgrep", "-af", str(world.root), check=False).stdout  # their argv name it
    assert not daemons.strip(), daemons
