"""Which image source URLs a cloud fetches from (Glance's web-download filtering).

One policy, applied twice: by the operator before it probes a source and by the agent
before every connection it makes for a download, redirects included, against the address
the host name resolved to. Pure functions: the callers resolve names and connect.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses no image server of a tenant's has any business on: the node itself (loopback),
# link-local (cloud metadata services such as 169.254.169.254), "this host", multicast.
DEFAULT_REFUSED_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "224.0.0.0/4",
    "ff00::/8",
    "::ffff:127.0.0.0/104",
    "::ffff:169.254.0.0/112",
)
DEFAULT_PORTS = {"http": 80, "https": 443}

Endpoint = Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-:\[\]]+:[0-9]{1,5}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class SourcePolicy(BaseModel):
    """Where images may come from. The defaults refuse the node's own addresses and
    link-local ones; `allowed_endpoints` opens exact host:port pairs (the all-in-one's own
    image server on 127.0.0.1) even inside refused networks. `refused_ports` win over
    everything: no image ever comes from the node's own services."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_schemes: tuple[str, ...] = Field(
        default=("http", "https"), description="URL schemes a source may use."
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="Empty: any host that is not refused. Otherwise only these host names or "
        "IP literals (compared lowercase).",
    )
    allowed_ports: tuple[Port, ...] = Field(
        default=(), description="Empty: any port that is not refused. Otherwise only these."
    )
    refused_networks: tuple[str, ...] = Field(
        default=DEFAULT_REFUSED_NETWORKS,
        description="CIDRs no connection may go to, whatever a name resolves to (IPv4-mapped "
        "IPv6 addresses are checked as the IPv4 address they carry).",
    )
    refused_ports: tuple[Port, ...] = Field(
        default=(),
        description="The node's own service ports (agent API, etcd, kube-apiserver, "
        "kubelet, ...): refused on every host, even an allowed endpoint.",
    )
    allowed_endpoints: tuple[Endpoint, ...] = Field(
        default=(),
        description="Exact host:port pairs ([v6]:port) allowed even inside refused networks "
        "and outside allowed_hosts/allowed_ports.",
    )

    @field_validator("allowed_schemes", "allowed_hosts", "allowed_endpoints")
    @classmethod
    def _lowercase(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(value.lower() for value in values)

    @field_validator("refused_networks")
    @classmethod
    def _valid_networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            ipaddress.ip_network(value, strict=False)  # ValueError: a validation error
        return values

    def networks(self) -> list[IPNet]:
        return [ipaddress.ip_network(net, strict=False) for net in self.refused_networks]

    def refusing_ports(self, *ports: int) -> SourcePolicy:
        """This policy with `ports` refused too (the agent adds its own listen port)."""
        extra = tuple(port for port in ports if 0 < port < 65536)
        return self.model_copy(
            update={"refused_ports": tuple(dict.fromkeys(self.refused_ports + extra))}
        )


class SourceRefused(ValueError):
    """The URL, or an address it leads to, is outside the policy; the message says which
    rule, never what a server said."""


def redact(url: str) -> str:
    """The URL for status, events and logs: user:password and the query (where signed URLs
    carry their signature and expiry) become ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if "@" in parts.netloc:
        parts = parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}")
    if parts.query:
        parts = parts._replace(query="***")
    return parts.geturl()


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError as exc:
        raise SourceRefused(f"{redact(parts.geturl())}: invalid port") from exc
    return port if port is not None else DEFAULT_PORTS.get(parts.scheme, 0)


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_url(policy: SourcePolicy, url: str) -> tuple[str, int]:
    """Refuse a URL by scheme, host and port before any name is resolved; return (host,
    port) to connect to. IP literals are checked against the refused networks here."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SourceRefused(f"{redact(url)}: not a URL") from exc
    shown = redact(url)
    if parts.scheme not in policy.allowed_schemes:
        allowed = ", ".join(policy.allowed_schemes)
        raise SourceRefused(f"{shown}: scheme {parts.scheme!r} is not allowed ({allowed})")
    host = (parts.hostname or "").lower()
    if not host:
        raise SourceRefused(f"{shown}: no host")
    port = _port(parts)
    if port in policy.refused_ports:
        raise SourceRefused(f"{shown}: port {port} is one of the node's own service ports")
    if _endpoint(host, port) in policy.allowed_endpoints:
        return host, port
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise SourceRefused(f"{shown}: host {host} is not in the allowed hosts")
    if policy.allowed_ports and port not in policy.allowed_ports:
        raise SourceRefused(f"{shown}: port {port} is not in the allowed ports")
    try:
        literal: IPAddr | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(policy, literal, host, port)
    return host, port


def check_address(policy: SourcePolicy, address: IPAddr, host: str, port: int) -> None:
    """Refuse a resolved address inside a refused network, unless host:port is allowed
    explicitly. Called for every address a name resolves to, at every redirect."""
    if port in policy.refused_ports:
        raise SourceRefused(f"{_endpoint(host, port)}: port {port} is one of the node's own ports")
    if _endpoint(host.lower(), port) in policy.allowed_endpoints:
        return
    if _endpoint(str(address), port) in policy.allowed_endpoints:
        return
    candidates: list[IPAddr] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1: check what it carries against IPv4 networks.
        candidates.append(address.ipv4_mapped)
    for network in policy.networks():
        for candidate in candidates:
            if candidate.version == network.version and candidate in network:
                raise SourceRefused(
                    f"{_endpoint(host, port)}: address {address} is in refused network {network}"
                )
