"""OVS internal ports living in network namespaces: what the DHCP servers and the routers
both build (Neutron's DHCP and L3 agents do the same).

Each helper is one idempotent step that also repairs drift: a port on the wrong bridge,
retagged, re-made by OVS in the root namespace or holding an address added by hand is put
right by running the step again. Commands run through stratus_agent.process (never
blocking the event loop); they raise process.CommandError, which the callers turn into
their own ProvisioningError.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from stratus_agent import process

NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps named namespaces
IFNAMSIZ = 15  # the kernel's limit on interface names, without the NUL


def hashed_name(prefix: str, *parts: str) -> str:
    """A device name of at most IFNAMSIZ characters: `prefix` plus a hash of `parts`, so
    whatever makes the parts unique (a bridge, a node, UIDs) makes the name unique."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"{prefix}{digest[: IFNAMSIZ - len(prefix)]}"


async def ip(*args: str, check: bool = True) -> process.Output:
    return await process.run("ip", *args, check=check, timeout=30)


async def vsctl(vsctl_cmd: str, *args: str) -> str:
    return (await process.run(vsctl_cmd, "--timeout=10", *args)).stdout


def _namespace_list() -> set[str]:
    try:
        return {path.name for path in NETNS_DIR.iterdir()}
    except FileNotFoundError:
        return set()


async def namespaces() -> set[str]:
    """The named network namespaces (`ip netns list`, read from /run/netns)."""
    return await asyncio.to_thread(_namespace_list)


async def namespace_exists(namespace: str) -> bool:
    return namespace in await namespaces()


async def ensure_namespace(namespace: str) -> None:
    if not await namespace_exists(namespace):
        await ip("netns", "add", namespace)


async def remove_namespace(namespace: str) -> None:
    """Delete it (with whatever devices, routes and firewall rules it holds); nothing if
    there is none."""
    if await namespace_exists(namespace):
        await ip("netns", "delete", namespace)


async def ensure_internal_port(
    vsctl_cmd: str,
    bridge: str,
    port: str,
    namespace: str,
    *,
    vlan_tag: int | None,
    mtu: int,
    external_ids: Mapping[str, str],
    mac: str | None = None,
) -> None:
    """The OVS internal port `port` on `bridge`, tagged (None: untagged, as on a flat
    Network), with `mtu` and `external_ids`, inside `namespace` and up (with `mac` if
    given). Each setting is re-applied, so a port someone retagged is put right; one found
    on another bridge is moved (deleted and made again)."""
    where = await process.run(vsctl_cmd, "--timeout=10", "port-to-br", port, check=False)
    if where.code == 0 and where.stdout.strip() != bridge:
        await vsctl(vsctl_cmd, "--if-exists", "del-port", port)
    tagging = ("set", "Port", port, f"tag={vlan_tag}") if vlan_tag is not None else (
        "clear", "Port", port, "tag")  # fmt: skip
    ids = [f"external_ids:{key}={value}" for key, value in sorted(external_ids.items())]
    await vsctl(
        vsctl_cmd,
        "--may-exist", "add-port", bridge, port,
        "--", "set", "Interface", port, "type=internal", f"mtu_request={mtu}", *ids,
        "--", *tagging,
    )  # fmt: skip
    inside = await ip("-n", namespace, "link", "show", "dev", port, check=False)
    if inside.code != 0:
        # New (or re-made by OVS) in the root namespace: move it in.
        await ip("link", "set", "dev", port, "netns", namespace)
    settings = ("address", mac) if mac is not None else ()
    await ip("-n", namespace, "link", "set", "dev", port, *settings, "mtu", str(mtu), "up")


async def ensure_addresses(namespace: str, port: str, wanted: set[str]) -> set[str]:
    """Exactly the IPv4 addresses `wanted` ("address/prefixlen") on `port`: others, such as
    one added by hand, are removed; those removed."""
    out = (await ip("-n", namespace, "-j", "-4", "addr", "show", "dev", port)).stdout
    present = {
        f"{info['local']}/{info['prefixlen']}"
        for link in json.loads(out or "[]") for info in link.get("addr_info", [])
    }  # fmt: skip
    for address in sorted(present - wanted):
        await ip("-n", namespace, "addr", "del", address, "dev", port)
    for address in sorted(wanted - present):
        await ip("-n", namespace, "addr", "add", address, "dev", port)
    return present - wanted


async def ports_with_external_id(vsctl_cmd: str, key: str) -> dict[str, dict[str, str]]:
    """Every OVS internal interface carrying external_ids:`key`, on any bridge: its name and
    all its external_ids."""
    out = await vsctl(
        vsctl_cmd, "--format=json", "--columns=name,external_ids", "find", "Interface",
        "type=internal",
    )  # fmt: skip
    found = {}
    for name, (_, pairs) in json.loads(out)["data"]:
        ids = dict(pairs)
        if key in ids:
            found[name] = ids
    return found


async def remove_port(vsctl_cmd: str, port: str) -> None:
    await vsctl(vsctl_cmd, "--if-exists", "del-port", port)
