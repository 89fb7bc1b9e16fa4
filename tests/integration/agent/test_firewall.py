"""The security-group firewall on a real OVS (netdev datapath, userspace conntrack), with
real traffic between stand-in guests.

Each host is an OVS internal port moved into a namespace of its own (IPv6 off, so the only
frames are the test's). VLAN_1 holds guarded A (groups web + default) and B (default) and an
open port C (a router stand-in, no filter); VLAN_2 holds guarded D (web + default) with an
address in the same subnet. T is a guest on "another node": on a far bridge (the tunnel
bridge's stand-in) in VLAN_1, reaching the integration bridge through a patch port that is
a trunk on both sides, so its frames arrive tagged. "ns/web" lets tcp/22 in from anywhere;
"ns/default" lets anything in from its members (A, B, D) and anything out. A and B answer
tcp 22 and 23 with "hello"; udp is received by a short-lived listener. Tests may add hosts
(E, F), which later tests leave open.

The hosts' tx checksum offload stays on: the kernel fills in the checksums of what it sends
through an internal port (a tap the userspace datapath reads without the virtio-net header),
so conntrack sees valid TCP. Guests' virtio NICs are another matter (see NicBinding).

Every test applies the table it needs first, so each stands alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_agent.drivers.network.conntrack import Conntrack
from stratus_agent.drivers.network.firewall import (
    NORMAL_ONLY,
    Firewall,
    GuardedPort,
    OpenPort,
    PendingPort,
    flow_table,
)
from stratus_api.security_group_wire import (
    Direction,
    NodeRule,
    NodeSecurityGroupSpec,
    Protocol,
)
from stratus_devcloud.nodeservices import NodeServices

STATE_ROOT = Path(os.environ.get("STRATUS_TEST_STATE_ROOT", "/var/lib/stratus-test"))
TOOLS = ("ovs-vsctl", "ovs-ofctl", "ovs-appctl", "ovsdb-server", "ovs-vswitchd", "ip", "busybox",
         "tcpdump")  # fmt: skip
# Conntrack outlives a bridge (the userspace datapath holds one table for every netdev
# bridge, zones and all): each run takes its own VLANs (zones) and subnet, so no connection
# a run before made (or another module's bridge holds) can match.
VLAN_1 = 100 + secrets.randbelow(3900)
VLAN_2 = VLAN_1 + 1
SUBNET = f"10.91.{secrets.randbelow(256)}"
WEB, DEFAULT = "ns/web", "ns/default"

SERVE = """
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"hello"); c.close()
for port in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
    s.settimeout(float(sys.argv[3]))
    print(s.recv(16).decode())
"""
RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(64); print(peer[0], peer[1], data.decode(), flush=True)
except TimeoutError:
    pass
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(sys.argv[5].encode(), (sys.argv[3], int(sys.argv[4])))
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def vsctl(*args: str, check: bool = True) -> str:
    return run("ovs-vsctl", "--timeout=10", *args, check=check).stdout


@dataclass
class Host:
    name: str
    port: str  # the OVS internal port, moved into `netns`
    netns: str
    tag: int
    mac: str
    address: str
    remote: bool = False  # on the far bridge
    processes: list[subprocess.Popen[str]] = field(default_factory=list)  # killed at the end

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.netns, *argv, check=check)

    def pings(self, address: str, tries: int = 3) -> bool:
        """A reachable address answers within 3 tries; an unreachable one gets `tries` (1 s
        each)."""
        for _ in range(tries):
            if self.run("busybox", "ping", "-c1", "-W1", address).returncode == 0:
                return True
        return False

    def never_pings(self, address: str) -> bool:
        return not self.pings(address, tries=1)

    def connects(self, address: str, port: int, timeout: float = 3.0) -> bool:
        """A tcp connection completes and the server's greeting comes back."""
        result = self.run(sys.executable, "-c", CONNECT, address, str(port), str(timeout))
        return result.returncode == 0 and result.stdout.strip() == "hello"

    def listen_udp(self, port: int, seconds: float = 2.0) -> subprocess.Popen[str]:
        """A listener printing "source port payload" per datagram until `seconds` pass
        without one."""
        listener = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", RECEIVE, str(port),
             str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        return listener

    def send_udp(self, source: str, sport: int, address: str, dport: int, text: str) -> None:
        self.run(sys.executable, "-c", SEND, source, str(sport), address, str(dport), text,
                 check=True)  # fmt: skip

    def capture(self, expression: str) -> subprocess.Popen[str]:
        """tcpdump on the host's port, every frame matching `expression` (whatever its
        destination MAC); see `captured`."""
        dump = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tcpdump", "-l", "-n", "-e", "-i", self.port,
             expression],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.processes.append(dump)
        assert dump.stderr is not None and "listening on" in dump.stderr.readline() + (
            dump.stderr.readline()
        )
        return dump


def received(listener: subprocess.Popen[str]) -> list[str]:
    out, _ = listener.communicate(timeout=30)
    return out.splitlines()


def captured(dump: subprocess.Popen[str]) -> list[str]:
    """The frames a capture saw (it is stopped)."""
    time.sleep(0.2)  # let the last frame reach tcpdump
    dump.terminate()
    out, _ = dump.communicate(timeout=30)
    return [line for line in out.splitlines() if line.strip()]


@dataclass
class World:
    """The integration bridge, and a far bridge (the tunnel bridge's stand-in, plain
    switching) linked to it by patch ports, a trunk on both sides."""

    bridge: OvsBridge
    firewall: Firewall
    prefix: str
    services: NodeServices | None = None
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def vswitchd_target(self) -> str | None:
        """Looked up when asked, not when the module started: the ovs-vswitchd found then
        may have been another module's, on its way out (a full run once had none)."""
        return self.services.vswitchd_target if self.services is not None else None

    @property
    def far(self) -> str:
        return f"{self.prefix}x"

    @property
    def trunk(self) -> str:
        return f"{self.prefix}-pi"

    def add(
        self, name: str, tag: int, number: int, *, serve: tuple[int, ...] = (), remote: bool = False
    ) -> Host:
        """A host with address SUBNET.`number` in VLAN `tag`; `remote`: on the far bridge,
        behind the trunk (a guest on another node)."""
        host = Host(
            name=name,
            port=f"{self.prefix}{name}",
            netns=f"{self.prefix}-{name}",
            tag=tag,
            mac=f"52:54:00:91:00:{number:02x}",
            address=f"{SUBNET}.{number}",
            remote=remote,
        )
        self.hosts[name] = host
        bridge = self.far if remote else self.bridge.name
        vsctl("add-port", bridge, host.port, f"tag={tag}", "--", "set", "Interface",
              host.port, "type=internal")  # fmt: skip
        run("ip", "netns", "add", host.netns)
        run("ip", "netns", "exec", host.netns, "sysctl", "-qw",
            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
        run("ip", "link", "set", host.port, "netns", host.netns)
        run("ip", "-n", host.netns, "link", "set", host.port, "address", host.mac, "up")
        run("ip", "-n", host.netns, "link", "set", "lo", "up")
        run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.port)
        if serve:
            server = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, sys.executable, "-c", SERVE,
                 *map(str, serve)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            host.processes.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                process.kill()
                process.wait()
            run("ip", "netns", "delete", host.netns, check=False)
        for bridge in (self.bridge.name, self.far):
            vsctl("--if-exists", "del-br", bridge, check=False)

    def flows(self) -> list[str]:
        out = run("ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", self.bridge.name)
        return [line.strip() for line in out.stdout.splitlines() if "actions=" in line]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and Open vSwitch")
    missing = [t for t in TOOLS if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run hack/install-deps")
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fw-", dir=STATE_ROOT))
    services = NodeServices(root / "node-services")
    prefix = f"fw{secrets.token_hex(3)}"  # 8 characters + a host letter
    bridge = OvsBridge(prefix, "netdev")
    made = World(bridge, Firewall(bridge), prefix, services)
    try:
        services.up(libvirt=False)
        for name in (bridge.name, made.far):
            vsctl("add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev")
        far_end = f"{prefix}-px"
        for name, port, peer in ((bridge.name, made.trunk, far_end),
                                 (made.far, far_end, made.trunk)):  # fmt: skip
            vsctl("add-port", name, port, "--", "set", "Interface", port, "type=patch",
                  f"options:peer={peer}")  # fmt: skip
        made.add("a", VLAN_1, 1, serve=(22, 23))
        made.add("b", VLAN_1, 2, serve=(22, 23))
        made.add("c", VLAN_1, 3)
        made.add("d", VLAN_2, 4)
        made.add("t", VLAN_1, 7, remote=True)
        yield made
    finally:
        made.close()
        services.stop()
        shutil.rmtree(root, ignore_errors=True)


def group(name: str, *rules: NodeRule) -> NodeSecurityGroupSpec:
    return NodeSecurityGroupSpec(
        uid=f"00000000-0000-4000-8000-{secrets.token_hex(6)}", namespace="ns", name=name,
        rules=list(rules),
    )  # fmt: skip


def rule(
    direction: Direction, protocol: Protocol, *remotes: str, port: int | None = None
) -> NodeRule:
    return NodeRule(direction=direction, protocol=protocol, port_min=port, port_max=port,
                    remotes=list(remotes))  # fmt: skip


MEMBERS = (f"{SUBNET}.1/32", f"{SUBNET}.2/32", f"{SUBNET}.4/32")


def groups(*extra_web: NodeRule) -> dict[str, NodeSecurityGroupSpec]:
    return {
        WEB: group("web", rule(Direction.INGRESS, Protocol.TCP, "0.0.0.0/0", port=22),
                   *extra_web),
        DEFAULT: group("default", rule(Direction.INGRESS, Protocol.ANY, *MEMBERS),
                       rule(Direction.EGRESS, Protocol.ANY, "0.0.0.0/0")),
    }  # fmt: skip


async def apply(
    world: World,
    groups_of: dict[str, tuple[str, ...]],
    specs: dict[str, NodeSecurityGroupSpec],
    pending: tuple[PendingPort, ...] = (),
) -> list[GuardedPort]:
    """Apply a table where the hosts named in `groups_of` are guarded, the rest open; the
    guarded ports."""
    ports = await world.firewall.ofports()
    guarded, opens = [], [OpenPort(ports[world.trunk], None)]
    for host in world.hosts.values():
        if host.remote:
            continue
        ofport = ports[host.port]
        if host.name in groups_of:
            guarded.append(GuardedPort(ofport, host.tag, host.mac, host.address,
                                       groups_of[host.name]))  # fmt: skip
        else:
            opens.append(OpenPort(ofport, host.tag))
    await world.firewall.apply(flow_table(guarded, opens, pending, specs))
    return guarded


STANDARD = {"a": (WEB, DEFAULT), "b": (DEFAULT,), "d": (WEB, DEFAULT)}


async def test_rules_allow_tcp_22_and_replies_but_not_the_rest(world: World) -> None:
    await apply(world, STANDARD, groups())
    a, b, c = world.hosts["a"], world.hosts["b"], world.hosts["c"]
    assert c.connects(a.address, 22)  # web: from anywhere, and the reply comes back
    assert b.connects(a.address, 22)
    assert b.connects(a.address, 23)  # default: anything from its members
    assert not c.connects(a.address, 23, timeout=1.0)
    assert c.never_pings(a.address)
    assert a.pings(c.address)  # A's own connection: the replies are let in
    assert b.pings(a.address) and a.pings(b.address)


async def test_a_remote_guest_behind_the_trunk_is_filtered_in_its_vlan(world: World) -> None:
    a, b, t = world.hosts["a"], world.hosts["b"], world.hosts["t"]
    await apply(world, STANDARD, groups())
    assert t.connects(a.address, 22)  # in through the trunk, the VLAN header stripped
    assert not t.connects(a.address, 23, timeout=1.0)
    assert t.never_pings(b.address)
    assert a.pings(t.address)  # out through NORMAL, tagged; the replies come back in


async def test_a_rule_added_live_takes_effect_and_its_removal_stops_new_pings(
    world: World,
) -> None:
    a, c = world.hosts["a"], world.hosts["c"]
    await apply(world, STANDARD, groups())
    ports = await world.firewall.ofports()
    assert c.never_pings(a.address)
    await apply(world, STANDARD, groups(rule(Direction.INGRESS, Protocol.ICMP, "0.0.0.0/0")))
    assert c.pings(a.address)
    await apply(world, STANDARD, groups())
    assert c.never_pings(a.address)  # a new ping: a new echo id, a new connection
    assert await world.firewall.ofports() == ports  # no port was touched


async def test_both_guests_rules_apply_between_guests_on_one_bridge(world: World) -> None:
    a, b = world.hosts["a"], world.hosts["b"]
    # A may send anything (default), B takes tcp/22 only and sends nothing new (web).
    await apply(world, {"a": (WEB, DEFAULT), "b": (WEB,)}, groups())
    assert a.connects(b.address, 22)
    assert not a.connects(b.address, 23, timeout=1.0)
    # Three echo requests with one id are one connection: B refused the first, so the
    # others are not "established" either (A's egress did not commit it alone).
    pinged = a.run("busybox", "ping", "-c", "3", "-i", "0.3", "-W", "1", b.address)
    assert pinged.returncode != 0 and " 0 packets received" in pinged.stdout, pinged.stdout
    assert not b.connects(a.address, 22, timeout=1.0)
    # What B refused is no connection: B cannot "answer" it past its own egress rules.
    a.send_udp(a.address, 5000, b.address, 5353, "query")
    listener = a.listen_udp(5000)
    b.send_udp(b.address, 5353, a.address, 5000, "answer")
    assert received(listener) == []
    # And the other way round: A's egress refuses what B would take.
    await apply(world, {"a": (WEB,), "b": (DEFAULT,)}, groups())
    assert not a.connects(b.address, 22, timeout=1.0)
    assert b.connects(a.address, 22)


async def test_spoofed_addresses_and_dhcp_replies_from_a_guest_are_dropped(world: World) -> None:
    a, c = world.hosts["a"], world.hosts["c"]
    spoofed = f"{SUBNET}.99"
    await apply(world, STANDARD, groups())
    a.run("ip", "addr", "add", f"{spoofed}/32", "dev", a.port, check=True)
    # A knows C's MAC: no ARP in the way, the IPv4 check alone decides.
    a.run("ip", "neigh", "replace", c.address, "lladdr", c.mac, "dev", a.port, "nud",
          "permanent", check=True)  # fmt: skip
    try:
        listener = c.listen_udp(5000)
        a.send_udp(spoofed, 5001, c.address, 5000, "spoofed")
        a.send_udp(a.address, 5001, c.address, 5000, "genuine")
        assert received(listener) == [f"{a.address} 5001 genuine"]

        listener = c.listen_udp(68)
        a.send_udp(a.address, 67, c.address, 68, "offer")  # a DHCP server reply
        a.send_udp(a.address, 5002, c.address, 68, "other")
        assert received(listener) == [f"{a.address} 5002 other"]

        arping = ("busybox", "arping", "-c", "2", "-w", "3")
        assert a.run(*arping, "-I", a.port, "-s", spoofed, c.address).returncode != 0
        assert c.run(*arping, "-I", c.port, spoofed).returncode != 0  # A's answer is dropped
        neighbours = c.run("ip", "neigh", "show", check=True).stdout
        assert not [line for line in neighbours.splitlines()
                    if line.startswith(f"{spoofed} ") and "lladdr" in line]  # fmt: skip
        assert c.run(*arping, "-I", c.port, a.address).returncode == 0
    finally:
        a.run("ip", "addr", "del", f"{spoofed}/32", "dev", a.port)
        a.run("ip", "neigh", "del", c.address, "dev", a.port)


async def test_another_networks_guest_cannot_reach_a_guest_whatever_the_rules(
    world: World,
) -> None:
    a, d = world.hosts["a"], world.hosts["d"]  # D: same subnet, a member of default, VLAN 2
    await apply(world, STANDARD, groups())
    assert not d.connects(a.address, 22, timeout=1.0)
    assert d.never_pings(a.address)
    assert a.never_pings(d.address)


async def test_ports_not_filtered_yet_get_nothing(world: World) -> None:
    a, c = world.hosts["a"], world.hosts["c"]
    mac_e = "52:54:00:91:00:05"
    await apply(world, STANDARD, groups(), pending=(PendingPort(VLAN_1, mac_e),))
    e = world.add("e", VLAN_1, 5)  # plugged after the table: an unknown in_port
    assert e.mac == mac_e
    c.run("ip", "neigh", "replace", e.address, "lladdr", e.mac, "dev", c.port, "nud",
          "permanent", check=True)  # fmt: skip
    try:
        dump = e.capture("icmp")
        assert c.never_pings(e.address)  # unicast to a pending MAC: dropped, not switched
        assert captured(dump) == []
        assert e.never_pings(a.address)  # everything from E is dropped
        await apply(world, {**STANDARD, "e": (WEB, DEFAULT)}, groups())
        assert a.pings(e.address) and e.connects(a.address, 22)
        assert c.never_pings(e.address)
    finally:
        c.run("ip", "neigh", "del", e.address, "dev", c.port)


async def test_replies_to_a_sender_normal_never_saw_are_not_flooded(world: World) -> None:
    a, b = world.hosts["a"], world.hosts["b"]
    f = world.add("f", VLAN_1, 6)  # open; static neighbours only, so it never broadcasts
    for one, other in ((a, f), (f, a)):
        one.run("ip", "neigh", "replace", other.address, "lladdr", other.mac, "dev", one.port,
                "nud", "permanent", check=True)  # fmt: skip
    try:
        await apply(world, STANDARD, groups())
        dump = b.capture(f"ether src {a.mac} or ether src {f.mac}")
        for _ in range(3):
            assert f.connects(a.address, 22)
        # F's frames went straight to A, yet NORMAL learned F's port from them (and dropped
        # the copy it learned from): A's replies went to F alone, none flooded to B.
        assert captured(dump) == []
    finally:
        a.run("ip", "neigh", "del", f.address, "dev", a.port)


async def test_plain_switching_comes_back_when_no_port_is_guarded(world: World) -> None:
    a, c, d = world.hosts["a"], world.hosts["c"], world.hosts["d"]
    await apply(world, STANDARD, groups())
    assert c.never_pings(a.address)
    await apply(world, {}, groups())
    assert world.flows() == ["priority=0 actions=NORMAL"]
    assert c.pings(a.address) and c.connects(a.address, 23)
    assert d.never_pings(a.address)  # the VLANs still part Networks
    assert flow_table([], [OpenPort(1, VLAN_1)], [], groups()) == [NORMAL_ONLY]


def replies(log: Path) -> int:
    return log.read_text().count("bytes from")


async def test_a_removed_rule_cuts_the_connections_it_let_in_and_only_those(
    world: World, tmp_path: Path
) -> None:
    """One ping each (one echo id: one connection): C's was let in by an icmp rule, B's by
    the default group. Removing the icmp rule stops new pings at once, but C's goes on as
    established until the agent cuts it; B's is left be."""
    a, b, c = world.hosts["a"], world.hosts["b"], world.hosts["c"]
    await apply(world, STANDARD, groups(rule(Direction.INGRESS, Protocol.ICMP, "0.0.0.0/0")))
    logs = {name: tmp_path / f"{name}.log" for name in ("b", "c")}
    for host in (b, c):
        with logs[host.name].open("w") as out:
            host.processes.append(subprocess.Popen(
                ["ip", "netns", "exec", host.netns, "busybox", "ping", "-i", "0.2", a.address],
                stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip
    time.sleep(1.5)
    assert replies(logs["c"]) > 0 and replies(logs["b"]) > 0
    guarded = await apply(world, STANDARD, groups())
    assert c.never_pings(a.address)  # a new connection: refused
    before = replies(logs["c"])
    time.sleep(1.0)
    assert replies(logs["c"]) > before  # the old one: established, still let in

    assert await Conntrack(target=world.vswitchd_target).cut(guarded, groups()) >= 1
    time.sleep(0.5)  # an echo in flight may still come back
    cut_at, b_at = replies(logs["c"]), replies(logs["b"])
    time.sleep(1.5)
    assert replies(logs["c"]) == cut_at
    assert replies(logs["b"]) > b_at
    assert (
        await Conntrack(target=world.vswitchd_target).cut(guarded, groups()) == 0
    )  # nothing left to cut
