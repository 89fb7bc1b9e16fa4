"""Seed ISOs as a guest's cloud-init reads them: checked with real cloud-init and isoinfo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stratus_agent.drivers.seed import nocloud as seed
from stratus_api.guest import CloudInit, Nic

NICS = [
    Nic(
        network="default",
        network_uid="n-1",
        mac="52:54:00:12:34:56",
        address="10.20.0.17",
        prefix_length=24,
        gateway="10.20.0.1",
        dns_servers=["10.20.0.1"],
        mtu=1450,
    ),
    Nic(network="v6", network_uid="n-2", mac="52:54:00:12:34:57", address="fd00::5",
        prefix_length=64, gateway="fd00::1"),
]  # fmt: skip
CLOUD_INIT = CloudInit(
    instance_id="0b7f7c3e-1111-2222-3333-444455556666",
    hostname="demo",
    user_data=b"#!/bin/sh\necho hi\n",
    ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0 user@host"],
)


def test_meta_data_carries_identity_and_keys() -> None:
    meta = yaml.safe_load(seed.meta_data(CLOUD_INIT))
    assert meta == {
        "instance-id": CLOUD_INIT.instance_id,
        "local-hostname": "demo",
        "public-keys": CLOUD_INIT.ssh_keys,
    }


def test_each_key_is_one_meta_data_line() -> None:
    long_key = "ssh-rsa " + "A" * 700 + " a comment with spaces"
    keyed = CLOUD_INIT.model_copy(update={"ssh_keys": [long_key, *CLOUD_INIT.ssh_keys]})
    meta = seed.meta_data(keyed)
    assert f"\n- {long_key}\n" in meta
    assert yaml.safe_load(meta)["public-keys"] == keyed.ssh_keys


def test_no_user_data_is_an_empty_cloud_config() -> None:
    empty = CLOUD_INIT.model_copy(update={"user_data": None})
    assert seed.user_data(empty).startswith(b"#cloud-config")


def net_convert(tmp_path: Path, renderer: str) -> dict[str, str]:
    """The seed's network-config as real cloud-init renders it for a Debian guest."""
    source = tmp_path / "network-config"
    source.write_text(seed.network_config(NICS))
    out = tmp_path / renderer
    subprocess.run(
        ["cloud-init", "devel", "net-convert", "-p", str(source), "-k", "yaml", "-d", str(out),
         "-D", "debian", "-O", renderer],
        check=True, capture_output=True,
    )  # fmt: skip
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="Debian's cloud-init not installed")
def test_the_default_route_is_native_in_every_renderer(tmp_path: Path) -> None:
    """ifupdown gets `gateway` (not a post-up `route add`, which needs net-tools), networkd
    a [Route] Gateway, netplan gatewayN."""
    eni = "\n".join(net_convert(tmp_path, "eni").values())
    assert "    gateway 10.20.0.1\n" in eni and "    gateway fd00::1\n" in eni
    assert "route add" not in eni
    netplan = "\n".join(net_convert(tmp_path, "netplan").values())
    assert "gateway4: 10.20.0.1" in netplan and "gateway6: fd00::1" in netplan


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="Debian's cloud-init not installed")
def test_network_config_renders_with_real_cloud_init(tmp_path: Path) -> None:
    rendered = {Path(name).name: text for name, text in net_convert(tmp_path, "networkd").items()
                if name.endswith(".network")}  # fmt: skip
    first = next(text for name, text in rendered.items() if "eth0" in name)
    assert "Address=10.20.0.17/24" in first and "Gateway=10.20.0.1" in first
    assert "DNS=10.20.0.1" in first
    second = next(text for name, text in rendered.items() if "eth1" in name)
    assert "Address=fd00::5/64" in second and "Gateway=fd00::1" in second
    assert "MACAddress=52:54:00:12:34:56" in first and "MTUBytes=1450" in first


def test_iso_is_labelled_cidata_with_the_three_files(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    files = seed.seed_files(CLOUD_INIT, NICS)
    seed.write_seed_iso(iso, files)
    assert iso.stat().st_mode & 0o077 == 0  # user-data may hold credentials
    assert seed.read_seed_iso(iso) == files
    label = subprocess.run(
        ["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert label.stdout.strip() == "cidata"
    if shutil.which("isoinfo"):
        listing = subprocess.run(
            ["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]
    assert not list(tmp_path.glob(".*tmp"))
