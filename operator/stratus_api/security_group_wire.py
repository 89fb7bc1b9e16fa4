"""The node security group spec: one SecurityGroup as a node enforces it
(PUT /v1/security-groups/{uid}), sent to every node with a port in the group.

A guest's NICs (guest.Nic.security_groups) name their groups as "namespace/name"; this spec
gives each group's rules, with every remote group already turned into its members' addresses
by the operator, so a node needs nothing else to build its flows. Members come and go: the
operator sends the spec again when they do. A port naming a group whose spec the node does
not hold yet lets nothing through but ARP and DHCP (it fails closed).
DELETE /v1/security-groups/{uid} tells a node that no port of its uses the group any more.
PATCH /v1/security-groups/{uid} sends a NodeSecurityGroupChange instead when only the remote
addresses changed (spec_changes.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from stratus_api.naming import UID_PATTERN
from stratus_api.spec_changes import REVISION_PATTERN, applied, between, revision_field
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


def ipv4_networks(values: list[str]) -> list[str]:
    """`values` as IPv4 networks, written as ipaddress writes them."""
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
        return ipv4_networks(values)

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
    revision: str = revision_field()
    namespace: str
    name: str
    rules: list[NodeRule] = Field(default_factory=list, max_length=MAX_RULES)

    @property
    def key(self) -> str:
        return group_key(self.namespace, self.name)


_remote_key: Callable[[str], str] = str  # C-level: 10,000 remotes diff in a millisecond


class NodeSecurityGroupChange(ApiModel):
    """PATCH /v1/security-groups/{uid}: the remote addresses that came and went, per rule
    (by index), since the revision `base`; everything else is as it was."""

    uid: str = Field(pattern=UID_PATTERN, description="SecurityGroup UID.")
    base: str = Field(pattern=REVISION_PATTERN, description="The revision this applies to.")
    revision: str = Field(pattern=REVISION_PATTERN, description="The revision it makes.")
    remotes_added: dict[int, list[str]] = Field(default_factory=dict)
    remotes_removed: dict[int, list[str]] = Field(default_factory=dict)

    @field_validator("remotes_added", "remotes_removed")
    @classmethod
    def _networks(cls, values: dict[int, list[str]]) -> dict[int, list[str]]:
        return {index: ipv4_networks(remotes) for index, remotes in values.items()}

    @classmethod
    def of(
        cls, old: NodeSecurityGroupSpec, new: NodeSecurityGroupSpec
    ) -> NodeSecurityGroupChange | None:
        """The change from `old` to `new`; None when more than remotes differ."""
        if _outline(old) != _outline(new):
            return None
        change = cls.model_construct(
            uid=new.uid, base=old.revision, revision=new.revision, remotes_added={},
            remotes_removed={},
        )  # fmt: skip
        for index, (was, now) in enumerate(zip(old.rules, new.rules, strict=True)):
            added, removed = between(was.remotes, now.remotes, _remote_key)
            if added:
                change.remotes_added[index] = added
            if removed:
                change.remotes_removed[index] = removed
        return change

    def held_by(self, spec: NodeSecurityGroupSpec) -> bool:
        """Whether `spec` is the revision this change applies to."""
        return bool(self.base) and spec.revision == self.base

    @property
    def empty(self) -> bool:
        return not (self.remotes_added or self.remotes_removed)

    def applied(self, spec: NodeSecurityGroupSpec) -> NodeSecurityGroupSpec:
        """`spec` (of revision `base`) with this change made; a rule index it does not have
        is refused (ValueError)."""
        if any(not 0 <= i < len(spec.rules) for i in (*self.remotes_added, *self.remotes_removed)):
            raise ValueError(f"a rule index is beyond the {len(spec.rules)} rules")
        rules = [
            rule.model_copy(update={"remotes": applied(
                rule.remotes, self.remotes_added.get(index, ()),
                self.remotes_removed.get(index, ()), _remote_key)})
            if index in self.remotes_added or index in self.remotes_removed
            else rule
            for index, rule in enumerate(spec.rules)
        ]  # fmt: skip
        return spec.model_copy(update={"revision": self.revision, "rules": rules})


def _outline(spec: NodeSecurityGroupSpec) -> NodeSecurityGroupSpec:
    """The spec without its revision and remotes."""
    rules = [rule.model_copy(update={"remotes": []}) for rule in spec.rules]
    return spec.model_copy(update={"revision": "", "rules": rules})
