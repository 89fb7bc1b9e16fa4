"""DHCP servers on a real OVS (netdev) with real dnsmasq, asked by real DHCP clients.

Each client is an OVS internal port on the test bridge with a given VLAN tag and MAC, moved
into a namespace of its own, where busybox udhcpc asks for a lease; its script writes what
it was given to a file. No lease within 4 tries 2 s apart counts as "nothing was offered".
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stratus_agent.drivers.network import dhcp
from stratus_agent.drivers.network.dhcp import DhcpHost, DhcpServers
from stratus_api.network_wire import DhcpSubnet, DnsName

if TYPE_CHECKING:
    from conftest import Node

SUBNET = DhcpSubnet(cidr="10.77.0.0/24", server_address="10.77.0.2", gateway="10.77.0.1",
                    dns_servers=["10.77.0.53", "192.0.2.53"], lease_seconds=600)  # fmt: skip
MTU = 1450
TAG_A, TAG_B = 101, 102
LEASE_SCRIPT = """#!/bin/sh
# udhcpc calls this with the event first and the lease in its environment.
[ "$1" = bound ] || exit 0
printf 'ip=%s\\nmask=%s\\nrouter=%s\\ndns=%s\\nmtu=%s\\nhostname=%s\\n' \\
  "$ip" "$subnet" "$router" "$dns" "$mtu" "$hostname" > "$LEASE_FILE"
"""


def run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def vsctl(*args: str, check: bool = True) -> str:
    return run("ovs-vsctl", "--timeout=10", *args, check=check)


def mac(n: int) -> str:
    return f"52:54:00:77:00:{n:02x}"


def alive(pid: int) -> bool:
    """Running and not a zombie (nothing here reaps a daemonized dnsmasq)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def dnsmasq_pid(servers: DhcpServers, network: str) -> int:
    return int((servers.root / network / "dnsmasq.pid").read_text())


@dataclass
class Lease:
    ip: str
    mask: str
    router: str
    dns: str
    mtu: str
    hostname: str


@pytest.fixture(scope="module")
def bridges(libvirt_node: Node) -> Iterator[tuple[str, str]]:
    """The module's integration bridge and a second one, as a second node on this machine
    would have."""
    for tool in ("dnsmasq", "busybox", "ip"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.fail(f"{tool} not installed: run hack/install-deps")
    other = f"{libvirt_node.bridge}b"
    for bridge in (libvirt_node.bridge, other):
        vsctl("--may-exist", "add-br", bridge, "--", "set", "Bridge", bridge,
              "datapath_type=netdev")  # fmt: skip
    yield libvirt_node.bridge, other
    vsctl("--if-exists", "del-br", other)


@pytest.fixture
async def servers(libvirt_node: Node, bridges: tuple[str, str]) -> AsyncIterator[DhcpServers]:
    """A node's DHCP servers over a fresh state directory; whatever a test leaves is swept."""
    state = libvirt_node.root / f"dhcp-{uuid.uuid4().hex[:8]}"
    servers = DhcpServers(state, bridges[0])
    yield servers
    await servers.sweep(keep=())
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def client(libvirt_node: Node, bridges: tuple[str, str]) -> Iterator[Client]:
    made = Client(libvirt_node.root / f"clients-{uuid.uuid4().hex[:8]}")
    yield made
    made.remove()


class Client:
    """DHCP clients on OVS internal ports, each in a namespace of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self.script = directory / "lease.sh"
        self.script.write_text(LEASE_SCRIPT)
        self.script.chmod(0o755)
        self.ports: list[str] = []

    async def lease(self, mac: str, tag: int, bridge: str) -> Lease | None:
        """What a client with `mac` on `bridge` in VLAN `tag` is given; None: no lease."""
        port = f"dc{secrets.token_hex(4)}"
        namespace = f"dhcp-test-{port}"
        self.ports.append(port)
        vsctl("add-port", bridge, port, "--", "set", "Interface", port, "type=internal",
              "--", "set", "Port", port, f"tag={tag}")  # fmt: skip
        run("ip", "netns", "add", namespace)
        run("ip", "link", "set", "dev", port, "netns", namespace)
        run("ip", "-n", namespace, "link", "set", "dev", port, "address", mac, "up")
        out = self.directory / f"{port}.lease"
        udhcpc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", namespace, "busybox", "udhcpc", "-i", port, "-n", "-q",
            "-t", "4", "-T", "2", "-O", "mtu", "-s", str(self.script),
            env={**os.environ, "LEASE_FILE": str(out)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.wait_for(udhcpc.wait(), 60)
        if not out.exists():
            assert udhcpc.returncode != 0, "udhcpc says it got a lease but wrote none"
            return None
        fields = dict(line.split("=", 1) for line in out.read_text().splitlines())
        return Lease(**fields)

    def host(self, address: str, tag: int, bridge: str) -> str:
        """A client with a static `address` (a /24); its namespace."""
        port = f"dc{secrets.token_hex(4)}"
        namespace = f"dhcp-test-{port}"
        self.ports.append(port)
        vsctl("add-port", bridge, port, "--", "set", "Interface", port, "type=internal",
              "--", "set", "Port", port, f"tag={tag}")  # fmt: skip
        run("ip", "netns", "add", namespace)
        run("ip", "link", "set", "dev", port, "netns", namespace)
        run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", port)
        run("ip", "-n", namespace, "link", "set", "dev", port, "up")
        return namespace

    def remove(self) -> None:
        for port in self.ports:
            vsctl("--if-exists", "del-port", port)
            run("ip", "netns", "delete", f"dhcp-test-{port}", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


async def test_a_reserved_mac_gets_exactly_its_lease_and_nobody_else_gets_one(
    servers: DhcpServers, client: Client, bridges: tuple[str, str]
) -> None:
    network_a, network_b = str(uuid.uuid4()), str(uuid.uuid4())
    await servers.ensure(network_a, TAG_A, MTU, [SUBNET], [
        DhcpHost(mac=mac(1), address="10.77.0.11", hostname="vm-a.example.org"),
    ])  # fmt: skip
    # Network B: same CIDR, its own VLAN, reserving another MAC; A's guest must not be
    # answered there by either server.
    await servers.ensure(network_b, TAG_B, MTU, [SUBNET], [
        DhcpHost(mac=mac(3), address="10.77.0.13"),
    ])  # fmt: skip

    lease = await client.lease(mac(1), TAG_A, bridges[0])
    assert lease == Lease(ip="10.77.0.11", mask="255.255.255.0", router="10.77.0.1",
                          dns="10.77.0.2 10.77.0.53 192.0.2.53", mtu="1450",
                          hostname="vm-a")  # fmt: skip
    unknown, other_vlan, b_guest = await asyncio.gather(
        client.lease(mac(2), TAG_A, bridges[0]),
        client.lease(mac(1), TAG_B, bridges[0]),
        client.lease(mac(3), TAG_B, bridges[0]),
    )
    assert unknown is None
    assert other_vlan is None
    assert b_guest is not None and b_guest.ip == "10.77.0.13"  # B's server does answer


async def test_hosts_and_options_are_reloaded_by_the_same_dnsmasq_subnets_restart_it(
    servers: DhcpServers, client: Client, bridges: tuple[str, str]
) -> None:
    network = str(uuid.uuid4())
    first = DhcpHost(mac=mac(4), address="10.77.0.14")
    await servers.ensure(network, TAG_A, MTU, [SUBNET], [first])
    pid = dnsmasq_pid(servers, network)
    assert await client.lease(mac(5), TAG_A, bridges[0]) is None

    second = DhcpHost(mac=mac(5), address="10.77.0.15", hostname="vm-e")
    other_dns = SUBNET.model_copy(update={"dns_servers": ["10.77.0.54"], "gateway": None})
    await servers.ensure(network, TAG_A, MTU, [other_dns], [first, second])
    assert dnsmasq_pid(servers, network) == pid  # SIGHUP, no restart
    lease = await client.lease(mac(5), TAG_A, bridges[0])
    assert lease is not None
    assert (lease.ip, lease.dns, lease.router) == ("10.77.0.15", "10.77.0.2 10.77.0.54", "")

    # A restarted agent adopts the running server: same config, same process.
    restarted = DhcpServers(servers.state_dir, bridges[0])
    await restarted.ensure(network, TAG_A, MTU, [other_dns], [first, second])
    assert dnsmasq_pid(servers, network) == pid and alive(pid)

    longer = other_dns.model_copy(update={"lease_seconds": 1200})
    await servers.ensure(network, TAG_A, MTU, [longer], [first, second])
    assert dnsmasq_pid(servers, network) != pid and not alive(pid)


async def test_remove_leaves_no_namespace_port_process_or_file(servers: DhcpServers) -> None:
    network = str(uuid.uuid4())
    await servers.ensure(network, TAG_A, MTU, [SUBNET], [DhcpHost(mac(6), "10.77.0.16")])
    pid = dnsmasq_pid(servers, network)
    port = dhcp.port_name(servers.bridge, network)
    namespace = dhcp.namespace_name(servers.bridge, network)
    assert alive(pid) and port in vsctl("list-ports", servers.bridge).split()
    assert namespace in run("ip", "netns", "list")

    await servers.remove(network)
    assert not alive(pid)
    assert port not in vsctl("list-ports", servers.bridge).split()
    assert vsctl("--if-exists", "get", "Interface", port, "name") == ""
    assert namespace not in run("ip", "netns", "list")
    assert not (servers.root / network).exists()
    await servers.remove(network)  # nothing left: nothing to do


async def test_a_retagged_or_deleted_port_or_killed_dnsmasq_is_put_right_by_ensure(
    servers: DhcpServers, client: Client, bridges: tuple[str, str]
) -> None:
    network = str(uuid.uuid4())
    hosts = [DhcpHost(mac(7), "10.77.0.17")]
    await servers.ensure(network, TAG_A, MTU, [SUBNET], hosts)
    port = dhcp.port_name(servers.bridge, network)
    namespace = dhcp.namespace_name(servers.bridge, network)

    vsctl("set", "Port", port, "tag=999")  # retagged by hand: put right
    await servers.ensure(network, TAG_A, MTU, [SUBNET], hosts)
    assert vsctl("get", "Port", port, "tag").strip() == str(TAG_A)

    pid = dnsmasq_pid(servers, network)
    vsctl("del-port", servers.bridge, port)
    await servers.ensure(network, TAG_A, MTU, [SUBNET], hosts)
    assert vsctl("get", "Port", port, "tag").strip() == str(TAG_A)
    shown = run("ip", "-n", namespace, "-4", "addr", "show", "dev", port)
    assert "10.77.0.2/24" in shown and "mtu 1450" in shown
    lease = await client.lease(mac(7), TAG_A, bridges[0])
    assert lease is not None and lease.ip == "10.77.0.17"
    assert dnsmasq_pid(servers, network) == pid  # it follows the re-made port by name

    os.kill(pid, 9)
    await servers.ensure(network, TAG_A, MTU, [SUBNET], hosts)
    assert dnsmasq_pid(servers, network) != pid
    lease = await client.lease(mac(7), TAG_A, bridges[0])
    assert lease is not None and lease.ip == "10.77.0.17"


async def test_sweep_removes_leftovers_of_this_bridge_only(
    servers: DhcpServers, libvirt_node: Node, bridges: tuple[str, str]
) -> None:
    kept, leftover, elsewhere = (str(uuid.uuid4()) for _ in range(3))
    for network in (kept, leftover):
        await servers.ensure(network, TAG_A, MTU, [SUBNET], [])
    # A second node on this machine: another bridge and state directory, same kernel.
    other_node = DhcpServers(libvirt_node.root / f"dhcp-{uuid.uuid4().hex[:8]}", bridges[1])
    await other_node.ensure(elsewhere, TAG_A, MTU, [SUBNET], [])
    try:
        leftover_pid = dnsmasq_pid(servers, leftover)
        # As after a crash: a new agent knows only what it is told to keep.
        restarted = DhcpServers(servers.state_dir, servers.bridge)
        assert await restarted.sweep(keep={kept}) == [leftover]
        assert not alive(leftover_pid)
        assert dhcp.port_name(servers.bridge, leftover) not in vsctl("list-ports", servers.bridge)
        assert dhcp.namespace_name(servers.bridge, leftover) not in run("ip", "netns", "list")
        assert alive(dnsmasq_pid(servers, kept))
        assert alive(dnsmasq_pid(other_node, elsewhere))
        assert await restarted.sweep(keep={kept}) == []
    finally:
        await other_node.sweep(keep=())
        shutil.rmtree(other_node.state_dir, ignore_errors=True)


async def test_one_bridges_sweep_leaves_another_bridges_servers_of_the_same_node(
    servers: DhcpServers, bridges: tuple[str, str]
) -> None:
    """A node serves on its integration bridge and on provider bridges, from one state
    directory: sweeping a provider bridge's servers must not stop the others (it did, when
    their files shared one directory)."""
    network = str(uuid.uuid4())
    await servers.ensure(network, TAG_A, MTU, [SUBNET], [])
    provider = DhcpServers(servers.state_dir, bridges[1])
    assert await provider.sweep(keep=()) == []
    assert alive(dnsmasq_pid(servers, network))


def lookup(namespace: str, name: str, server: str) -> str:
    """busybox nslookup's answer, or its error."""
    result = subprocess.run(["ip", "netns", "exec", namespace, "busybox", "nslookup", name,
                             server], capture_output=True, text=True, timeout=30,
                            check=False)  # fmt: skip
    return result.stdout + result.stderr


async def test_the_server_answers_the_networks_names_in_dns_and_refuses_others(
    servers: DhcpServers, client: Client, bridges: tuple[str, str]
) -> None:
    network = str(uuid.uuid4())
    web = DnsName(name="web", address="10.77.0.21")
    await servers.ensure(network, TAG_A, MTU, [SUBNET], [], [web], "shop")
    pid = dnsmasq_pid(servers, network)
    namespace = client.host("10.77.0.30", TAG_A, bridges[0])
    assert "10.77.0.21" in lookup(namespace, "web", "10.77.0.2")
    assert "10.77.0.21" in lookup(namespace, "web.shop.stratus.internal", "10.77.0.2")
    assert "10.77.0.22" not in lookup(namespace, "db", "10.77.0.2")
    outside = lookup(namespace, "example.org", "10.77.0.2")  # no way out: refused, quickly
    assert "REFUSED" in outside or "can't resolve" in outside, outside

    # A new Instance's name is answered after a reload, by the same process.
    db = DnsName(name="db", address="10.77.0.22")
    await servers.ensure(network, TAG_A, MTU, [SUBNET], [], [web, db], "shop")
    assert dnsmasq_pid(servers, network) == pid
    assert "10.77.0.22" in lookup(namespace, "db", "10.77.0.2")
