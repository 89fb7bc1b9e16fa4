"""Segments: which Network holds each VXLAN VNI, each VLAN id of a physical network, and
each physical network's flat segment. Plain code; the caller holds runtime.decisions.

VNIs are given lowest free first after a cursor (O(1) amortised with 10,000 Networks) and
never by hash, so two Networks never share one. The ledger is rebuilt from the Networks'
status on start, oldest first, so a restart keeps every Network's segment.
"""

from __future__ import annotations

from dataclasses import dataclass

from stratus_api.v1alpha1.network import VNI_MAX, NetworkSpec, NetworkType


@dataclass(frozen=True)
class Segment:
    type: NetworkType
    physical_network: str  # "" for overlay
    id: int  # the VNI or VLAN id; 0 for flat

    def describe(self) -> str:
        if self.type is NetworkType.OVERLAY:
            return f"VNI {self.id}"
        if self.type is NetworkType.VLAN:
            return f"VLAN {self.id} on physical network {self.physical_network}"
        return f"the flat segment of physical network {self.physical_network}"

    @property
    def field(self) -> str:
        """The spec field the user changes to pick another."""
        return "spec.physicalNetwork" if self.type is NetworkType.FLAT else "spec.segmentationId"


def requested(spec: NetworkSpec, allocated: int | None = None) -> Segment | None:
    """The segment the spec asks for (or, for an overlay without one, `allocated`, the one
    its status says it had); None: an overlay Network gets one allocated."""
    if spec.type is NetworkType.FLAT:
        return Segment(NetworkType.FLAT, spec.physical_network or "", 0)
    segment = spec.segmentation_id or allocated
    if segment is None:
        return None
    return Segment(spec.type, spec.physical_network or "", segment)


class SegmentsExhausted(Exception):
    """Every VNI is held."""


class SegmentLedger:
    def __init__(self) -> None:
        self._holders: dict[Segment, tuple[str, str]] = {}  # -> (Network UID, "ns/name")
        self._held: dict[str, Segment] = {}
        self._cursor = 1

    def of(self, uid: str) -> Segment | None:
        return self._held.get(uid)

    def hold(self, uid: str, name: str, segment: Segment) -> str | None:
        """Give `segment` to the Network `uid` (named `name`) unless another holds it; that
        other's name if so. A Network holds one segment: a new one replaces its old one."""
        holder = self._holders.get(segment)
        if holder is not None and holder[0] != uid:
            return holder[1]
        self.release(uid)
        self._holders[segment] = (uid, name)
        self._held[uid] = segment
        return None

    def allocate_vni(self, uid: str, name: str) -> Segment:
        """The lowest free VNI from the cursor on, wrapping once; SegmentsExhausted if none."""
        held = self._held.get(uid)
        if held is not None and held.type is NetworkType.OVERLAY:
            return held
        for step in range(VNI_MAX):
            vni = (self._cursor - 1 + step) % VNI_MAX + 1
            segment = Segment(NetworkType.OVERLAY, "", vni)
            if segment not in self._holders:
                self._cursor = vni % VNI_MAX + 1
                self.hold(uid, name, segment)
                return segment
        raise SegmentsExhausted(f"all {VNI_MAX} VNIs are in use")

    def release(self, uid: str) -> None:
        segment = self._held.pop(uid, None)
        if segment is not None and self._holders.get(segment, ("",))[0] == uid:
            del self._holders[segment]
