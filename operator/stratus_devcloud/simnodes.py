"""Several simulated nodes on one machine, each with its own VXLAN tunnel endpoint, for the
overlay's tests and `stratus dev up --nodes N`.

Node K gets a network namespace holding its own ovsdb-server and ovs-vswitchd (userspace
datapath). Userspace tunnelling routes the outer packet with the route table of the
namespace its vswitchd runs in: with several nodes' addresses in one namespace every peer is
a local route and encapsulation fails, so each node's tunnels live in a vswitchd of its own,
as on a real node. In it, bridge br-phy's internal port carries the node's underlay address
and a veth joins br-phy to a Linux bridge in the host namespace that every simulated node
shares (the underlay). A second veth is the node's link between its integration bridge,
on the host's default Open vSwitch where libvirt plugs guests, and its tunnel bridge, which
the agent makes in the node's vswitchd (agent config network.tunnel: ovsdb, rundir, link).

Names come from a short digest of the state directory plus K, all 15 characters at most,
so two local clouds on one machine never clash; `down` removes everything with that prefix.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stratus_devcloud import processes
from stratus_devcloud.nodeservices import OVS_SCHEMA, NodeServiceError, tool, wait_for_daemons
from stratus_devcloud.processes import Daemon

PHYSICAL_BRIDGE = "br-phy"
MAX_NODES = 254  # one /24 of underlay addresses


@dataclass(frozen=True)
class SimNode:
    """One simulated node, as its agent's network.tunnel config needs it."""

    index: int
    netns: str
    ovsdb: str  # "unix:/path/db.sock" of the node's own Open vSwitch
    rundir: Path  # its vswitchd's OVS_RUNDIR (BRIDGE.mgmt sockets)
    local_ip: str  # the node's underlay address: its tunnel endpoint
    int_port: str  # link end in the host namespace: goes on the integration bridge
    tun_port: str  # link end in the node's namespace: goes on the tunnel bridge

    @property
    def vswitchd_ctl(self) -> Path:
        """ovs-appctl -t target of the node's vswitchd."""
        return self.rundir / "ovs-vswitchd.ctl"


class SimNodes:
    """The simulated nodes of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()
        self.prefix = f"sn{digest[:6]}"  # 8 characters; every name below starts with it
        self.directory = state_dir / "simnodes"
        self.run_dir = self.directory / "run"
        self.log_dir = self.directory / "logs"
        # 10.240.0.0/12, one /24 picked by the digest: private, and unlikely to be routed here.
        self.underlay = ipaddress.IPv4Network(
            f"10.{240 + int(digest[6], 16)}.{int(digest[7:9], 16)}.0/24"
        )

    @property
    def underlay_bridge(self) -> str:
        return f"{self.prefix}u"

    def netns(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def up(self, index: int) -> SimNode:
        """Make node `index` (1-254) unless it is up; idempotent."""
        if not 1 <= index <= MAX_NODES:
            raise ValueError(f"simulated node index {index}: must be 1-{MAX_NODES}")
        node = self.node(index)
        self._ensure_underlay_bridge()
        if node.netns not in _netns_names():
            _ip("netns", "add", node.netns)
        _ip("-n", node.netns, "link", "set", "lo", "up")
        self._start_ovs(node)
        vsctl = (tool("ovs-vsctl"), f"--db={node.ovsdb}", "--timeout=10")
        _run(*vsctl, "--may-exist", "add-br", PHYSICAL_BRIDGE,
             "--", "set", "Bridge", PHYSICAL_BRIDGE, "datapath_type=netdev")  # fmt: skip
        prefix_len = self.underlay.prefixlen
        _ip("-n", node.netns, "addr", "replace", f"{node.local_ip}/{prefix_len}",
            "dev", PHYSICAL_BRIDGE)  # fmt: skip
        _ip("-n", node.netns, "link", "set", PHYSICAL_BRIDGE, "up")
        host_end, node_end = f"{self.prefix}u{index}h", f"{self.prefix}u{index}n"
        self._veth(host_end, node_end, node.netns)
        _ip("link", "set", host_end, "master", self.underlay_bridge)
        _run(*vsctl, "--may-exist", "add-port", PHYSICAL_BRIDGE, node_end)
        self._veth(node.int_port, node.tun_port, node.netns)
        return node

    def down(self) -> list[str]:
        """Remove every simulated node of this state directory and the underlay: daemons,
        namespaces, devices, files; what was removed."""
        removed = [f"{name} (stopped)" for name in processes.stop_all(self.run_dir).stopped]
        for name in _netns_names():
            if name.startswith(f"{self.prefix}-"):
                _ip("netns", "del", name, check=False)
                removed.append(f"netns {name}")
        for name in _links():
            if name.startswith(self.prefix):
                _ip("link", "del", name, check=False)
                removed.append(f"link {name}")
        shutil.rmtree(self.directory, ignore_errors=True)
        return removed

    def node(self, index: int) -> SimNode:
        """Node `index` as it is named and addressed (made or not)."""
        home = self.directory / str(index)
        return SimNode(
            index=index,
            netns=self.netns(index),
            ovsdb=f"unix:{home / 'db.sock'}",
            rundir=home / "run",
            local_ip=str(self.underlay.network_address + index),
            int_port=f"{self.prefix}l{index}i",
            tun_port=f"{self.prefix}l{index}t",
        )

    def _ensure_underlay_bridge(self) -> None:
        if self.underlay_bridge not in _links():
            _ip("link", "add", self.underlay_bridge, "type", "bridge")
        _ip("link", "set", self.underlay_bridge, "up")

    def _veth(self, host_end: str, node_end: str, netns: str) -> None:
        """A veth pair, one end in the host namespace and one in the node's, both up."""
        if host_end not in _links():
            _ip("link", "add", host_end, "type", "veth", "peer", "name", node_end, "netns", netns)
        _ip("link", "set", host_end, "up")
        _ip("-n", netns, "link", "set", node_end, "up")

    def _start_ovs(self, node: SimNode) -> None:
        home = node.rundir.parent
        node.rundir.mkdir(parents=True, exist_ok=True)
        database = home / "conf.db"
        if not database.exists():
            _run(tool("ovsdb-tool"), "create", str(database), str(OVS_SCHEMA))
        in_netns = (tool("ip"), "netns", "exec", node.netns)
        ovsdb_server, vswitchd = tool("ovsdb-server"), tool("ovs-vswitchd")
        socket = node.ovsdb.removeprefix("unix:")
        ovsdb = Daemon(
            f"node{node.index}-ovsdb-server",
            (*in_netns, ovsdb_server, str(database), f"--remote=punix:{socket}",
             f"--pidfile={node.rundir / 'ovsdb-server.pid'}",
             f"--unixctl={node.rundir / 'ovsdb-server.ctl'}"),
            self.run_dir, self.log_dir, becomes=(ovsdb_server,),
        )  # fmt: skip
        switch = Daemon(
            f"node{node.index}-ovs-vswitchd",
            (*in_netns, vswitchd, node.ovsdb,
             f"--pidfile={node.rundir / 'ovs-vswitchd.pid'}", f"--unixctl={node.vswitchd_ctl}"),
            self.run_dir, self.log_dir, becomes=(vswitchd,),
        )  # fmt: skip
        # Its own OVS_RUNDIR: the bridges' mgmt sockets land there, not in the host's.
        env = {**os.environ, "OVS_RUNDIR": str(node.rundir), "OVS_DBDIR": str(home)}
        ovsdb.start(env)
        ready = [tool("ovs-vsctl"), f"--db={node.ovsdb}", "--timeout=2", "--no-wait", "init"]
        wait_for_daemons("ovsdb-server", ready, [ovsdb])
        switch.start(env)
        wait_for_daemons(
            "ovs-vswitchd",
            [tool("ovs-appctl"), "-t", str(node.vswitchd_ctl), "version"],
            [ovsdb, switch],
        )


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise NodeServiceError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(tool("ip"), *args, check=check)


def _netns_names() -> list[str]:
    # "NAME" or "NAME (id: N)" per line.
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    """Device names in the host namespace ("NAME@PEER" shows a veth's peer)."""
    out = _ip("-o", "link", "show").stdout
    return [line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if line]
