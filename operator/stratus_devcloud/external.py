"""The local cloud's external network, on the host: what devstack's br-ex is.

One OVS bridge per local cloud, on the host's Open vSwitch (netdev datapath, like the
integration bridges), whose own LOCAL port holds the host's gateway address. Every node's
agent maps the physical network `external` to it; simulated nodes' integration bridges sit
on the host's Open vSwitch too, so they all share this one bridge: one L2 segment, as nodes
cabled to one external switch. Routers' external gateways and floating IPs go there, and
the host reaches their addresses directly (a connected route).

Names and addresses are per state directory, so two local clouds on one machine never
fight over them:
- the bridge is "stratusx-" plus 6 hex digits of the cloud's digest (15 characters, Linux's
  limit; the "x" keeps it apart from the integration bridges, "stratus-"/"stratusK-");
- the cloud of the default state directory gets devstack's 172.24.4.1/24, any other one
  a /24 of 172.24.5.0-172.24.255.0 picked by its digest (as simnodes.py picks underlays).
  Should that range already be on another device of this machine (another cloud picked
  the same /24, or a docker network covers it), `up` refuses and names the device: two
  connected routes to one prefix would send the host's packets to either.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

from stratus_devcloud.controlplane import default_state_dir
from stratus_devcloud.nodeservices import NodeServiceError, tool

PHYSICAL_NETWORK = "external"
BRIDGE_PREFIX = "stratusx-"  # plus 6 hex digits: 15 characters
DEFAULT_GATEWAY = ipaddress.IPv4Interface("172.24.4.1/24")  # devstack's br-ex
DEVICE_TIMEOUT_SECONDS = 10.0


class ExternalNetworkError(NodeServiceError):
    """The external bridge could not be made, or its range is taken."""


def bridge_name(digest: str) -> str:
    return BRIDGE_PREFIX + digest[:6]


def gateway_for(state_dir: Path, digest: str) -> ipaddress.IPv4Interface:
    """The host's address on the cloud's external network (see the module's docstring)."""
    if state_dir.resolve() == default_state_dir().resolve():
        return DEFAULT_GATEWAY
    third = 5 + int(digest[6:10], 16) % 251  # 5..255: never the default cloud's 4
    return ipaddress.IPv4Interface(f"172.24.{third}.1/24")


def ensure(bridge: str, gateway: ipaddress.IPv4Interface) -> None:
    """Make the bridge unless it exists, with `gateway` on its LOCAL port (and no other
    IPv4 address), link up; idempotent. ExternalNetworkError when another device holds an
    address in the gateway's range."""
    taken = holders(gateway.network, besides=bridge)
    if taken:
        raise ExternalNetworkError(
            f"external network {gateway.network}: already on this machine ({', '.join(taken)}); "
            f"another local cloud's external bridge ({BRIDGE_PREFIX}*)? Bring that one down, or "
            "use another --state-dir (each state directory gets its own range)"
        )
    _run(tool("ovs-vsctl"), "--timeout=10", "--may-exist", "add-br", bridge,
         "--", "set", "Bridge", bridge, "datapath_type=netdev")  # fmt: skip
    # A netdev bridge's LOCAL port is a tap ovs-vswitchd opens: wait until it is there.
    deadline = time.monotonic() + DEVICE_TIMEOUT_SECONDS
    while not _link_exists(bridge):
        if time.monotonic() > deadline:
            raise ExternalNetworkError(f"bridge {bridge}: no network device after add-br")
        time.sleep(0.1)
    for stale in _addresses().get(bridge, []):
        if stale != gateway:
            _run(tool("ip"), "addr", "del", str(stale), "dev", bridge)
    _run(tool("ip"), "addr", "replace", str(gateway), "dev", bridge)
    _run(tool("ip"), "link", "set", bridge, "up")


def remove(bridge: str) -> None:
    """Remove the bridge, if there; its address goes with its LOCAL port."""
    _run(tool("ovs-vsctl"), "--timeout=10", "--if-exists", "del-br", bridge, check=False)


def holders(network: ipaddress.IPv4Network, besides: str) -> list[str]:
    """Each IPv4 address, as "DEVICE (ADDRESS)", on a device other than `besides` whose
    network overlaps `network`."""
    return [
        f"{device} ({address})"
        for device, addresses in _addresses().items()
        if device != besides
        for address in addresses
        if address.network.overlaps(network)
    ]


def addresses_of(device: str) -> list[ipaddress.IPv4Interface]:
    return _addresses().get(device, [])


def _addresses() -> dict[str, list[ipaddress.IPv4Interface]]:
    """Every IPv4 address of the host's namespace, by device."""
    found: dict[str, list[ipaddress.IPv4Interface]] = {}
    result = _run(tool("ip"), "-o", "-4", "addr", "show")
    # "3: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\ ..." per address.
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet":
            found.setdefault(fields[1], []).append(ipaddress.IPv4Interface(fields[3]))
    return found


def _link_exists(device: str) -> bool:
    return _run(tool("ip"), "link", "show", "dev", device, check=False).returncode == 0


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise ExternalNetworkError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result
