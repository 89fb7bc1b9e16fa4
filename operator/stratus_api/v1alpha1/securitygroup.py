"""SecurityGroup: stateful rules filtering the traffic of the NICs that name the group
(Neutron's security group), enforced by each node with Open vSwitch conntrack flows.

A NIC names its groups in Instance.spec.networks[].securityGroups; a NIC that names none is
in its namespace's group `default`, which the operator makes when it is first needed (deny
ingress except from the group's own members, allow egress), as Neutron makes one per
project. Replies to allowed traffic pass both ways; nothing else does. Every NIC in a group
also sends only from its own MAC and addresses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from stratus_api.security_group_wire import PORT_PROTOCOLS, Direction, Protocol
from stratus_api.v1alpha1.base import (
    DNS_LABEL_MAX,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    FieldError,
    PrinterColumn,
    Resource,
    Rule,
    list_map,
    rules,
)
from stratus_api.v1alpha1.network import CidrText

RESOURCE_NAME_MAX = 253
MAX_RULES = 100
DEFAULT_GROUP = "default"
PORTS_MESSAGE = "port and endPort apply to tcp and udp only"


class RemoteGroup(ApiModel):
    """Another group (or this one): its members' addresses are the rule's remote end."""

    name: str = Field(min_length=1, max_length=RESOURCE_NAME_MAX, description="Its name.")
    namespace: str | None = Field(
        default=None,
        max_length=DNS_LABEL_MAX,
        pattern=DNS_LABEL_PATTERN,
        description="Its namespace, which must be the rule's own (groups are a namespace's "
        "business). Unset: the rule's own.",
    )


class SecurityGroupRule(ApiModel):
    """Traffic a NIC of the group may send (egress) or receive (ingress) when it starts a
    connection; replies to it pass too."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule(
                "!has(self.port) || self.protocol in ['tcp', 'udp']",
                PORTS_MESSAGE,
                field_path=".port",
            ),
            Rule("!has(self.endPort) || has(self.port)", "endPort needs port", ".endPort"),
            Rule(
                "!has(self.endPort) || !has(self.port) || self.endPort >= self.port",
                "endPort must not be below port",
                field_path=".endPort",
            ),
            Rule(
                "!has(self.remoteCIDR) || !isCIDR(self.remoteCIDR) || "
                "cidr(self.remoteCIDR).ip().family() == 4",
                "only IPv4 is filtered yet",
                field_path=".remoteCIDR",
            ),
            Rule(
                "!(has(self.remoteCIDR) && has(self.remoteGroup))",
                "remoteCIDR and remoteGroup are exclusive: one remote end per rule",
                field_path=".remoteGroup",
            ),
        )
    )

    direction: Direction = Field(description="ingress: to the NIC; egress: from it.")
    protocol: Protocol = Field(default=Protocol.ANY, description="tcp, udp, icmp or any.")
    port: int | None = Field(
        default=None, ge=1, le=65_535, description="tcp and udp: the (first) port. Unset: all."
    )
    end_port: int | None = Field(
        default=None, ge=1, le=65_535, description="tcp and udp: the last port of a range."
    )
    remote_cidr: CidrText | None = Field(
        default=None,
        validation_alias="remoteCIDR",
        serialization_alias="remoteCIDR",
        description="IPv4 network of the other end. Unset (and no remoteGroup): anywhere.",
    )
    remote_group: RemoteGroup | None = Field(
        default=None, description="The other end is a NIC of this group."
    )
    description: str | None = Field(default=None, max_length=255, description="What it is for.")

    @model_validator(mode="after")
    def _fits(self) -> SecurityGroupRule:
        if self.port is not None and self.protocol not in PORT_PROTOCOLS:
            raise FieldError("port", PORTS_MESSAGE)
        if self.end_port is not None:
            if self.port is None:
                raise FieldError("endPort", "endPort needs port")
            if self.end_port < self.port:
                raise FieldError("endPort", "endPort must not be below port")
        if self.remote_cidr is not None and self.remote_group is not None:
            raise FieldError(
                "remoteGroup", "remoteCIDR and remoteGroup are exclusive: one remote end per rule"
            )
        if self.remote_cidr is not None and ":" in self.remote_cidr:
            raise FieldError("remoteCIDR", "only IPv4 is filtered yet")
        return self


class SecurityGroupSpec(ApiModel):
    rules: list[SecurityGroupRule] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="What the group's NICs may receive and send; none: nothing but replies "
        "to nothing, ARP and DHCP. Changes apply to running guests within seconds.",
    )
    description: str | None = Field(default=None, max_length=255, description="What it is for.")


class SecurityGroupStatus(ApiModel):
    # Counts, not a list of the NICs: a namespace's default group may hold thousands, and
    # a list would be rewritten (and sent to every watcher) each time one joins.
    port_count: int = Field(default=0, description="How many NICs the group applies to.")
    node_count: int = Field(default=0, description="On how many nodes they are.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready: every rule resolved and told to the nodes of its ports.",
        json_schema_extra=list_map("type"),
    )


class SecurityGroup(
    Resource,
    plural="securitygroups",
    short_names=("sg", "secgroup"),
    printer_columns=(
        PrinterColumn("Ports", ".status.portCount", "integer"),
        PrinterColumn("Nodes", ".status.nodeCount", "integer"),
        PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
    ),
):
    """Stateful traffic rules for the NICs that name the group (Neutron's security group)."""

    kind: Literal["SecurityGroup"] = "SecurityGroup"
    spec: SecurityGroupSpec = Field(description="The group's rules.")
    status: SecurityGroupStatus | None = Field(default=None, description="Where it applies.")
