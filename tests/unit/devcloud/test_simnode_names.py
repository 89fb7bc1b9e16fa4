"""Simulated nodes' names: kernel-sized, and distinct between two local clouds."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from stratus_devcloud.simnodes import MAX_NODES, SimNodes


def test_every_device_name_fits_the_kernel_and_clouds_do_not_clash(tmp_path: Path) -> None:
    one, two = SimNodes(tmp_path / "one"), SimNodes(tmp_path / "two")
    assert one.prefix != two.prefix
    for sim in (one, two):
        node = sim.node(MAX_NODES)
        devices = [node.int_port, node.tun_port, sim.underlay_bridge,
                   f"{sim.prefix}u{MAX_NODES}h", f"{sim.prefix}u{MAX_NODES}n"]  # fmt: skip
        assert all(len(name) <= 15 and name.startswith(sim.prefix) for name in devices), devices
        assert ipaddress.ip_address(node.local_ip) in sim.underlay and sim.underlay.prefixlen == 24
    assert one.node(1).local_ip != one.node(2).local_ip


def test_node_indexes_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be 1-254"):
        SimNodes(tmp_path).up(0)
