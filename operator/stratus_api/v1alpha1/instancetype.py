"""InstanceType: a named size for instances (Nova's flavor)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from stratus_api.quantity import ByteQuantity, ByteRange
from stratus_api.v1alpha1.base import ApiModel, PrinterColumn, Resource

MIN_MEMORY = "64Mi"
# 16Ti: a guest must fit on one node after the host's reserve, and the largest x86 hosts
# hold a few tens of TiB; more than 16Ti in one guest is a typo (1e18, 1Pi), not a plan.
MAX_MEMORY = "16Ti"
MIN_DISK = "1Mi"
# 1Pi: far above any disk a node or a Ceph/LVM pool here holds, and the largest size whose
# whole-number check the API server can do exactly (see stratus_api.quantity).
MAX_DISK = "1Pi"
MAX_CPU = 256

# One rule per kind of byte field, the same in the models and in the CRD.
Memory = Annotated[ByteQuantity, ByteRange(MIN_MEMORY, MAX_MEMORY)]
DiskSize = Annotated[ByteQuantity, ByteRange(MIN_DISK, MAX_DISK)]


class InstanceTypeSpec(ApiModel):
    """CPU, memory and root disk an Instance of this type gets."""

    cpu: int = Field(ge=1, le=MAX_CPU, description="Virtual CPUs.")
    memory: Memory = Field(
        description=f"Guest memory as a quantity, such as 512Mi or 4Gi ({MIN_MEMORY} to "
        f"{MAX_MEMORY}).",
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
