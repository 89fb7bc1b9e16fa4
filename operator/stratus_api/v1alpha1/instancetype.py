"""InstanceType: a named size for instances (Nova's flavor)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1.base import ApiModel, AtLeast, PrinterColumn, Resource

MIN_MEMORY = "64Mi"
MAX_CPU = 256

Memory = Annotated[ByteQuantity, AtLeast(MIN_MEMORY)]
DiskSize = Annotated[ByteQuantity, AtLeast("1Mi")]


class InstanceTypeSpec(ApiModel):
    """CPU, memory and root disk an Instance of this type gets."""

    cpu: int = Field(ge=1, le=MAX_CPU, description="Virtual CPUs.")
    memory: Memory = Field(
        description=f"Guest memory as a quantity, such as 512Mi or 4Gi (at least {MIN_MEMORY}).",
    )
    disk: DiskSize | None = Field(
        default=None,
        description="Root disk size for instances booting from an image. Unset: the image's "
        "own virtual size.",
    )


class InstanceType(
    Resource,
    plural="instancetypes",
    scope="Cluster",
    short_names=("itype",),
    printer_columns=(
        PrinterColumn("CPU", ".spec.cpu", "integer"),
        PrinterColumn("Memory", ".spec.memory"),
        PrinterColumn("Disk", ".spec.disk"),
    ),
):
    """A named instance size, shared by all namespaces (like a Nova flavor)."""

    kind: Literal["InstanceType"] = "InstanceType"
    spec: InstanceTypeSpec = Field(description="The size an Instance of this type gets.")
