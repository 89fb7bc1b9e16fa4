"""Segments as plain functions: one Network per VNI, per VLAN of a physical network, per
flat physical network; VNIs given lowest free first, never by hash."""

from __future__ import annotations

import pytest

from stratus_api.v1alpha1.network import NetworkSpec, NetworkType
from stratus_operator.controllers import segments
from stratus_operator.controllers.segments import (
    Segment,
    SegmentLedger,
    SegmentsExhausted,
    requested,
)

SUBNETS = [{"cidr": "10.0.0.0/24"}]


def spec(**fields: object) -> NetworkSpec:
    return NetworkSpec.model_validate({"subnets": SUBNETS, **fields})


def test_what_each_type_asks_for() -> None:
    assert requested(spec()) is None  # an overlay without a VNI gets one
    assert requested(spec(), allocated=7) == Segment(NetworkType.OVERLAY, "", 7)
    vlan = spec(type="vlan", physicalNetwork="physnet1", segmentationId=100)
    assert requested(vlan) == Segment(NetworkType.VLAN, "physnet1", 100)
    assert requested(spec(type="flat", physicalNetwork="physnet1")) == Segment(
        NetworkType.FLAT, "physnet1", 0
    )


def test_vnis_are_given_lowest_free_first_and_kept() -> None:
    book = SegmentLedger()
    assert book.hold("explicit", "ns/x", Segment(NetworkType.OVERLAY, "", 2)) is None
    assert [book.allocate_vni(uid, f"ns/{uid}").id for uid in ("a", "b", "c")] == [1, 3, 4]
    assert book.allocate_vni("a", "ns/a").id == 1  # kept
    book.release("b")
    assert book.allocate_vni("d", "ns/d").id == 5  # after the cursor first
    assert book.of("d") == Segment(NetworkType.OVERLAY, "", 5)


def test_a_segment_held_by_another_network_is_refused_naming_it() -> None:
    book = SegmentLedger()
    vlan = Segment(NetworkType.VLAN, "physnet1", 100)
    assert book.hold("first", "team-a/first", vlan) is None
    assert book.hold("second", "team-b/second", vlan) == "team-a/first"
    # The same VLAN id on another physical network is another segment.
    assert book.hold("second", "team-b/second", Segment(NetworkType.VLAN, "physnet2", 100)) is None
    flat = Segment(NetworkType.FLAT, "physnet1", 0)
    assert book.hold("third", "ns/third", flat) is None
    assert book.hold("fourth", "ns/fourth", flat) == "ns/third"
    book.release("first")
    assert book.hold("fifth", "ns/fifth", vlan) is None


def test_all_vnis_taken_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "VNI_MAX", 3)  # 16,777,215 would take a minute to fill
    book = SegmentLedger()
    for uid in ("a", "b", "c"):
        book.allocate_vni(uid, f"ns/{uid}")
    with pytest.raises(SegmentsExhausted, match="all 3 VNIs are in use"):
        book.allocate_vni("new", "ns/new")


def test_segments_say_what_they_are_and_which_field_to_change() -> None:
    vlan = Segment(NetworkType.VLAN, "physnet1", 100)
    assert (vlan.describe(), vlan.field) == (
        "VLAN 100 on physical network physnet1", "spec.segmentationId"
    )  # fmt: skip
    flat = Segment(NetworkType.FLAT, "physnet1", 0)
    assert flat.field == "spec.physicalNetwork"
