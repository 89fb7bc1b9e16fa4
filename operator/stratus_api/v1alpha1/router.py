"""Router: joins Networks at their subnets' gateways, and reaches out through an external
Network with SNAT (Neutron's router)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratus_api.v1alpha1.base import (
    DNS_LABEL_MAX,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    PrinterColumn,
    Resource,
    list_map,
)

RESOURCE_NAME_MAX = 253
MAX_ROUTER_NETWORKS = 16


class RouterNetwork(ApiModel):
    """A Network the router joins: it answers on the gateway address of each of the
    Network's subnets that has one."""

    name: str = Field(
        min_length=1, max_length=RESOURCE_NAME_MAX, description="Network in the same namespace."
    )


class ExternalGateway(ApiModel):
    """The router's leg on an external Network: its default route, and SNAT."""

    network: str = Field(
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="A Network with spec.external: true, the way out of the cloud.",
    )
    namespace: str | None = Field(
        default=None,
        max_length=DNS_LABEL_MAX,
        pattern=DNS_LABEL_PATTERN,
        description="The external Network's namespace (an admin's, shared by every tenant). "
        "Unset: the Router's own.",
    )
    snat: bool = Field(
        default=True,
        description="Guests on the joined Networks reach the outside with the router's "
        "external address as their source (SNAT).",
    )


class RouterSpec(ApiModel):
    """What the router joins and where it leads out."""

    networks: list[RouterNetwork] = Field(
        default_factory=list,
        max_length=MAX_ROUTER_NETWORKS,
        description="Networks joined, each at its subnets' gateway addresses; their subnets "
        "must not overlap. Networks without a shared Router cannot reach each other.",
        json_schema_extra=list_map("name"),
    )
    external_gateway: ExternalGateway | None = Field(
        default=None, description="The external Network, for a default route and SNAT."
    )


class RouterInterface(ApiModel):
    """The router's port on one joined Network."""

    network: str = Field(description="The joined Network's name.")
    addresses: list[str] = Field(
        default_factory=list, max_length=16, description="Its addresses, ip/prefixlen."
    )


class RouterStatus(ApiModel):
    """Where the router runs and what it answers on."""

    node: str | None = Field(default=None, description="The Hypervisor it is active on.")
    external_address: str | None = Field(
        default=None, description="Its address on the external Network (the SNAT source)."
    )
    interfaces: list[RouterInterface] = Field(
        default_factory=list,
        max_length=MAX_ROUTER_NETWORKS,
        description="Its port on each joined Network.",
        json_schema_extra=list_map("network"),
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether it routes.",
        json_schema_extra=list_map("type"),
    )


class Router(
    Resource,
    plural="routers",
    short_names=("rt",),
    printer_columns=(
        PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        PrinterColumn("Node", ".status.node"),
        PrinterColumn("External", ".status.externalAddress"),
    ),
):
    """Joins Networks and leads out of the cloud (Neutron's router)."""

    kind: Literal["Router"] = "Router"
    spec: RouterSpec = Field(description="What it joins and where it leads out.")
    status: RouterStatus | None = Field(default=None, description="Where it runs.")
