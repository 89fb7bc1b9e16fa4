"""Node specs sent as changes: a change applied to the spec it was made from gives exactly
the spec the operator built, and anything beyond the big lists needs the whole spec."""

from __future__ import annotations

import random
import uuid

import pytest

from stratus_api.network_wire import NodeNetworkChange, NodeNetworkSpec, OverlayPeer
from stratus_api.security_group_wire import (
    NodeRule,
    NodeSecurityGroupChange,
    NodeSecurityGroupSpec,
)
from stratus_api.spec_changes import applied, between

UID = str(uuid.uuid4())


def mac(i: int) -> str:
    return f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"


def network(revision: str, names: list[int], macs: list[int], **extra: object) -> NodeNetworkSpec:
    return NodeNetworkSpec.model_validate({
        "uid": UID, "namespace": "tenant", "name": "net", "type": "overlay",
        "segmentationId": 7, "revision": revision,
        "names": [{"name": f"vm{i}", "address": f"10.0.{i // 250}.{i % 250 + 2}"}
                  for i in sorted(names, key=lambda i: (f"vm{i}", i))],
        "peers": [{"endpoint": "192.0.2.2", "macs": sorted(map(mac, macs))},
                  {"endpoint": "192.0.2.3", "macs": []}],
        **extra,
    })  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_a_network_change_applied_gives_the_new_spec(seed: int) -> None:
    rng = random.Random(seed)
    names, macs = rng.sample(range(400), 150), rng.sample(range(400), 150)
    old = network("a-1", names, macs)
    new = network("a-2", [*names[5:], *range(400, 405)], [*macs[:-5], *range(400, 405)])
    change = NodeNetworkChange.of(old, new)
    assert change is not None and not change.empty
    assert (change.base, change.revision) == ("a-1", "a-2")
    wire = NodeNetworkChange.model_validate_json(change.model_dump_json(by_alias=True))
    assert wire.held_by(old)
    assert wire.applied(old) == new
    # Only what came and went travels: 20 of the 300 names and MACs.
    assert len(change.model_dump_json()) < len(new.model_dump_json()) / 5


def test_a_network_change_needs_the_whole_spec_beyond_names_and_macs() -> None:
    old = network("a-1", [1, 2], [1])
    assert NodeNetworkChange.of(old, network("a-2", [1], [1], mtu=1400)) is None
    moved = network("a-2", [1], [1])
    moved.peers[1] = OverlayPeer(endpoint="192.0.2.9")
    assert NodeNetworkChange.of(old, moved) is None
    same = NodeNetworkChange.of(old, network("a-2", [2, 1], [1]))
    assert same is not None and same.empty


def test_a_change_to_another_revision_or_a_stranger_is_refused() -> None:
    old = network("a-1", [1], [1])
    change = NodeNetworkChange.of(old, network("a-2", [1, 2], [1, 2]))
    assert change is not None
    assert not change.held_by(network("b-7", [1], [1]))
    assert not change.model_copy(update={"base": ""}).held_by(network("", [1], [1]))
    stranger = change.model_copy(update={"macs_added": {"198.51.100.1": ["52:54:00:00:00:09"]}})
    with pytest.raises(ValueError, match=r"198\.51\.100\.1, which is no peer"):
        stranger.applied(old)
    with pytest.raises(ValueError, match="address"):
        NodeNetworkChange.model_validate(
            {
                "uid": UID,
                "base": "a",
                "revision": "b",
                "namesAdded": [{"name": "x", "address": "-"}],
            }
        )


def group(revision: str, members: list[int], cidr: str = "0.0.0.0/0") -> NodeSecurityGroupSpec:
    return NodeSecurityGroupSpec(
        uid=UID, namespace="tenant", name="default", revision=revision,
        rules=[
            NodeRule(direction="ingress", remotes=sorted(f"10.1.{i // 250}.{i % 250}/32"
                                                         for i in members)),
            NodeRule(direction="egress", remotes=[cidr]),
        ],
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_a_group_change_applied_gives_the_new_spec(seed: int) -> None:
    rng = random.Random(seed)
    old = group("a-1", rng.sample(range(1000), 300))
    new = group("a-2", rng.sample(range(1000), 300), cidr="10.0.0.0/8")  # all but a few new
    change = NodeSecurityGroupChange.of(old, new)
    assert change is not None
    assert sorted(change.remotes_added) == [0, 1]
    wire = NodeSecurityGroupChange.model_validate_json(change.model_dump_json(by_alias=True))
    assert wire.applied(old) == new


def test_a_group_change_beyond_remotes_or_its_rules_is_refused() -> None:
    old = group("a-1", [1])
    ported = group("a-2", [1])
    ported.rules[0] = NodeRule(direction="ingress", protocol="tcp", port_min=22, port_max=22)
    assert NodeSecurityGroupChange.of(old, ported) is None
    beyond = NodeSecurityGroupChange(uid=UID, base="a-1", revision="a-2",
                                     remotes_added={5: ["10.9.9.9/32"]})  # fmt: skip
    with pytest.raises(ValueError, match="beyond the 2 rules"):
        beyond.applied(old)
    with pytest.raises(ValueError, match="only IPv4"):
        NodeSecurityGroupChange(uid=UID, base="a", revision="b", remotes_added={0: ["fd00::1/128"]})


def test_a_change_keeps_a_sorted_list_sorted_and_sorts_any_other_whole() -> None:
    kept = ["10.0.0.1/32", "10.0.0.5/32", "10.0.0.9/32"]
    assert applied(kept, ["10.0.0.3/32", "10.0.0.1/32"], ["10.0.0.9/32", "10.0.0.7/32"], str) == [
        "10.0.0.1/32", "10.0.0.3/32", "10.0.0.5/32"]  # fmt: skip
    assert kept == ["10.0.0.1/32", "10.0.0.5/32", "10.0.0.9/32"]  # a new list; this one is kept
    unsorted = ["10.0.0.9/32", "10.0.0.1/32", "10.0.0.5/32", "10.0.0.1/32"]
    assert applied(unsorted, ["10.0.0.3/32"], ["10.0.0.5/32"], str) == [
        "10.0.0.1/32", "10.0.0.3/32", "10.0.0.9/32"]  # fmt: skip
    assert between(kept, kept, str) == ([], [])
    assert between(kept, ["10.0.0.5/32", "10.0.0.2/32"], str) == (
        ["10.0.0.2/32"], ["10.0.0.1/32", "10.0.0.9/32"])  # fmt: skip
