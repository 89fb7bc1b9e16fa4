"""Image: a bootable disk image fetched into the cloud (Glance's image)."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    PrinterColumn,
    Resource,
    immutable,
    list_map,
)
from stratus_api.v1alpha1.instancetype import DiskSize, Memory

SHA256_PATTERN = r"^[a-f0-9]{64}$"
HTTP_URL_PATTERN = r"^https?://[^\s/$.?#][^\s]*$"


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

    url: str = Field(
        max_length=2048,
        pattern=HTTP_URL_PATTERN,
        description="http:// or https:// address of the image file.",
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
