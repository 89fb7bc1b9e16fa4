"""Image: a bootable disk image fetched into the cloud (Glance's image)."""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from stratus_api.quantity import ByteQuantity
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
)
from stratus_api.v1alpha1.instancetype import DiskSize, Memory

SHA256_PATTERN = r"^[a-f0-9]{64}$"

# URLs are written in explicit ASCII classes that mean the same to the models' regex engine
# and the API server's RE2 (no \s, \S or `.`), and hold only what RFC 3986 allows, so Go's
# net/url and Python agree on the host: no backslash, space or non-ASCII; `%` only as an
# escape; at most one `@`; hosts are names, dotted IPv4 or bracketed IPv6 without a zone.
_PCT = "%[0-9A-Fa-f]{2}"
_SUB = "A-Za-z0-9._~!$&'()*+,;="  # unreserved and sub-delims; each class ends in '-'

URL_HOST = r"([A-Za-z0-9._-]+|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])"
URL_PORT = "(:[0-9]{1,5})?"
URL_PATH = f"([/?#]([{_SUB}:@/?#-]|{_PCT})*)?"
HTTP_URL_PATTERN = f"^https?://(([{_SUB}:-]|{_PCT})*@)?{URL_HOST}{URL_PORT}{URL_PATH}$"
# The host, found the same way in Python and in CEL (the API server's cost estimator prices
# url(self).getHostname() as unbounded, and `find` keeps the size of the string it searches):
# the authority, what follows its last '@', what precedes the port, without brackets.
URL_HOST_STEPS = (r"^https?://[^/?#]*", r"[^@/]*$", r"^(\[[^\]]*\]|[^:]*)", r"[^\[\]]+")
# A host that is not an IP address is a DNS name whose last label starts with a letter, as
# every top-level domain does; that leaves out what resolvers read as numeric IPv4 (127.1,
# 2130706433, 0x7f.0.0.1, 0177.0.0.1, 127.0.0.1.) and would reach the node itself.
HOST_NAME_PATTERN = r"^([A-Za-z0-9_-]+[.])*[A-Za-z][A-Za-z0-9_-]*[.]?$"
_HOST_NAME_RE = re.compile(HOST_NAME_PATTERN.removeprefix("^").removesuffix("$"))

# Image sources admission refuses whatever the cloud's source policy says: "this network",
# link-local (cloud metadata at 169.254.169.254) and multicast. Loopback is left to the
# source policy (stratus_api.sources), which refuses it by default but can open one
# endpoint, as the all-in-one does for its own image server; admission cannot be configured.
# Each lies inside sources.DEFAULT_REFUSED_NETWORKS, which agents and the operator also
# apply to the addresses host names resolve to (admission cannot resolve).
REFUSED_SOURCE_NETWORKS = (
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "::/128",
    "fe80::/10",
    "ff00::/8",
)
URL_HOST_FORM_MESSAGE = (
    "url host must be a DNS name, a dotted-decimal IPv4 address or a bracketed IPv6 "
    "address (not IPv4-mapped)"
)
URL_HOST_REFUSED_MESSAGE = "url must not point at a link-local, unspecified or multicast address"

_HOST = "self" + "".join(f".find(r'{step}')" for step in URL_HOST_STEPS)
URL_HOST_RULES = (
    # `[x].all(h, ...)` names x once (this CEL has no cel.bind).
    Rule(
        f"[{_HOST}].all(h, h.contains(':') ? isIP(h) : "
        f"(isIP(h) || h.matches(r'{HOST_NAME_PATTERN}')))",
        URL_HOST_FORM_MESSAGE,
    ),
    Rule(
        f"[{_HOST}].all(h, !(isIP(h) && {list(REFUSED_SOURCE_NETWORKS)!r}"
        ".exists(n, cidr(n).containsIP(h))))",
        URL_HOST_REFUSED_MESSAGE,
    ),
)
_REFUSED = [ipaddress.ip_network(net) for net in REFUSED_SOURCE_NETWORKS]


def url_host(url: str) -> str:
    """The host of a URL that matches HTTP_URL_PATTERN, brackets removed, as the CEL rules
    find it."""
    host = url
    for step in URL_HOST_STEPS:
        match = re.search(step, host)
        host = match.group(0) if match else ""
    return host


def check_source_url(url: str) -> str:
    """The Python twin of URL_HOST_RULES (the pattern has already matched)."""
    host = url_host(url)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if ":" in host:
        if not isinstance(address, ipaddress.IPv6Address) or address.ipv4_mapped is not None:
            raise ValueError(URL_HOST_FORM_MESSAGE)
    elif address is None and not _HOST_NAME_RE.fullmatch(host):
        raise ValueError(URL_HOST_FORM_MESSAGE)
    if address is not None and any(address in network for network in _REFUSED):
        raise ValueError(URL_HOST_REFUSED_MESSAGE)
    return url


SourceUrl = Annotated[
    str,
    Field(max_length=2048, pattern=HTTP_URL_PATTERN),
    AfterValidator(check_source_url),
    WithRules(*URL_HOST_RULES),
]


class DiskFormat(enum.StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"
    ISO = "iso"


class ImagePhase(enum.StrEnum):
    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    READY = "Ready"
    FAILED = "Failed"


class HttpSource(ApiModel):
    """An image served over HTTP(S)."""

    url: SourceUrl = Field(
        description="http:// or https:// address of the image file. user:password@ is "
        "allowed (status and events show it redacted). The host may not be a link-local, "
        "unspecified or multicast address; the cloud's image source policy also refuses "
        "loopback and names resolving to refused addresses, unless it allows the endpoint.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Expected SHA-256 of the file, 64 lowercase hex digits. When set, a "
        "download that does not match fails the Image and nothing is cached.",
    )


class ImageSource(ApiModel):
    """Where the image comes from."""

    http: HttpSource = Field(description="Download the image from an HTTP(S) server.")


class ImageSpec(ApiModel):
    """What image to import and what it needs to boot."""

    source: ImageSource = Field(
        description="Where the image comes from. Immutable: create a new Image instead.",
        json_schema_extra=immutable("source"),
    )
    format: DiskFormat | None = Field(
        default=None,
        description="Expected disk format. Unset: detected from the file's content.",
    )
    min_disk: DiskSize | None = Field(
        default=None, description="Smallest root disk this image boots from."
    )
    min_memory: Memory | None = Field(
        default=None, description="Least guest memory this image boots with."
    )


class ImageStatus(ApiModel):
    """What the import found."""

    phase: ImagePhase = Field(default=ImagePhase.PENDING, description="Where the import is.")
    format: DiskFormat | None = Field(default=None, description="Detected disk format.")
    virtual_size: ByteQuantity | None = Field(
        default=None, description="Size of the disk the image describes."
    )
    actual_size: ByteQuantity | None = Field(
        default=None, description="Size of the image file itself."
    )
    sha256: str | None = Field(default=None, description="SHA-256 of the downloaded file.")
    progress: int | None = Field(
        default=None, ge=0, le=100, description="Download progress in percent."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether instances can boot from it.",
        json_schema_extra=list_map("type"),
    )


class Image(
    Resource,
    plural="images",
    short_names=("img",),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Format", ".status.format"),
        PrinterColumn("Size", ".status.virtualSize"),
        PrinterColumn("Source", ".spec.source.http.url", priority=1),
    ),
):
    """A disk image that instances and volumes can be created from (Glance's image)."""

    kind: Literal["Image"] = "Image"
    spec: ImageSpec = Field(description="What image to import.")
    status: ImageStatus | None = Field(default=None, description="What the import found.")

    def refused_changes(self, old: Image) -> list[FieldError]:
        if self.spec.source != old.spec.source:
            return [FieldError("spec.source", immutable_message("source"))]
        return []
