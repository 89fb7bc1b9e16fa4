"""DHCP for the node's guests: one dnsmasq per Network, as Neutron's DHCP agent serves them.

Per Network on this node: a network namespace holding one OVS internal port on the
bridge its guests are on (the integration bridge, or a provider Network's bridge), tagged
with the Network's VLAN there (a flat one's port is untagged) and holding the node's server
address in each subnet; dnsmasq runs in that namespace, bound to that port. It hands out
fixed leases only (static ranges, one reservation per guest NIC): an unknown MAC gets no
answer, so the nodes hosting one overlay Network each answer their own guests side by side.
It also answers DNS for the names of the Network's Instances, every node's (NAME and
NAME.NAMESPACE.stratus.internal), and refuses every other name: it has no way out of its
namespace, and a refusal sends the guest's resolver on to the subnet's own DNS servers,
listed after it.

dnsmasq daemonizes with its pid file under state_dir/dhcp/<Network UID>/, so it outlives an
agent restart: the next ensure adopts it when /proc shows dnsmasq with exactly our arguments
in our namespace, and replaces it otherwise. Reservations and options are files dnsmasq
re-reads on SIGHUP (leases kept, no gap); only a change of its arguments (the subnets)
restarts it. A port deleted and made again needs no restart: dnsmasq follows the interface
by name (tests/integration/agent/test_dhcp_servers.py shows it).

IPv4 only: IPv6 subnets and addresses are left out (no DHCPv6, no router advertisements).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import shutil
import signal
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from stratus_agent import process
from stratus_agent.drivers.network import netns_ports
from stratus_agent.drivers.network.netns_ports import NETNS_DIR
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.guest import MAC_PATTERN
from stratus_api.network_wire import DhcpSubnet, DnsName, dns_zone
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

EXTERNAL_ID = "stratus-dhcp-network"  # on the OVS Interface: the Network it serves
STOP_TIMEOUT = 5.0
_MAC = re.compile(MAC_PATTERN)
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class DhcpHost:
    """A fixed lease: the guest NIC with `mac` gets `address`, and `hostname`'s first label
    as its host name (no DNS domain is served). Checked here, since every field becomes a
    line of dnsmasq's hosts file."""

    mac: str
    address: str
    hostname: str | None = None

    def __post_init__(self) -> None:
        if not _MAC.fullmatch(self.mac):
            raise ValueError(f"DHCP host: {self.mac!r} is not a lower-case MAC address")
        ipaddress.ip_address(self.address)  # ValueError names the bad address
        if self.hostname is not None and not _HOSTNAME.fullmatch(self.hostname):
            raise ValueError(f"DHCP host {self.mac}: {self.hostname!r} is not a host name")


# Names and files: pure functions of (bridge, Network UID).


def port_name(bridge: str, network_uid: str) -> str:
    """The server's OVS port: hashed with the bridge, so two simulated nodes (two bridges on
    one kernel) never share a device name."""
    return netns_ports.hashed_name("dhcp", bridge, network_uid)


def namespace_name(bridge: str, network_uid: str) -> str:
    """Namespace names have no 15-character limit: this one says whose it is, and `sweep`
    reads the Network back from it."""
    return f"dhcp-{bridge}-{network_uid}"


@dataclass(frozen=True)
class ServerFiles:
    """One Network's server files, world-readable: dnsmasq re-reads the hosts and options
    files as nobody (nothing in them is secret), so the agent's state directory must be
    world-traversable, as QEMU already needs it."""

    directory: Path

    @property
    def pid(self) -> Path:
        return self.directory / "dnsmasq.pid"

    @property
    def leases(self) -> Path:
        return self.directory / "leases"

    @property
    def hosts(self) -> Path:
        return self.directory / "hosts"

    @property
    def opts(self) -> Path:
        return self.directory / "opts"

    @property
    def names(self) -> Path:
        return self.directory / "names"

    @property
    def log(self) -> Path:
        return self.directory / "dnsmasq.log"


# dnsmasq's configuration: pure functions of the Network's subnets and hosts.


def ipv4_subnets(subnets: Sequence[DhcpSubnet]) -> list[DhcpSubnet]:
    return [s for s in subnets if ipaddress.ip_network(s.cidr, strict=False).version == 4]


def subnet_tag(index: int) -> str:
    return f"subnet{index}"


def server_addresses(subnets: Sequence[DhcpSubnet]) -> set[str]:
    """The port's addresses, "address/prefix" each; a server address outside its subnet is
    refused (ValueError)."""
    addresses = set()
    for subnet in subnets:
        network = ipaddress.ip_network(subnet.cidr, strict=False)
        address = ipaddress.ip_address(subnet.server_address)
        if address not in network:
            raise ValueError(f"DHCP server address {address} is not in {network}")
        addresses.add(f"{address}/{network.prefixlen}")
    return addresses


def dnsmasq_argv(
    dnsmasq: str, port: str, files: ServerFiles, subnets: Sequence[DhcpSubnet]
) -> list[str]:
    """The whole command line: it is also how a running dnsmasq is recognised as ours and
    current (/proc/PID/cmdline), so everything that needs a restart to change is in it."""
    argv = [
        dnsmasq,
        "--conf-file=/dev/null",  # not the system's /etc/dnsmasq.conf
        "--no-hosts",
        "--no-resolv",  # no upstream: other names are refused, and the guest asks the next
        f"--addn-hosts={files.names}",
        "--domain-needed",
        "--bogus-priv",
        f"--interface={port}",
        "--except-interface=lo",
        "--bind-interfaces",
        f"--pid-file={files.pid}",
        f"--dhcp-leasefile={files.leases}",
        f"--dhcp-hostsfile={files.hosts}",
        f"--dhcp-optsfile={files.opts}",
        f"--log-facility={files.log}",
        "--quiet-dhcp",  # errors and reloads only, not every lease
        # Not --dhcp-authoritative: it would NAK the guests of the Network's other nodes.
    ]
    for index, subnet in enumerate(subnets):
        network = ipaddress.ip_network(subnet.cidr, strict=False)
        argv.append(
            f"--dhcp-range=set:{subnet_tag(index)},{network.network_address},static,"
            f"{network.netmask},{subnet.lease_seconds}"
        )
    return argv


def hosts_file(hosts: Sequence[DhcpHost]) -> str:
    """One reservation a line, MAC,address[,host name], sorted so equal sets give equal
    files; IPv6 addresses left out."""
    lines = []
    for host in hosts:
        if ipaddress.ip_address(host.address).version != 4:
            continue
        name = f",{host.hostname.split('.')[0]}" if host.hostname else ""
        lines.append(f"{host.mac},{host.address}{name}\n")
    return "".join(sorted(set(lines)))


def _zone(namespace: str) -> str:
    """The namespace's DNS zone, checked: it becomes part of dnsmasq's files."""
    zone = dns_zone(namespace)
    if not _HOSTNAME.fullmatch(zone):
        raise ValueError(f"{zone!r} is not a DNS zone")
    return zone


def names_file(names: Sequence[DnsName], namespace: str) -> str:
    """The Instances' names, hosts-file style (address, NAME, NAME.zone), sorted."""
    zone = _zone(namespace)
    lines = {f"{n.address} {n.name} {n.name}.{zone}\n" for n in names}
    return "".join(sorted(lines))


def opts_file(subnets: Sequence[DhcpSubnet], mtu: int, namespace: str) -> str:
    """Options per subnet tag. An option without a value makes dnsmasq send none instead of
    its default (its own address as router), which a subnet without a gateway needs."""
    lines = []
    for index, subnet in enumerate(subnets):
        tag = f"tag:{subnet_tag(index)}"
        router = str(ipaddress.ip_address(subnet.gateway)) if subnet.gateway else ""
        # This server first (it knows the Instances' names), then the subnet's own.
        dns = [str(ipaddress.ip_address(server))
               for server in (subnet.server_address, *subnet.dns_servers)]  # fmt: skip
        lines += [
            ",".join([tag, "option:router", *filter(None, [router])]),
            ",".join([tag, "option:dns-server", *dns]),
            f"{tag},option:domain-search,{_zone(namespace)}",
            f"{tag},option:mtu,{mtu}",
        ]
    return "".join(f"{line}\n" for line in lines)


# Files and processes (blocking: run through asyncio.to_thread).


def _write_if_changed(path: Path, text: str) -> bool:
    """Replace the file whole (dnsmasq never reads half of one); True if it changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.chmod(0o644)
    os.replace(partial, path)
    return True


def _write_config(files: ServerFiles, hosts: str, opts: str, names: str) -> bool:
    files.directory.mkdir(parents=True, exist_ok=True)
    for directory in (files.directory.parent, files.directory):
        directory.chmod(0o755)
    changed = [_write_if_changed(path, text) for path, text in
               ((files.hosts, hosts), (files.opts, opts), (files.names, names))]  # fmt: skip
    return any(changed)


def _cmdline(pid: int) -> list[str] | None:
    """The live (not zombie) process's arguments; None if there is none. Nothing reaps a
    daemonized dnsmasq in some containers, so a killed one can linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def _pid_in(files: ServerFiles) -> int | None:
    try:
        return int(files.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _our_dnsmasq(files: ServerFiles) -> int | None:
    """The pid of the dnsmasq that writes this server's pid file, whatever its config."""
    pid = _pid_in(files)
    argv = _cmdline(pid) if pid else None
    if pid and argv and f"--pid-file={files.pid}" in argv and "dnsmasq" in Path(argv[0]).name:
        return pid
    return None


def _current_dnsmasq(files: ServerFiles, argv: list[str], namespace: str) -> int | None:
    """Our dnsmasq if it runs exactly `argv` inside `namespace` (not in a namespace of the
    same name deleted and made again since)."""
    pid = _pid_in(files)
    if not pid or _cmdline(pid) != argv:
        return None
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
        ours = (NETNS_DIR / namespace).stat()
    except FileNotFoundError:
        return None
    return pid if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino) else None


def _network_dirs(root: Path) -> set[str]:
    try:
        return {p.name for p in root.iterdir() if naming.is_uid(p.name)}
    except FileNotFoundError:
        return set()


class DhcpServers:
    """The DHCP servers of the Networks this node serves, on integration bridge `bridge`."""

    def __init__(
        self, state_dir: Path, bridge: str, vsctl: str = "ovs-vsctl", dnsmasq: str = "dnsmasq"
    ) -> None:
        # Files per bridge: a node serves on its integration bridge and its provider
        # bridges, and each one's sweep must see only its own servers.
        self.state_dir = state_dir
        self.root = state_dir / "dhcp" / bridge
        self.bridge = bridge
        self._vsctl = vsctl
        self._dnsmasq = dnsmasq
        # One change at a time: each is a few short commands, and ensure/remove/sweep of one
        # Network must never interleave.
        self._lock = asyncio.Lock()

    def _files(self, network_uid: str) -> ServerFiles:
        if not naming.is_uid(network_uid):
            raise ValueError(f"{network_uid!r} is not a Network UID")
        return ServerFiles(self.root / network_uid)

    async def ensure(
        self,
        network_uid: str,
        vlan_tag: int | None,
        mtu: int,
        subnets: Sequence[DhcpSubnet],
        hosts: Sequence[DhcpHost],
        names: Sequence[DnsName] = (),
        owner: str = "default",
    ) -> None:
        """Serve the Network's IPv4 subnets with these fixed leases and DNS `names` (of the
        Network's Instances, in the zone of `owner`, its namespace), making or repairing
        whatever is missing; a Network without IPv4 subnets gets no server (removed).
        Invalid input raises ValueError before anything is touched; a failing command
        ProvisioningError(NETWORK_SETUP_FAILED)."""
        files = self._files(network_uid)
        served = ipv4_subnets(subnets)
        if not served:
            await self.remove(network_uid)
            return
        port = port_name(self.bridge, network_uid)
        namespace = namespace_name(self.bridge, network_uid)
        argv = dnsmasq_argv(self._dnsmasq, port, files, served)
        addresses = server_addresses(served)
        hosts_text, opts_text = hosts_file(hosts), opts_file(served, mtu, owner)
        names_text = names_file(names, owner)
        async with self._lock:
            try:
                await netns_ports.ensure_namespace(namespace)
                await self._ensure_port(network_uid, port, namespace, vlan_tag, mtu)
                await netns_ports.ensure_addresses(namespace, port, addresses)
                changed = await asyncio.to_thread(
                    _write_config, files, hosts_text, opts_text, names_text
                )
                pid = await asyncio.to_thread(_current_dnsmasq, files, argv, namespace)
                if pid is not None and changed:
                    pid = self._reload(pid)
                    log.info("network %s: DHCP server reloaded (pid %s, %d hosts)",
                             network_uid, pid, len(hosts))  # fmt: skip
                if pid is None:
                    await self._stop(files)  # one running an older config
                    pid = await self._start(namespace, argv, files)
                    log.info("network %s: DHCP server started (pid %d, %d subnets, %d hosts)",
                             network_uid, pid, len(served), len(hosts))  # fmt: skip
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"DHCP server of Network {network_uid} on {self.bridge}: {exc}",
                ) from exc

    async def remove(self, network_uid: str) -> None:
        """Stop the Network's server and remove its port, namespace and files; nothing if
        there are none. ProvisioningError(NETWORK_SETUP_FAILED) if one cannot be removed."""
        files = self._files(network_uid)
        async with self._lock:
            try:
                await self._remove(network_uid, files)
            except (process.CommandError, OSError) as exc:
                raise ProvisioningError(
                    GuestFailure.NETWORK_SETUP_FAILED,
                    f"DHCP server of Network {network_uid} on {self.bridge}: {exc}",
                ) from exc

    async def sweep(self, keep: Collection[str]) -> list[str]:
        """Remove the servers of every Network not in `keep` (what a crash or a missed
        DELETE left: files, ports on this bridge, namespaces); the UIDs removed. A server that
        cannot be removed is logged and skipped."""
        found = await asyncio.to_thread(_network_dirs, self.root)
        found |= await self._ports_by_network()
        prefix = namespace_name(self.bridge, "")
        found |= {
            name.removeprefix(prefix) for name in await netns_ports.namespaces()
            if name.startswith(prefix) and naming.is_uid(name.removeprefix(prefix))
        }  # fmt: skip
        removed = []
        for network_uid in sorted(found - set(keep)):
            try:
                await self.remove(network_uid)
            except ProvisioningError as exc:
                log.warning("network %s: cannot remove its leftover DHCP server: %s",
                            network_uid, exc)  # fmt: skip
                continue
            log.info("network %s: removed its leftover DHCP server", network_uid)
            removed.append(network_uid)
        return removed

    # The steps.

    async def _ensure_port(
        self, network_uid: str, port: str, namespace: str, vlan_tag: int | None, mtu: int
    ) -> None:
        await netns_ports.ensure_internal_port(
            self._vsctl, self.bridge, port, namespace, vlan_tag=vlan_tag, mtu=mtu,
            external_ids={EXTERNAL_ID: network_uid},
        )  # fmt: skip

    async def _start(self, namespace: str, argv: list[str], files: ServerFiles) -> int:
        # dnsmasq's parent exits once the daemon is ready (or with its error), so this
        # returns with the pid file written.
        await netns_ports.ip("netns", "exec", namespace, *argv)
        pid = await asyncio.to_thread(_pid_in, files)
        if pid is None:
            raise OSError(f"dnsmasq started but wrote no pid to {files.pid}")
        return pid

    @staticmethod
    def _reload(pid: int) -> int | None:
        """dnsmasq re-reads its hosts and options files on SIGHUP; None if it has just
        exited (ensure starts another)."""
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return None
        return pid

    async def _stop(self, files: ServerFiles) -> None:
        pid = await asyncio.to_thread(_our_dnsmasq, files)
        if pid is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        try:
            os.kill(pid, signal.SIGTERM)
            while await asyncio.to_thread(_cmdline, pid) is not None:
                if loop.time() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                await asyncio.sleep(0.05)
        except ProcessLookupError:
            pass  # it exited by itself meanwhile

    async def _remove(self, network_uid: str, files: ServerFiles) -> None:
        await self._stop(files)
        await netns_ports.remove_port(self._vsctl, port_name(self.bridge, network_uid))
        await netns_ports.remove_namespace(namespace_name(self.bridge, network_uid))
        await asyncio.to_thread(shutil.rmtree, files.directory, ignore_errors=True)

    async def _ports_by_network(self) -> set[str]:
        """Networks with a server port on this bridge (named after this bridge)."""
        ports = await netns_ports.ports_with_external_id(self._vsctl, EXTERNAL_ID)
        return {
            ids[EXTERNAL_ID] for name, ids in ports.items()
            if naming.is_uid(ids[EXTERNAL_ID]) and name == port_name(self.bridge, ids[EXTERNAL_ID])
        }  # fmt: skip
