"""cloud-init NoCloud seed ISOs ("cidata"): meta-data, user-data and network-config v2.

The agent renders these from the guest spec's structured data (hostname, NICs, keys), so the
operator never has to know cloud-init's file formats, and writes the ISO with pycdlib.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import os
from pathlib import Path

import pycdlib
import yaml

from stratus_agent.base import GuestOwner
from stratus_api import naming
from stratus_api.guest import CloudInit, GuestSpec, Nic

log = logging.getLogger(__name__)

VOLUME_ID = "cidata"


def meta_data(cloud_init: CloudInit) -> str:
    data: dict[str, object] = {
        "instance-id": cloud_init.instance_id,
        "local-hostname": cloud_init.hostname,
    }
    if cloud_init.ssh_keys:
        # NoCloud reads keys from meta-data, which keeps user-data entirely the user's.
        data["public-keys"] = list(cloud_init.ssh_keys)
    # One key per line: PyYAML would fold a long key at 80 columns, which YAML parsers undo
    # but line-based readers (the test image's init, a person grepping the seed) do not.
    return yaml.safe_dump(data, sort_keys=False, width=float("inf"))


def user_data(cloud_init: CloudInit) -> bytes:
    """The user's bytes as given (cloud-init takes gzip and MIME multipart as well)."""
    if cloud_init.user_data is None:
        return b"#cloud-config\n{}\n"
    return cloud_init.user_data.get_secret_value()


def network_config(nics: list[Nic]) -> str:
    """network-config version 2, matching each NIC by MAC address."""
    ethernets: dict[str, dict[str, object]] = {}
    for index, nic in enumerate(nics):
        entry: dict[str, object] = {
            "match": {"macaddress": nic.mac},
            "set-name": f"eth{index}",
            "mtu": nic.mtu,
        }
        if nic.address is not None and nic.prefix_length is not None:
            entry["addresses"] = [f"{nic.address}/{nic.prefix_length}"]
            if nic.gateway:
                # gateway4/6, not a default route: cloud-init 22.x refuses `to: default`, and
                # its ENI renderer turns a 0.0.0.0/0 route into `post-up route add` (net-tools,
                # absent from minimal images: Debian 12 guests booted with no default route),
                # while it renders gatewayN natively for ENI, networkd and netplan alike.
                version = ipaddress.ip_address(nic.gateway).version
                entry[f"gateway{version}"] = nic.gateway
            if nic.dns_servers:
                servers: dict[str, list[str]] = {"addresses": list(nic.dns_servers)}
                if nic.dns_search:
                    servers["search"] = list(nic.dns_search)
                entry["nameservers"] = servers
        else:
            entry["dhcp4"] = True
        ethernets[f"nic{index}"] = entry
    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)


def seed_files(cloud_init: CloudInit, nics: list[Nic]) -> dict[str, bytes]:
    return {
        "meta-data": meta_data(cloud_init).encode(),
        "user-data": user_data(cloud_init),
        "network-config": network_config(nics).encode(),
    }


def write_seed_iso(
    path: Path, files: dict[str, bytes], owner: tuple[int, int] | None = None
) -> None:
    """Write an ISO9660 image labelled cidata (with Joliet and Rock Ridge names).

    Written to a temporary file and renamed, so a crash never leaves half an ISO under the
    final name. Mode 0600, owned by `owner` (uid, gid: the guest's own QEMU user) or else
    root, because user-data may hold credentials; ownership is set before the rename, so
    the file is never readable by anyone else under its final name.
    """
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    for number, (name, content) in enumerate(sorted(files.items())):
        iso.add_fp(
            io.BytesIO(content),
            len(content),
            f"/FILE{number}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o600)  # a leftover temporary file keeps its mode through O_TRUNC
        if owner is not None:
            os.fchown(fd, *owner)
        iso.write_fp(out)
    iso.close()
    tmp.replace(path)


def read_seed_iso(path: Path) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (used to check what is on a node)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buffer = io.BytesIO()
            iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
            out[name] = buffer.getvalue()
        return out
    finally:
        iso.close()


class NoCloudSeed:
    """The SeedDrive of real nodes: `<uid>-seed.iso` in the guests' directory, private to
    the guest's own user."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, uid: str) -> Path:
        return self.directory / naming.seed_iso_file(uid)

    async def write(self, spec: GuestSpec, owner: GuestOwner | None) -> str:
        path = self.path(spec.uid)
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(
            write_seed_iso,
            path,
            seed_files(spec.cloud_init, spec.nics),
            (owner.uid, owner.gid) if owner is not None else None,
        )
        return str(path)

    async def remove(self, uid: str) -> None:
        path = self.path(uid)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:  # logged: retrying a delete would not fix it
            log.warning("guest %s: cannot remove %s: %s", uid, path, exc)
