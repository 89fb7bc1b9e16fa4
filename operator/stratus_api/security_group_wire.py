"""The node security group spec: one SecurityGroup as a node enforces it
(PUT /v1/security-groups/{uid}), sent to every node with a port in the group.

A guest's NICs (guest.Nic.security_groups) name their groups as "namespace/name"; this spec
gives each group's rules, with every remote group already turned into its members' addresses
by the operator, so a node needs nothing else to build its flows. Members come and go: the
operator sends the spec again when they do. A port naming a group whose spec the node does
not hold yet lets nothing through but ARP and DHCP (it fails closed).
DELETE /v1/security-groups/{uid} tells a node that no port of its uses the group any more.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from stratus_api.naming import UID_PATTERN
from stratus_api.v1alpha1.base import ApiModel

MAX_RULES = 200
MAX_REMOTES = 65_536  # a remote group's members: every address of a big default group


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ANY = "any"


PORT_PROTOCOLS = (Protocol.TCP, Protocol.UDP)


def group_key(namespace: str, name: str) -> str:
    """How a NIC names a group: "namespace/name"."""
    return f"{namespace}/{name}"


class NodeRule(ApiModel):
    """One rule, resolved: traffic in `direction` with `protocol` to ports `port_min`..
    `port_max` (tcp, udp; None: every port), from (ingress) or to (egress) one of
    `remotes`. A rule whose remote group has no members has no remotes and lets nothing
    through."""

    direction: Direction
    protocol: Protocol = Protocol.ANY
    port_min: int | None = Field(default=None, ge=1, le=65_535)
    port_max: int | None = Field(default=None, ge=1, le=65_535)
    remotes: list[str] = Field(
        default_factory=list,
        max_length=MAX_REMOTES,
        description="IPv4 networks (a.b.c.d/len; a member's address is a /32).",
    )

    @field_validator("remotes")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP network") from None
            if network.version != 4:
                raise ValueError(f"{value!r}: only IPv4 is filtered")
            out.append(str(network))
        return out

    @model_validator(mode="after")
    def _ports_fit(self) -> NodeRule:
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("port_min and port_max go together")
        if self.port_min is not None:
            if self.protocol not in PORT_PROTOCOLS:
                raise ValueError(f"ports apply to tcp and udp only, not {self.protocol}")
            assert self.port_max is not None
            if self.port_max < self.port_min:
                raise ValueError(f"port_max {self.port_max} is below port_min {self.port_min}")
        return self


class NodeSecurityGroupSpec(ApiModel):
    uid: str = Field(pattern=UID_PATTERN, description="SecurityGroup UID.")
    namespace: str
    name: str
    rules: list[NodeRule] = Field(default_factory=list, max_length=MAX_RULES)

    @property
    def key(self) -> str:
        return group_key(self.namespace, self.name)
