"""FloatingIP: an address of an external Network mapped one-to-one onto an Instance's fixed
address (Neutron's floating IP), by the Router that joins the Instance's Network and leads
out through the external one.

A kind of its own, not a field of the Instance's NIC: the address outlives the Instance it
points at (a user moves it from a broken VM to its replacement, and keeps the DNS record
that names it), it is taken from a pool an admin owns, and a user lists and RBACs it on
its own, as Neutron's users do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratus_api.v1alpha1.base import (
    DNS_LABEL_MAX,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    FieldError,
    PrinterColumn,
    Resource,
    immutable,
    immutable_message,
    list_map,
)
from stratus_api.v1alpha1.network import IpText

RESOURCE_NAME_MAX = 253


class FloatingIPSpec(ApiModel):
    """Which external Network the address comes from, and which Instance it leads to."""

    network: str = Field(
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="The external Network (spec.external: true) the address is taken from.",
        json_schema_extra=immutable("network"),
    )
    network_namespace: str | None = Field(
        default=None,
        max_length=DNS_LABEL_MAX,
        pattern=DNS_LABEL_PATTERN,
        description="The external Network's namespace (an admin's, shared by every tenant). "
        "Unset: the FloatingIP's own.",
        json_schema_extra=immutable("networkNamespace"),
    )
    address: IpText | None = Field(
        default=None,
        description="A given IPv4 address of the external Network. Unset: the next free one.",
    )
    instance: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="The Instance in the same namespace the address leads to. Unset: the "
        "address is held, and leads nowhere.",
    )
    nic: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="The Instance's NIC, by the name of its Network. Unset: its first NIC on "
        "a Network that a Router joins and leads out through spec.network.",
    )


class FloatingIPStatus(ApiModel):
    """The address held, and where it leads."""

    address: str | None = Field(default=None, description="The floating address.")
    fixed_address: str | None = Field(
        default=None, description="The Instance's address it maps onto (DNAT in, SNAT out)."
    )
    router: str | None = Field(default=None, description="The Router that maps it.")
    node: str | None = Field(default=None, description="The Hypervisor the Router runs on.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether the address leads to the Instance.",
        json_schema_extra=list_map("type"),
    )


class FloatingIP(
    Resource,
    plural="floatingips",
    short_names=("fip",),
    printer_columns=(
        PrinterColumn("Address", ".status.address"),
        PrinterColumn("Instance", ".spec.instance"),
        PrinterColumn("Fixed", ".status.fixedAddress"),
        PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        PrinterColumn("Router", ".status.router", priority=1),
    ),
):
    """An external address that leads to an Instance (Neutron's floating IP)."""

    kind: Literal["FloatingIP"] = "FloatingIP"
    spec: FloatingIPSpec = Field(description="Where the address comes from and leads to.")
    status: FloatingIPStatus | None = Field(default=None, description="Where it leads.")

    def refused_changes(self, old: FloatingIP) -> list[FieldError]:
        """The twin of the `immutable` rules: the address belongs to its Network's pool."""
        out = []
        if self.spec.network != old.spec.network:
            out.append(FieldError("spec.network", immutable_message("network")))
        namespaces = (self.spec.network_namespace, old.spec.network_namespace)
        if None not in namespaces and namespaces[0] != namespaces[1]:
            out.append(FieldError("spec.networkNamespace", immutable_message("networkNamespace")))
        return out
