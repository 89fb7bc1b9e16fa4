"""Local VLAN tags: one per Network on the node, lowest free first, kept across restarts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from stratus_agent.drivers.network.local_vlans import LAST, LocalVlans
from stratus_agent.errors import ProvisioningError


def test_each_network_gets_one_tag_lowest_free_first_kept_across_restarts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "network" / "local-vlans.json"
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    vlans = LocalVlans(path)
    assert [vlans.tag_of(a), vlans.tag_of(b), vlans.tag_of(a)] == [1, 2, 1]
    assert vlans.release({1}) == [a]
    assert vlans.tag_of(c) == 1  # freed, given again
    assert LocalVlans(path).tags() == {c: 1, b: 2}  # a restarted agent keeps them


def test_a_damaged_file_is_ignored_entry_by_entry(tmp_path: Path) -> None:
    path = tmp_path / "local-vlans.json"
    good = str(uuid.uuid4())
    path.write_text(json.dumps({good: 7, "../etc": 3, str(uuid.uuid4()): 5000}))
    assert LocalVlans(path).tags() == {good: 7}
    path.write_text("{not json")
    assert LocalVlans(path).tags() == {}


def test_the_4095th_network_on_a_node_is_refused_clearly(tmp_path: Path) -> None:
    vlans = LocalVlans(tmp_path / "local-vlans.json")
    vlans._tags = {str(uuid.uuid4()): tag for tag in range(1, LAST + 1)}
    with pytest.raises(ProvisioningError, match="no free local VLAN tag on this node"):
        vlans.tag_of(str(uuid.uuid4()))
