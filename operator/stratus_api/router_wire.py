"""The node router spec: one Router as its active node builds it (PUT /v1/routers/{uid}).

The node already holds a node network spec (network_wire.py) of every Network the router
joins, and of its external Network: they say where each Network's frames are on the node
(the integration bridge in its local VLAN, or a provider bridge). This spec adds what only
the router has: its port's MAC and addresses on each of them, its default route, SNAT and
its floating addresses.
DELETE /v1/routers/{uid} removes it from the node.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from stratus_api.guest import MAC_PATTERN
from stratus_api.naming import UID_PATTERN
from stratus_api.v1alpha1.base import ApiModel

MAX_PORTS = 16
MAX_FLOATING = 1024
Mac = Annotated[str, Field(pattern=MAC_PATTERN)]


def _interface(value: str) -> str:
    """`ip/prefixlen` with the address inside its prefix, written the one way ipaddress
    writes it (10.1.0.1/24)."""
    try:
        found = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an address with its prefix length") from None
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length")
    return str(found)


class RouterPortSpec(ApiModel):
    """The router's port on one Network."""

    network: str = Field(pattern=UID_PATTERN, description="Network UID.")
    mac: Mac
    addresses: list[str] = Field(
        min_length=1, max_length=16, description="ip/prefixlen: the subnets' gateways."
    )

    @field_validator("addresses")
    @classmethod
    def _interfaces(cls, values: list[str]) -> list[str]:
        return [_interface(v) for v in values]


class ExternalPortSpec(RouterPortSpec):
    """The router's port on its external Network."""

    gateway: str | None = Field(
        default=None, description="Next hop of the default route: the external subnet's."
    )
    snat: bool = Field(default=True, description="SNAT the joined subnets to `addresses[0]`.")

    @field_validator("gateway")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None


class FloatingAddressSpec(ApiModel):
    """An external address the router maps one-to-one onto a fixed address of a joined
    subnet: DNAT in, SNAT out."""

    address: str = Field(description="The floating IPv4 address, in the external subnet.")
    fixed: str = Field(description="The Instance's IPv4 address.")

    @field_validator("address", "fixed")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None


class NodeRouterSpec(ApiModel):
    uid: str = Field(pattern=UID_PATTERN, description="Router UID.")
    namespace: str
    name: str
    generation: int = Field(default=0, ge=0)
    ports: list[RouterPortSpec] = Field(default_factory=list, max_length=MAX_PORTS)
    external: ExternalPortSpec | None = None
    floating: list[FloatingAddressSpec] = Field(
        default_factory=list,
        max_length=MAX_FLOATING,
        description="Floating addresses, on the external port; only with `external`.",
    )

    @model_validator(mode="after")
    def _floating_needs_external(self) -> NodeRouterSpec:
        if self.floating and self.external is None:
            raise ValueError("floating addresses need an external port")
        addresses = [f.address for f in self.floating]
        fixed = [f.fixed for f in self.floating]
        if len(set(addresses)) != len(addresses) or len(set(fixed)) != len(fixed):
            raise ValueError("a floating or fixed address is mapped twice")
        return self
