"""Network: an L2 segment with its IP subnets (Neutron's network + subnet)."""

from __future__ import annotations

import enum
import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    FieldError,
    PrinterColumn,
    Resource,
    Rule,
    WithRules,
    immutable,
    immutable_message,
    list_map,
    rules,
)

VLAN_MAX = 4094
VNI_MAX = 16_777_215
UNDERLAY_MTU = 1500
EXTERNAL_MESSAGE = (
    "an external Network is a provider network: type vlan or flat, on the physical network "
    "that leads out"
)
OVERLAY_MTU = UNDERLAY_MTU - 50  # VXLAN over IPv4: outer Ethernet, IP, UDP, VXLAN headers
MAX_SUBNETS = 8
MAX_POOLS = 16
MAX_DNS_SERVERS = 4
# A physical network's name, as the agents' config maps it to a bridge (Neutron's physnet).
PHYSNET_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
PHYSNET_MESSAGE = "physicalNetwork is required for types vlan and flat, and unset for overlay"
VLAN_ID_MESSAGE = "segmentationId (the VLAN id) is required for type vlan"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetworkType(enum.StrEnum):
    OVERLAY = "overlay"
    VLAN = "vlan"
    FLAT = "flat"


def parse_cidr(text: str) -> IPNetwork:
    """A CIDR in canonical form (host bits zero), or ValueError saying what is wrong."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR such as 10.0.0.0/24") from exc
    if "/" not in text or str(network) != text:
        raise ValueError(f"{text!r} is not a canonical CIDR: write {network}")
    return network


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address") from exc


CIDR_RULE = Rule(
    "isCIDR(self) && cidr(self).masked() == cidr(self)",
    "must be a canonical CIDR such as 10.0.0.0/24 (host bits zero)",
)
IP_RULE = Rule("isIP(self)", "must be an IP address")


def _check_cidr(text: str) -> str:
    parse_cidr(text)
    return text


def _check_ip(text: str) -> str:
    parse_ip(text)
    return text


# Strings checked by CEL in the API server and by the same rule in Python.
CidrText = Annotated[str, Field(max_length=43), AfterValidator(_check_cidr), WithRules(CIDR_RULE)]
IpText = Annotated[str, Field(max_length=39), AfterValidator(_check_ip), WithRules(IP_RULE)]


BROADCAST_GATEWAY_MESSAGE = "gateway must not be the broadcast address of cidr"


def overlap_free(cidrs: str, field: str, what: str) -> Rule:
    """CEL: no two CIDRs of the list expression `cidrs` overlap (for CIDRs: containment)."""
    return Rule(
        f"!has(self.{field}) || !{cidrs}.all(a, isCIDR(a)) || {cidrs}.all(a, {cidrs}.filter(b, "
        f"cidr(a).containsCIDR(b) || cidr(b).containsCIDR(a)).size() == 1)",
        f"{what} must not overlap",
        field_path=f".{field}",
    )


class Subnet(ApiModel):
    """An IP range on the network, with the addresses instances get from it."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule(
                "!has(self.gateway) || !isIP(self.gateway) || !isCIDR(self.cidr) || "
                "(cidr(self.cidr).containsIP(self.gateway) && "
                # `!(a == b)`, not `a != b`: the API server's cost estimator prices `!=` on
                # IPs as unbounded and refuses the CRD.
                "!(cidr(self.cidr).ip() == ip(self.gateway)))",
                "gateway must be a host address inside cidr",
                field_path=".gateway",
            ),
            Rule(
                # CEL has no IP arithmetic: the gateway's four decimal octets make its number
                # n, and n is the broadcast address of a /p when n + 1 is a multiple of
                # 2^(32 - p). (isIP only takes dotted decimal without leading zeros.)
                "!has(self.gateway) || !isIP(self.gateway) || !isCIDR(self.cidr) || "
                "!(cidr(self.cidr).ip().family() == 4 && cidr(self.cidr).containsIP(self.gateway)"
                " && cidr(self.cidr).prefixLength() < 31 && [self.gateway.split('.')].all(o, "
                "(int(o[0]) * 16777216 + int(o[1]) * 65536 + int(o[2]) * 256 + int(o[3]) + 1) % "
                f"{[2**bits for bits in range(33)]}[32 - cidr(self.cidr).prefixLength()] == 0))",
                BROADCAST_GATEWAY_MESSAGE,
                field_path=".gateway",
            ),
            Rule(
                "!has(self.allocationPools) || !isCIDR(self.cidr) || "
                "self.allocationPools.all(p, !isCIDR(p) || cidr(self.cidr).containsCIDR(p))",
                "every allocation pool must lie inside cidr",
                field_path=".allocationPools",
            ),
            overlap_free("self.allocationPools", "allocationPools", "allocation pools"),
        )
    )

    cidr: CidrText = Field(
        description="The subnet in canonical CIDR form, such as 10.0.0.0/24 or fd00::/64."
    )
    gateway: IpText | None = Field(
        default=None,
        description="Default gateway given to instances; a host address inside cidr, neither "
        "its network address nor (IPv4) its broadcast address. Unset: instances get no "
        "default route.",
    )
    allocation_pools: list[CidrText] | None = Field(
        default=None,
        max_length=MAX_POOLS,
        description="CIDRs inside cidr that instance addresses come from, not overlapping. "
        "Unset: the whole subnet. The network address, the broadcast address and the gateway "
        "are never handed out.",
    )
    dns_servers: list[IpText] | None = Field(
        default=None,
        max_length=MAX_DNS_SERVERS,
        description="DNS servers given to instances.",
    )
    dhcp: bool = Field(
        default=True,
        description="Every node hosting the network answers DHCP for its own instances "
        "with their fixed addresses (IPv4), from an address of the subnet's pools (the "
        "highest free one) per node; turn it off where the physical network has a DHCP "
        "server of its own. Instances get the same addresses from their seed either way.",
    )

    @model_validator(mode="after")
    def _inside_cidr(self) -> Subnet:
        network = self.network
        if self.gateway is not None:
            gateway = ipaddress.ip_address(self.gateway)
            if gateway not in network or gateway == network.network_address:
                raise FieldError("gateway", "gateway must be a host address inside cidr")
            ipv4 = isinstance(network, ipaddress.IPv4Network) and network.prefixlen < 31
            if ipv4 and gateway == network.broadcast_address:
                raise FieldError("gateway", BROADCAST_GATEWAY_MESSAGE)
        pools = [parse_cidr(pool) for pool in self.allocation_pools or []]
        for pool in pools:
            if pool.version != network.version or not pool.subnet_of(network):  # type: ignore[arg-type]
                raise FieldError("allocationPools", "every allocation pool must lie inside cidr")
        for index, pool in enumerate(pools):
            if any(pool.overlaps(other) for other in pools[index + 1 :]):
                raise FieldError("allocationPools", "allocation pools must not overlap")
        return self

    @property
    def network(self) -> IPNetwork:
        return parse_cidr(self.cidr)


class NetworkSpec(ApiModel):
    """How the segment is built and which addresses it carries."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule(
                "!has(self.segmentationId) || (self.type == 'vlan' ? "
                f"self.segmentationId <= {VLAN_MAX} : self.type == 'overlay')",
                f"segmentationId is a VLAN id (1-{VLAN_MAX}) for type vlan, a VNI "
                f"(1-{VNI_MAX}) for type overlay, and must be unset for type flat",
                field_path=".segmentationId",
            ),
            Rule(
                "(self.type == 'overlay') != has(self.physicalNetwork)",
                PHYSNET_MESSAGE,
                field_path=".physicalNetwork",
            ),
            Rule(
                "self.type != 'vlan' || has(self.segmentationId)",
                VLAN_ID_MESSAGE,
                field_path=".segmentationId",
            ),
            overlap_free("self.subnets.map(s, s.cidr)", "subnets", "subnets"),
            Rule(
                "!self.external || self.type != 'overlay'",
                EXTERNAL_MESSAGE,
                field_path=".external",
            ),
        )
    )

    type: NetworkType = Field(
        default=NetworkType.OVERLAY,
        description="overlay (VXLAN between nodes), vlan (tagged on the provider bridge) or "
        "flat (untagged). Immutable.",
        json_schema_extra=immutable("type"),
    )
    segmentation_id: int | None = Field(
        default=None,
        ge=1,
        le=VNI_MAX,
        description="VLAN id or VXLAN VNI. Unset: the operator allocates one. Immutable.",
        json_schema_extra=immutable("segmentationId"),
    )
    physical_network: str | None = Field(
        default=None,
        max_length=63,
        pattern=PHYSNET_PATTERN,
        description="vlan and flat: the physical network, which each node's agent maps to a "
        "bridge (network.physical_networks). Immutable.",
        json_schema_extra=immutable("physicalNetwork"),
    )
    mtu: int | None = Field(
        default=None,
        ge=576,
        le=9000,
        description="MTU given to instance NICs. Unset: 1450 for overlay, 1500 otherwise.",
    )
    external: bool = Field(
        default=False,
        description="The way out of the cloud: Routers of every namespace may name it as "
        "their external gateway (Neutron's router:external). A vlan or flat Network.",
    )
    subnets: list[Subnet] = Field(
        min_length=1,
        max_length=MAX_SUBNETS,
        description="IP subnets on this network, not overlapping.",
        json_schema_extra=list_map("cidr"),
    )

    def effective_mtu(self) -> int:
        """The MTU guests get: the spec's, else room for VXLAN's 50 bytes on a 1500-byte
        underlay for overlay, the underlay's own otherwise."""
        return self.mtu or (OVERLAY_MTU if self.type is NetworkType.OVERLAY else UNDERLAY_MTU)

    @model_validator(mode="after")
    def _segment_and_subnets(self) -> NetworkSpec:
        vlan_too_big = self.type is NetworkType.VLAN and (self.segmentation_id or 0) > VLAN_MAX
        if self.segmentation_id is not None and (self.type is NetworkType.FLAT or vlan_too_big):
            raise FieldError(
                "segmentationId",
                f"segmentationId is a VLAN id (1-{VLAN_MAX}) for type vlan, a VNI "
                f"(1-{VNI_MAX}) for type overlay, and must be unset for type flat",
            )
        if (self.type is NetworkType.OVERLAY) != (self.physical_network is None):
            raise FieldError("physicalNetwork", PHYSNET_MESSAGE)
        if self.type is NetworkType.VLAN and self.segmentation_id is None:
            raise FieldError("segmentationId", VLAN_ID_MESSAGE)
        if self.external and self.type is NetworkType.OVERLAY:
            raise FieldError("external", EXTERNAL_MESSAGE)
        networks = [subnet.network for subnet in self.subnets]
        for index, network in enumerate(networks):
            if any(network.overlaps(other) for other in networks[index + 1 :]):
                raise FieldError("subnets", "subnets must not overlap")
        return self


class DhcpServer(ApiModel):
    """A node's DHCP server on the network, and its address in each subnet with DHCP on."""

    node: str
    addresses: list[str] = Field(default_factory=list, max_length=MAX_SUBNETS)


class NetworkStatus(ApiModel):
    """What the operator allocated for the network."""

    segmentation_id: int | None = Field(default=None, description="VLAN id or VNI in use.")
    dhcp_servers: list[DhcpServer] = Field(
        default_factory=list,
        max_length=1024,
        description="The nodes hosting the network that answer DHCP on it, with their "
        "addresses (taken from the subnets' pools).",
        json_schema_extra=list_map("node"),
    )
    allocated: int | None = Field(
        default=None,
        ge=0,
        description="Addresses in use: instances' and the nodes' DHCP servers'.",
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether instances can attach.",
        json_schema_extra=list_map("type"),
    )


class Network(
    Resource,
    plural="networks",
    short_names=("net",),
    printer_columns=(
        PrinterColumn("Type", ".spec.type"),
        PrinterColumn("CIDR", ".spec.subnets[0].cidr"),
        PrinterColumn("Segment", ".status.segmentationId", "integer"),
    ),
):
    """An L2 segment and its subnets that instances attach to (Neutron network + subnet)."""

    kind: Literal["Network"] = "Network"
    spec: NetworkSpec = Field(description="How the segment is built, which addresses it has.")
    status: NetworkStatus | None = Field(default=None, description="What was allocated.")

    def refused_changes(self, old: Network) -> list[FieldError]:
        """The twin of the `immutable` rules, which run only where a field is set before
        and after (setting segmentationId later passes)."""
        out = []
        if self.spec.type != old.spec.type:
            out.append(FieldError("spec.type", immutable_message("type")))
        segments = (self.spec.segmentation_id, old.spec.segmentation_id)
        if None not in segments and segments[0] != segments[1]:
            out.append(FieldError("spec.segmentationId", immutable_message("segmentationId")))
        physnets = (self.spec.physical_network, old.spec.physical_network)
        if None not in physnets and physnets[0] != physnets[1]:
            out.append(FieldError("spec.physicalNetwork", immutable_message("physicalNetwork")))
        return out


def check_fixed_ip(spec: NetworkSpec, address: str) -> str | None:
    """Why `address` cannot be an instance's fixed IP on this network, or None if it can.

    Lives here rather than in the Instance schema because it needs the Network: the API
    server cannot check it, so the operator does, with this function.
    """
    try:
        ip = parse_ip(address)
    except ValueError as exc:
        return str(exc)
    subnet = next((s for s in spec.subnets if ip in s.network), None)
    if subnet is None:
        cidrs = ", ".join(s.cidr for s in spec.subnets)
        return f"{address} is outside the network's subnets ({cidrs})"
    network = subnet.network
    reserved = {network.network_address: "the network address"}
    if network.version == 4 and network.prefixlen < 31:
        reserved[network.broadcast_address] = "the broadcast address"
    if subnet.gateway is not None:
        reserved[ipaddress.ip_address(subnet.gateway)] = "the gateway"
    if ip in reserved:
        return f"{address} is {reserved[ip]} of {subnet.cidr}"
    # As in Neutron, a fixed IP may lie outside the allocation pools: they only bound the
    # addresses handed out automatically.
    return None
