"""VolumeSnapshot: a Volume's data at one moment, to make new Volumes from (Cinder's
snapshot)."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    FieldError,
    PrinterColumn,
    Resource,
    immutable,
    immutable_message,
    list_map,
)

RESOURCE_NAME_MAX = 253


class SnapshotPhase(enum.StrEnum):
    PENDING = "Pending"  # its Volume is not there or not ready to be copied yet
    CREATING = "Creating"
    READY = "Ready"
    DELETING = "Deleting"
    ERROR = "Error"


class VolumeSnapshotSpec(ApiModel):
    """Which Volume to take the snapshot of."""

    volume: str = Field(
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of a Volume in the same namespace. Immutable: a snapshot is of one "
        "Volume at one moment. Restore it by creating a Volume with spec.source.snapshot.",
        json_schema_extra=immutable("volume"),
    )


class VolumeSnapshotStatus(ApiModel):
    """Where the snapshot's data is."""

    phase: SnapshotPhase = Field(default=SnapshotPhase.PENDING, description="Lifecycle phase.")
    size_bytes: int | None = Field(
        default=None, ge=0, description="Size of the Volume when the snapshot was taken."
    )
    node: str | None = Field(
        default=None, description="Hypervisor holding the data, for node-local backends."
    )
    location: str | None = Field(default=None, description="Backend location of the data.")
    progress: int | None = Field(
        default=None, ge=0, le=100, description="Copy progress in percent while creating."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether Volumes can be made from it.",
        json_schema_extra=list_map("type"),
    )


class VolumeSnapshot(
    Resource,
    plural="volumesnapshots",
    # Not "vs": the CSI external-snapshotter's VolumeSnapshot has it.
    short_names=("vsnap",),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Volume", ".spec.volume"),
        PrinterColumn("Size", ".status.sizeBytes", type="integer"),
    ),
):
    """A Volume's data at one moment (Cinder's snapshot). A Volume cannot be deleted while it
    has snapshots."""

    kind: Literal["VolumeSnapshot"] = "VolumeSnapshot"
    spec: VolumeSnapshotSpec = Field(description="The Volume to take it of.")
    status: VolumeSnapshotStatus | None = Field(default=None, description="Where it is.")

    def refused_changes(self, old: VolumeSnapshot) -> list[FieldError]:
        """The twin of the transition rule."""
        if self.spec.volume != old.spec.volume:
            return [FieldError("spec.volume", immutable_message("volume"))]
        return []
