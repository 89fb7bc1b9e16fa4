"""Which image source URLs a cloud fetches from (Glance's web-download filtering).

One policy, applied twice: by the operator before it probes a source and by the agent
before every connection it makes for a download, redirects included, against the address
the host name resolved to. Pure functions: the callers resolve names and connect.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, Field

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


class SourcePolicy(BaseModel):
    """Where images may come from. The defaults refuse the node's own addresses and
    link-local ones; `allowed_endpoints` opens exact host:port pairs (the all-in-one's own
    image server on 127.0.0.1) even inside refused networks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_schemes: tuple[str, ...] = Field(default=("http", "https"))
    # Empty: any host that is not refused. Otherwise only these host names or IP literals.
    allowed_hosts: tuple[str, ...] = ()
    # Empty: any port that is not refused. Otherwise only these.
    allowed_ports: tuple[int, ...] = ()
    refused_networks: tuple[str, ...] = DEFAULT_REFUSED_NETWORKS
    # The node's own service ports (agent API, etcd, kube-apiserver, kubelet, ...).
    refused_ports: tuple[int, ...] = ()
    allowed_endpoints: tuple[Endpoint, ...] = ()

    def networks(self) -> list[IPNet]:
        return [ipaddress.ip_network(net, strict=False) for net in self.refused_networks]


class SourceRefused(ValueError):
    """The URL, or an address it leads to, is outside the policy; the message says which
    rule, never what a server said."""


def redact(url: str) -> str:
    """The URL with any user:password replaced by ***, for status, events and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


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
    if _endpoint(host, port) in policy.allowed_endpoints:
        return host, port
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise SourceRefused(f"{shown}: host {host} is not in the allowed hosts")
    if policy.allowed_ports and port not in policy.allowed_ports:
        raise SourceRefused(f"{shown}: port {port} is not in the allowed ports")
    if port in policy.refused_ports:
        raise SourceRefused(f"{shown}: port {port} is one of the node's own service ports")
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
    if _endpoint(host.lower(), port) in policy.allowed_endpoints:
        return
    if _endpoint(str(address), port) in policy.allowed_endpoints:
        return
    for network in policy.networks():
        if address.version == network.version and address in network:
            raise SourceRefused(
                f"{_endpoint(host, port)}: address {address} is in refused network {network}"
            )
