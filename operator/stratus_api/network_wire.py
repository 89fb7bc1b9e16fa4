"""The node network spec: what an agent needs for one Network beyond its guests' NICs.

A guest's NICs (guest.Nic) say which Network each is on; they cannot say which other nodes
host that Network, which changes as guests come and go elsewhere. The operator sends each
node that hosts a Network one NodeNetworkSpec (PUT /v1/networks/{uid}) whenever that changes:
the overlay's peers, with the MAC addresses behind each (Neutron's l2population), so the node
floods broadcast and unknown unicast only to nodes that host the Network and sends known
unicast straight to the right one. DELETE /v1/networks/{uid} tells a node it hosts the
Network no more. PATCH /v1/networks/{uid} sends a NodeNetworkChange instead when only the
names and MACs changed (spec_changes.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from operator import attrgetter
from typing import Annotated

from pydantic import Field, field_validator

from stratus_api.guest import MAC_PATTERN
from stratus_api.naming import UID_PATTERN
from stratus_api.spec_changes import REVISION_PATTERN, applied, between, revision_field
from stratus_api.v1alpha1.base import ApiModel
from stratus_api.v1alpha1.network import VNI_MAX, NetworkType

VXLAN_PORT = 4789  # IANA's
Mac = Annotated[str, Field(pattern=MAC_PATTERN)]


class OverlayPeer(ApiModel):
    """Another node hosting the Network: its tunnel endpoint and its guests' MACs there."""

    endpoint: str = Field(
        description="The node's tunnel endpoint (Hypervisor status), an IPv4 or IPv6 address."
    )
    macs: list[Mac] = Field(
        default_factory=list,
        description="MACs of the Network's NICs on that node: unicast to them goes there only.",
    )

    @field_validator("endpoint")
    @classmethod
    def _an_address(cls, value: str) -> str:
        # Written the one way ipaddress writes it, so equal endpoints compare equal.
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


class DhcpSubnet(ApiModel):
    """A subnet with DHCP on, as this node's DHCP server for the Network serves it."""

    cidr: str
    server_address: str = Field(
        description="This node's DHCP server address in the subnet (the operator reserves one "
        "per node hosting the Network, as Neutron gives each DHCP agent a port)."
    )
    gateway: str | None = None
    dns_servers: list[str] = Field(default_factory=list)
    lease_seconds: int = Field(default=86_400, ge=120)


DNS_DOMAIN = "stratus.internal"  # ICANN's reserved private top-level domain (2024)


def dns_zone(namespace: str) -> str:
    """The domain Instance names are served in: `web` is also `web.NAMESPACE.stratus.internal`."""
    return f"{namespace}.{DNS_DOMAIN}"


class DnsName(ApiModel):
    """An Instance's name and its address on the Network, as the Network's DHCP servers
    answer it in DNS."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    address: str

    @field_validator("address")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


class NodeNetworkSpec(ApiModel):
    uid: str = Field(pattern=UID_PATTERN, description="Network UID.")
    revision: str = revision_field()
    namespace: str
    name: str
    type: NetworkType
    segmentation_id: int | None = Field(
        default=None, ge=1, le=VNI_MAX, description="overlay: the VNI on the wire."
    )
    physical_network: str | None = Field(
        default=None, description="vlan and flat: the physical network (the node's bridge)."
    )
    mtu: int = Field(default=1450, ge=576, le=9000)
    peers: list[OverlayPeer] = Field(
        default_factory=list,
        description="overlay: every other node hosting the Network (none: it stays local).",
    )
    dhcp: list[DhcpSubnet] = Field(
        default_factory=list,
        description="Subnets this node answers DHCP for, with fixed leases for its own guests "
        "(MAC -> address from their NICs) and nothing for unknown MACs.",
    )
    names: list[DnsName] = Field(
        default_factory=list,
        description="The Network's Instances on every node, with their addresses: the node's "
        "DHCP servers answer them in DNS (as NAME and NAME.NAMESPACE.stratus.internal).",
    )


# C-level keys: a change to a list of 10,000 is diffed and applied at C speed.
_name_key: Callable[[DnsName], tuple[str, str]] = attrgetter("name", "address")
_mac_key: Callable[[str], str] = str


class NodeNetworkChange(ApiModel):
    """PATCH /v1/networks/{uid}: the names and peers' MACs that came and went since the
    revision `base`; everything else in the spec is as it was."""

    uid: str = Field(pattern=UID_PATTERN, description="Network UID.")
    base: str = Field(pattern=REVISION_PATTERN, description="The revision this applies to.")
    revision: str = Field(pattern=REVISION_PATTERN, description="The revision it makes.")
    names_added: list[DnsName] = Field(default_factory=list)
    names_removed: list[DnsName] = Field(default_factory=list)
    macs_added: dict[str, list[Mac]] = Field(
        default_factory=dict, description="peer endpoint -> MACs that arrived there."
    )
    macs_removed: dict[str, list[Mac]] = Field(default_factory=dict)

    @classmethod
    def of(cls, old: NodeNetworkSpec, new: NodeNetworkSpec) -> NodeNetworkChange | None:
        """The change from `old` to `new`; None when more than names and MACs differ (the
        peers' endpoints among them): then only the whole spec says it."""
        if _outline(old) != _outline(new):
            return None
        names_added, names_removed = between(old.names, new.names, _name_key)
        change = cls.model_construct(
            uid=new.uid, base=old.revision, revision=new.revision,
            names_added=names_added, names_removed=names_removed, macs_added={},
            macs_removed={},
        )  # fmt: skip
        for was, now in zip(old.peers, new.peers, strict=True):
            added, removed = between(was.macs, now.macs, _mac_key)
            if added:
                change.macs_added[now.endpoint] = added
            if removed:
                change.macs_removed[now.endpoint] = removed
        return change

    def held_by(self, spec: NodeNetworkSpec) -> bool:
        """Whether `spec` is the revision this change applies to."""
        return bool(self.base) and spec.revision == self.base

    @property
    def empty(self) -> bool:
        return not (self.names_added or self.names_removed or self.macs_added
                    or self.macs_removed)  # fmt: skip

    def applied(self, spec: NodeNetworkSpec) -> NodeNetworkSpec:
        """`spec` (of revision `base`) with this change made; MACs of an endpoint that is
        no peer are refused (ValueError). Nothing is validated again but what it brings."""
        endpoints = {peer.endpoint for peer in spec.peers}
        if strangers := (self.macs_added.keys() | self.macs_removed.keys()) - endpoints:
            raise ValueError(f"MACs of {', '.join(sorted(strangers))}, which is no peer")
        peers = [
            peer.model_copy(update={"macs": applied(
                peer.macs, self.macs_added.get(peer.endpoint, ()),
                self.macs_removed.get(peer.endpoint, ()), _mac_key)})
            if peer.endpoint in self.macs_added or peer.endpoint in self.macs_removed
            else peer
            for peer in spec.peers
        ]  # fmt: skip
        names = applied(spec.names, self.names_added, self.names_removed, _name_key)
        return spec.model_copy(update={"revision": self.revision, "names": names, "peers": peers})


def _outline(spec: NodeNetworkSpec) -> NodeNetworkSpec:
    """The spec without its revision, names and peers' MACs."""
    peers = [peer.model_copy(update={"macs": []}) for peer in spec.peers]
    return spec.model_copy(update={"revision": "", "names": [], "peers": peers})
