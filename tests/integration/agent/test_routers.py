"""Routers on a real OVS (netdev), routing real pings between stand-in guests.

Each stand-in guest is an OVS internal port with a VLAN tag and MAC, moved into a namespace
of its own with an address and a default route via its subnet's gateway (the router), as
the DHCP test's clients are. The external network is an untagged port on a second bridge
whose namespace ("outside") holds the external gateway 172.30.0.1 and has NO route back to
the guests' subnets: a reply reaches a guest only if the router rewrote its source (SNAT).
A ping is `busybox ping -c1 -W1`: a reachable address answers within 3 tries, an
unreachable one gets one try (1 s).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_agent.drivers.network.local_vlans import LocalVlans
from stratus_agent.drivers.network.ovs import OvsNetworkDriver
from stratus_agent.drivers.network.routers import ExternalGateway, Floating, RouterPort, Routers
from stratus_agent.drivers.network.spec_files import SpecFiles
from stratus_api.network_wire import NodeNetworkSpec
from stratus_api.router_wire import NodeRouterSpec

if TYPE_CHECKING:
    from conftest import Node

TAG_A, TAG_B, TAG_C = 181, 182, 183
MTU = 1450


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def vsctl(*args: str, check: bool = True) -> str:
    return run("ovs-vsctl", "--timeout=10", *args, check=check).stdout


def netns_list() -> str:
    return run("ip", "netns", "list").stdout


def all_ports(*bridges: str) -> set[str]:
    return {port for bridge in bridges for port in vsctl("list-ports", bridge).split()}


def pings(namespace: str, address: str, tries: int = 3) -> bool:
    for _ in range(tries):
        ping = ("ip", "netns", "exec", namespace, "busybox", "ping", "-c1", "-W1", address)
        if run(*ping, check=False).returncode == 0:
            return True
    return False


def never_pings(namespace: str, address: str) -> bool:
    return not pings(namespace, address, tries=1)


def ports_of(router: str) -> set[str]:
    """The router's OVS ports, on any bridge (by their external_ids)."""
    return set(vsctl("--bare", "--columns=name", "find", "Interface",
                     f"external_ids:stratus-router={router}").split())  # fmt: skip


def nat_rules(namespace: str) -> list[str]:
    return run("ip", "netns", "exec", namespace, "iptables", "-t", "nat", "-S").stdout.splitlines()


def snat_packets(namespace: str) -> int:
    """Packets that matched the router's SNAT rules (the first of each connection)."""
    out = run("ip", "netns", "exec", namespace, "iptables", "-t", "nat", "-L", "stratus-snat",
              "-v", "-n", "-x").stdout  # fmt: skip
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())


def router_state(namespace: str, bridges: tuple[str, str]) -> dict[str, Any]:
    """What ensure sets, as the kernel and OVS show it; devices by ifindex, so a port made
    again would differ."""
    links = json.loads(run("ip", "-n", namespace, "-j", "link", "show").stdout)
    addrs = json.loads(run("ip", "-n", namespace, "-j", "-4", "addr", "show").stdout)
    ports = all_ports(*bridges)
    tags = json.loads(vsctl("--format=json", "--columns=name,tag", "list", "Port"))["data"]
    return {
        "links": sorted((d["ifindex"], d["ifname"], d.get("address"), d["mtu"]) for d in links),
        "addresses": sorted(
            (a["ifname"], f"{i['local']}/{i['prefixlen']}") for a in addrs for i in a["addr_info"]
        ),
        "routes": run("ip", "-n", namespace, "-4", "route", "show").stdout,
        "nat": nat_rules(namespace),
        "ovs": sorted((name, str(tag)) for name, tag in tags if name in ports),
    }


@pytest.fixture(scope="module")
def bridges(libvirt_node: Node) -> Iterator[tuple[str, str]]:
    """The module's integration bridge and a second one for the external network."""
    for tool in ("busybox", "ip", "iptables", "iptables-restore", "sysctl"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.fail(f"{tool} not installed: run hack/install-deps")
    external = f"{libvirt_node.bridge}x"
    for bridge in (libvirt_node.bridge, external):
        vsctl("--may-exist", "add-br", bridge, "--", "set", "Bridge", bridge,
              "datapath_type=netdev")  # fmt: skip
    yield libvirt_node.bridge, external
    vsctl("--if-exists", "del-br", external)


@pytest.fixture
async def routers(libvirt_node: Node, bridges: tuple[str, str]) -> AsyncIterator[Routers]:
    """This node's routers (node tag: the integration bridge); whatever a test leaves is
    swept."""
    made = Routers(libvirt_node.root / f"routers-{uuid.uuid4().hex[:8]}", bridges[0])
    yield made
    await made.sweep(keep=())


class Hosts:
    """Stand-in guests: OVS internal ports, each in a namespace of its own."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def add(self, bridge: str, tag: int | None, address: str, gateway: str | None) -> str:
        """A host with `address` ("ip/prefixlen") in VLAN `tag` (None: untagged) on
        `bridge`, routing everything via `gateway`; its namespace."""
        port = f"rh{secrets.token_hex(4)}"
        namespace = f"router-test-{port}"
        self.made.append((port, namespace))
        tagging = ("--", "set", "Port", port, f"tag={tag}") if tag is not None else ()
        vsctl("add-port", bridge, port, "--", "set", "Interface", port, "type=internal",
              *tagging)  # fmt: skip
        mac = "52:54:00:" + ":".join(secrets.token_hex(3)[i : i + 2] for i in (0, 2, 4))
        run("ip", "netns", "add", namespace)
        run("ip", "link", "set", "dev", port, "netns", namespace)
        run("ip", "-n", namespace, "link", "set", "dev", port, "address", mac, "up")
        run("ip", "-n", namespace, "link", "set", "dev", "lo", "up")
        run("ip", "-n", namespace, "addr", "add", address, "dev", port)
        if gateway is not None:
            run("ip", "-n", namespace, "route", "add", "default", "via", gateway)
        return namespace

    def remove(self) -> None:
        for port, namespace in self.made:
            vsctl("--if-exists", "del-port", port, check=False)
            run("ip", "netns", "delete", namespace, check=False)


@pytest.fixture
def hosts(bridges: tuple[str, str]) -> Iterator[Hosts]:
    made = Hosts()
    yield made
    made.remove()


def router_port(network: str, bridge: str, tag: int | None, address: str) -> RouterPort:
    mac = "fa:16:3e:" + ":".join(secrets.token_hex(3)[i : i + 2] for i in (0, 2, 4))
    return RouterPort(network_uid=network, bridge=bridge, vlan_tag=tag, mtu=MTU, mac=mac,
                      addresses=(address,))  # fmt: skip


async def test_a_router_routes_between_its_networks_only_and_repairs_drift(
    routers: Routers, hosts: Hosts, bridges: tuple[str, str]
) -> None:
    router, net_a, net_b = (str(uuid.uuid4()) for _ in range(3))
    port_a = router_port(net_a, bridges[0], TAG_A, "10.81.0.1/24")
    port_b = router_port(net_b, bridges[0], TAG_B, "10.82.0.1/24")
    guest_a = hosts.add(bridges[0], TAG_A, "10.81.0.11/24", "10.81.0.1")
    guest_b = hosts.add(bridges[0], TAG_B, "10.82.0.12/24", "10.82.0.1")
    # Not joined: its gateway address is on nothing.
    guest_c = hosts.add(bridges[0], TAG_C, "10.83.0.13/24", "10.83.0.1")
    await routers.ensure(router, [port_a, port_b], None)
    namespace = routers.namespace(router)
    name_a, name_b = routers.port_name(router, net_a), routers.port_name(router, net_b)

    assert pings(guest_a, "10.81.0.1") and pings(guest_b, "10.82.0.1")
    assert pings(guest_a, "10.82.0.12") and pings(guest_b, "10.81.0.11")
    assert never_pings(guest_a, "10.83.0.13")
    assert never_pings(guest_c, "10.81.0.11")
    shown = run("ip", "-n", namespace, "link", "show", "dev", name_a).stdout
    assert f"mtu {MTU}" in shown and port_a.mac in shown
    assert vsctl("get", "Port", name_a, "tag").strip() == str(TAG_A)
    ids = vsctl("get", "Interface", name_a, "external_ids")
    assert f'stratus-router="{router}"' in ids and f'stratus-router-network="{net_a}"' in ids

    before = router_state(namespace, bridges)
    await routers.ensure(router, [port_a, port_b], None)
    assert router_state(namespace, bridges) == before

    # Drift: retagged, an address added by hand, the MAC changed: put right.
    vsctl("set", "Port", name_a, "tag=999")
    run("ip", "-n", namespace, "addr", "add", "10.99.0.1/24", "dev", name_b)
    run("ip", "-n", namespace, "link", "set", "dev", name_b, "address", "fa:16:3e:99:99:99")
    await routers.ensure(router, [port_a, port_b], None)
    after = router_state(namespace, bridges)
    assert after["ovs"] == before["ovs"] and after["addresses"] == before["addresses"]
    assert port_b.mac in run("ip", "-n", namespace, "link", "show", "dev", name_b).stdout
    assert pings(guest_a, "10.82.0.12")

    # Network B no longer joined: its port goes.
    await routers.ensure(router, [port_a], None)
    assert name_b not in all_ports(*bridges) and name_a in all_ports(*bridges)
    assert run("ip", "-n", namespace, "link", "show", "dev", name_b, check=False).returncode
    assert never_pings(guest_a, "10.82.0.12")
    assert pings(guest_a, "10.81.0.1")


async def test_snat_through_the_external_port_and_none_without_it(
    routers: Routers, hosts: Hosts, bridges: tuple[str, str]
) -> None:
    router, net_a, net_ext = (str(uuid.uuid4()) for _ in range(3))
    port_a = router_port(net_a, bridges[0], TAG_A, "10.81.0.1/24")
    ext_port = router_port(net_ext, bridges[1], None, "172.30.0.10/24")
    guest_a = hosts.add(bridges[0], TAG_A, "10.81.0.11/24", "10.81.0.1")
    outside = hosts.add(bridges[1], None, "172.30.0.1/24", None)  # no route to 10.81.0.0/24
    snat = ExternalGateway(ext_port, gateway="172.30.0.1", snat=True)
    await routers.ensure(router, [port_a], snat)
    namespace = routers.namespace(router)
    gateway_port = routers.gateway_port_name(router)

    assert pings(guest_a, "172.30.0.1")  # the reply came back: the source was 172.30.0.10
    assert snat_packets(namespace) >= 1
    assert f"-A stratus-snat -s 10.81.0.0/24 -o {gateway_port} -j SNAT --to-source 172.30.0.10" in (
        nat_rules(namespace)
    )
    assert "default via 172.30.0.1" in run("ip", "-n", namespace, "route", "show").stdout
    assert vsctl("get", "Port", gateway_port, "tag").strip() == "[]"  # untagged

    before, counted = router_state(namespace, bridges), snat_packets(namespace)
    await routers.ensure(router, [port_a], snat)
    assert router_state(namespace, bridges) == before
    assert snat_packets(namespace) == counted  # the chain was not rewritten
    assert nat_rules(namespace).count("-A POSTROUTING -j stratus-snat") == 1

    await routers.ensure(router, [port_a], ExternalGateway(ext_port, "172.30.0.1", snat=False))
    assert not [rule for rule in nat_rules(namespace) if "stratus-snat" in rule]
    assert never_pings(guest_a, "172.30.0.1")  # it arrives from 10.81.0.11: no way back
    assert pings(outside, "172.30.0.10")  # the external port itself is still there

    await routers.ensure(router, [port_a], snat)
    assert pings(guest_a, "172.30.0.1")

    await routers.ensure(router, [port_a], None)  # the external gateway removed
    assert not [rule for rule in nat_rules(namespace) if "stratus-snat" in rule]
    assert "default" not in run("ip", "-n", namespace, "route", "show").stdout
    assert gateway_port not in all_ports(*bridges)
    assert never_pings(guest_a, "172.30.0.1")


def tcp_answers(namespace: str, address: str, port: int) -> str:
    """What a TCP server at address:port says to a client in `namespace` (empty: none)."""
    client = ("ip", "netns", "exec", namespace, "busybox", "nc", "-w", "2", address, str(port))
    return run(*client, check=False).stdout


def tracked(namespace: str, address: str) -> str:
    """The router's tracked connections that involve `address`."""
    return "\n".join(
        line for line in run("ip", "netns", "exec", namespace, "conntrack", "-L",
                             check=False).stdout.splitlines()
        if f"={address} " in line
    )  # fmt: skip


async def test_floating_addresses_map_one_to_one_with_or_without_snat(
    routers: Routers, hosts: Hosts, bridges: tuple[str, str]
) -> None:
    router, net_a, net_ext = (str(uuid.uuid4()) for _ in range(3))
    port_a = router_port(net_a, bridges[0], TAG_A, "10.81.0.1/24")
    ext_port = router_port(net_ext, bridges[1], None, "172.30.0.10/24")
    guest_a = hosts.add(bridges[0], TAG_A, "10.81.0.11/24", "10.81.0.1")
    guest_b = hosts.add(bridges[0], TAG_A, "10.81.0.12/24", "10.81.0.1")
    outside = hosts.add(bridges[1], None, "172.30.0.1/24", None)  # no route to 10.81.0.0/24
    mapped = Floating(ipaddress.IPv4Address("172.30.0.50"), ipaddress.IPv4Address("10.81.0.11"))
    # No router SNAT: only the floating address's own lets a guest out.
    floating = ExternalGateway(ext_port, "172.30.0.1", snat=False, floating=(mapped,))
    await routers.ensure(router, [port_a], floating)
    namespace = routers.namespace(router)
    gateway_port = routers.gateway_port_name(router)
    server = subprocess.Popen(  # answers one connection on guest A's port 2222
        ["ip", "netns", "exec", guest_a, "busybox", "sh", "-c",
         "echo hello-from-a | busybox nc -l -p 2222"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert pings(outside, "172.30.0.50")  # DNAT in, and the reply back out
        assert "hello-from-a" in tcp_answers(outside, "172.30.0.50", 2222)
    finally:
        server.kill()
        server.wait()
    assert pings(guest_a, "172.30.0.1")  # out with the floating address as its source
    assert never_pings(guest_b, "172.30.0.1")  # no floating address, no SNAT
    rules = nat_rules(namespace)
    assert "-A stratus-dnat -d 172.30.0.50/32 -j DNAT --to-destination 10.81.0.11" in rules
    assert (f"-A stratus-snat -s 10.81.0.11/32 -o {gateway_port} -j SNAT "
            "--to-source 172.30.0.50") in rules  # fmt: skip
    assert rules.count("-A PREROUTING -j stratus-dnat") == 1
    assert rules.count("-A OUTPUT -j stratus-dnat") == 1
    before = router_state(namespace, bridges)
    await routers.ensure(router, [port_a], floating)
    assert router_state(namespace, bridges) == before
    assert tracked(namespace, "172.30.0.50")

    # Taken away: the address, its rules and its tracked connections go.
    await routers.ensure(router, [port_a], ExternalGateway(ext_port, "172.30.0.1", snat=False))
    assert never_pings(outside, "172.30.0.50")
    assert never_pings(guest_a, "172.30.0.1")
    assert not [rule for rule in nat_rules(namespace) if "stratus-dnat" in rule]
    assert not tracked(namespace, "172.30.0.50")
    shown = run("ip", "-n", namespace, "-4", "addr", "show", "dev", gateway_port).stdout
    assert "172.30.0.50" not in shown and "172.30.0.10/24" in shown
    with pytest.raises(ValueError, match="is in none of its subnets"):
        stray = Floating(ipaddress.IPv4Address("172.31.0.50"), ipaddress.IPv4Address("10.81.0.12"))
        ExternalGateway(ext_port, "172.30.0.1", snat=False, floating=(stray,))


async def test_remove_and_sweep_leave_nothing_of_this_node_only(
    routers: Routers, libvirt_node: Node, bridges: tuple[str, str]
) -> None:
    kept, removed, leftover, elsewhere = (str(uuid.uuid4()) for _ in range(4))

    def ext(n: int) -> ExternalGateway:
        port = router_port(str(uuid.uuid4()), bridges[1], None, f"172.30.0.{10 + n}/24")
        return ExternalGateway(port, gateway="172.30.0.1", snat=True)

    for n, router in enumerate((kept, removed, leftover)):
        await routers.ensure(router, [
            router_port(str(uuid.uuid4()), bridges[0], TAG_A, "10.81.0.1/24"),
            router_port(str(uuid.uuid4()), bridges[0], TAG_B, "10.82.0.1/24"),
        ], ext(n))  # fmt: skip
    # A second node on this machine: another node tag, same kernel and bridges.
    other_node = Routers(libvirt_node.root / f"routers-{uuid.uuid4().hex[:8]}",
                         f"{bridges[0]}-2")  # fmt: skip
    await other_node.ensure(elsewhere, [
        router_port(str(uuid.uuid4()), bridges[0], TAG_C, "10.81.0.1/24")], ext(3))  # fmt: skip
    try:
        ports = {router: ports_of(router) for router in (removed, leftover)}
        assert all(len(made) == 3 for made in ports.values())

        await routers.remove(removed)
        assert routers.namespace(removed) not in netns_list()
        assert not ports[removed] & all_ports(*bridges)
        await routers.remove(removed)  # nothing left: nothing to do

        # As after a crash: a new agent knows only what it is told to keep.
        restarted = Routers(routers.root.parent, routers.node_tag)
        assert await restarted.sweep(keep={kept}) == [leftover]
        assert routers.namespace(leftover) not in netns_list()
        assert not ports[leftover] & all_ports(*bridges)
        assert routers.namespace(kept) in netns_list()
        assert other_node.namespace(elsewhere) in netns_list()
        assert len(ports_of(elsewhere)) == 2
        assert await restarted.sweep(keep={kept}) == []

        assert await restarted.sweep(keep=()) == [kept]
        assert not ports_of(kept)
    finally:
        await other_node.sweep(keep=())
    assert not [name for name in netns_list().split() if name.startswith(f"router-{bridges[0]}")]
    assert not [port for port in all_ports(*bridges) if port.startswith(("qr", "qg"))]


async def test_the_ovs_driver_builds_a_router_where_its_networks_are_and_keeps_it(
    libvirt_node: Node, hosts: Hosts, bridges: tuple[str, str], tmp_path: Path
) -> None:
    """From the node specs alone: the router's ports go in the overlay Networks' local
    VLANs (given to them by the router when no guest had) and on the external Network's
    provider bridge; the spec outlives an agent restart, the periodic check repairs the
    router, and removing it frees the local VLANs its ports alone held."""
    net_a, net_b, net_ext, router = (str(uuid.uuid4()) for _ in range(4))

    def driver() -> OvsNetworkDriver:
        return OvsNetworkDriver(
            OvsBridge(bridges[0], "netdev"), LocalVlans(tmp_path / "local-vlans.json"),
            {"extnet": OvsBridge(bridges[1], "netdev")},
            specs=SpecFiles(tmp_path / "specs", NodeNetworkSpec),
            routers=Routers(tmp_path, bridges[0]),
            router_specs=SpecFiles(tmp_path / "routers", NodeRouterSpec),
        )  # fmt: skip

    first = driver()
    for vni, (uid, kind) in enumerate(((net_a, "overlay"), (net_b, "overlay"), (net_ext, "flat"))):
        await first.ensure_network(NodeNetworkSpec.model_validate({
            "uid": uid, "namespace": "tenant", "name": uid[:8], "type": kind, "mtu": MTU,
            **({"segmentationId": 4000 + vni} if kind == "overlay" else {}),
            **({"physicalNetwork": "extnet"} if kind == "flat" else {}),
        }))  # fmt: skip
    spec = NodeRouterSpec.model_validate({
        "uid": router, "namespace": "tenant", "name": "edge",
        "ports": [
            {"network": net_a, "mac": "fa:16:3e:00:00:0a", "addresses": ["10.81.0.1/24"]},
            {"network": net_b, "mac": "fa:16:3e:00:00:0b", "addresses": ["10.82.0.1/24"]},
        ],
        "external": {"network": net_ext, "mac": "fa:16:3e:00:00:0e",
                     "addresses": ["172.30.0.10/24"], "gateway": "172.30.0.1"},
    })  # fmt: skip
    try:
        await first.ensure_router(spec)
        tags = first.vlans.tags()
        guest_a = hosts.add(bridges[0], tags[net_a], "10.81.0.11/24", "10.81.0.1")
        guest_b = hosts.add(bridges[0], tags[net_b], "10.82.0.12/24", "10.82.0.1")
        hosts.add(bridges[1], None, "172.30.0.1/24", None)  # outside: no route back
        assert pings(guest_a, "10.82.0.12") and pings(guest_b, "10.81.0.11")
        assert pings(guest_a, "172.30.0.1")  # through SNAT, on by default

        restarted = driver()
        assert restarted.router_uids() == [router]
        names = Routers(tmp_path, bridges[0])
        gateway_port = names.gateway_port_name(router)
        vsctl("del-port", gateway_port)  # drift the periodic check repairs
        await restarted.check()
        assert pings(guest_a, "172.30.0.1")

        hosts.remove()  # the guests' ports go: the router's alone hold the tags now
        assert await restarted.remove_router(router)
        assert not await restarted.remove_router(router)
        assert names.namespace(router) not in netns_list()
        assert not ports_of(router)
        assert net_a not in restarted.vlans.tags() and net_b not in restarted.vlans.tags()
        assert driver().router_uids() == []
    finally:
        await Routers(tmp_path, bridges[0]).remove(router)
