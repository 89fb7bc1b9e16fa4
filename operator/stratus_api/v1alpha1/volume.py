"""Volume: a block device that outlives instances (Cinder's volume)."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    FieldError,
    NodeSelector,
    PrinterColumn,
    Resource,
    Rule,
    immutable,
    immutable_message,
    list_map,
    rules,
)
from stratus_api.v1alpha1.instancetype import DiskSize

RESOURCE_NAME_MAX = 253
SHRINK_MESSAGE = "size can grow but never shrink"
ONE_SOURCE = "set at most one of image, volume or snapshot"
CEPH_POOL_WITHOUT_CEPH = "cephPool applies only to backend ceph"
SHAREABLE_WITHOUT_CEPH = (
    "shareable applies only to backend ceph (a raw image every node reaches; qcow2 files "
    "and block devices belong to one guest's user)"
)
# attachedTo of a shareable Volume names every Instance using it, comma-separated.
ATTACHED_TO_MAX = 4096


class VolumeBackend(enum.StrEnum):
    FILE = "file"
    CEPH = "ceph"
    LVM = "lvm"


class VolumePhase(enum.StrEnum):
    PENDING = "Pending"  # not placed yet: waiting for a node, a source or a first consumer
    CREATING = "Creating"
    AVAILABLE = "Available"
    IN_USE = "InUse"
    EXTENDING = "Extending"
    DELETING = "Deleting"
    ERROR = "Error"


# Backends whose data lives on one node: the Volume binds to it, its Instances run there.
NODE_LOCAL = frozenset({VolumeBackend.FILE, VolumeBackend.LVM})
# Backends that copy a volume at one instant (an RBD or thin LVM snapshot): crash-consistent
# while a guest writes, as a power cut would leave the disk, so a guest may keep using it.
ATOMIC_COPIES = frozenset({VolumeBackend.CEPH, VolumeBackend.LVM})


class VolumeSource(ApiModel):
    """What the volume starts with. Neither field set: a blank volume."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule(
                "[has(self.image), has(self.volume), has(self.snapshot)].filter(x, x).size() <= 1",
                ONE_SOURCE,
            )
        )
    )

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of an Image in the same namespace to copy in.",
    )
    volume: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of a Volume in the same namespace to clone.",
    )
    snapshot: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of a VolumeSnapshot in the same namespace to restore.",
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> VolumeSource:
        if sum(x is not None for x in (self.image, self.volume, self.snapshot)) > 1:
            raise FieldError("", ONE_SOURCE)
        return self


class VolumeSpec(ApiModel):
    """Size, backend and initial content of a volume."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            # backend has a default, which the API server sets before the rules run.
            Rule("!has(self.cephPool) || self.backend == 'ceph'", CEPH_POOL_WITHOUT_CEPH,
                 field_path=".cephPool"),
            Rule("!has(self.shareable) || !self.shareable || self.backend == 'ceph'",
                 SHAREABLE_WITHOUT_CEPH, field_path=".shareable"),
        )
    )  # fmt: skip

    size: DiskSize = Field(
        description="Size as a quantity, such as 10Gi. It can grow but never shrink.",
        json_schema_extra=rules(
            Rule(
                "quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0",
                SHRINK_MESSAGE,
            )
        ),
    )
    backend: VolumeBackend = Field(
        default=VolumeBackend.FILE,
        description="Where the data lives: file (qcow2 on the node), ceph (RBD) or lvm. Immutable.",
        json_schema_extra=immutable("backend"),
    )
    source: VolumeSource | None = Field(
        default=None,
        description="Initial content. Unset: blank. Immutable.",
        json_schema_extra=immutable("source"),
    )
    ceph_pool: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="ceph: the CephPool to make the volume in (unset: the one named "
        "'default'). Immutable.",
        json_schema_extra=immutable("cephPool"),
    )
    shareable: bool = Field(
        default=False,
        description="Attach to several Instances at once (Cinder's multiattach), for a "
        "cluster filesystem in the guests; ceph only. Immutable.",
        json_schema_extra=immutable("shareable"),
    )
    node_selector: NodeSelector | None = Field(
        default=None,
        description="Node-local backends (file, lvm): labels of the Hypervisor to make the "
        "volume on, at once. Unset: it is made on the node of the first Instance that uses "
        "it. Ignored by ceph, which every node reaches.",
    )

    @model_validator(mode="after")
    def _ceph_pool_for_ceph(self) -> VolumeSpec:
        if self.ceph_pool is not None and self.backend is not VolumeBackend.CEPH:
            raise FieldError("cephPool", CEPH_POOL_WITHOUT_CEPH)
        if self.shareable and self.backend is not VolumeBackend.CEPH:
            raise FieldError("shareable", SHAREABLE_WITHOUT_CEPH)
        return self


class VolumeStatus(ApiModel):
    """Where the volume is and who uses it."""

    phase: VolumePhase = Field(default=VolumePhase.PENDING, description="Lifecycle phase.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size as provisioned.")
    node: str | None = Field(
        default=None, description="Hypervisor holding the data, for node-local backends."
    )
    location: str | None = Field(
        default=None, description="Backend location: a file path, an RBD pool/image or an LV."
    )
    attached_to: str | None = Field(
        default=None,
        max_length=ATTACHED_TO_MAX,
        description="Name of the Instance using the volume (of each, comma-separated, for a "
        "shareable one).",
    )
    progress: int | None = Field(
        default=None, ge=0, le=100, description="Copy progress in percent while creating."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether the volume can be attached.",
        json_schema_extra=list_map("type"),
    )


class Volume(
    Resource,
    plural="volumes",
    short_names=("vol",),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Size", ".spec.size"),
        PrinterColumn("Backend", ".spec.backend"),
        PrinterColumn("AttachedTo", ".status.attachedTo"),
    ),
):
    """A block device that lives on after the instance using it is gone (Cinder's volume)."""

    kind: Literal["Volume"] = "Volume"
    spec: VolumeSpec = Field(description="Size, backend and initial content.")
    status: VolumeStatus | None = Field(default=None, description="Where the volume is.")

    def refused_changes(self, old: Volume) -> list[FieldError]:
        """The twin of the transition rules; `source` is checked only where it is set before
        and after, as the API server runs its rule."""
        out = []
        if self.spec.size.bytes < old.spec.size.bytes:
            out.append(FieldError("spec.size", SHRINK_MESSAGE))
        if self.spec.backend != old.spec.backend:
            out.append(FieldError("spec.backend", immutable_message("backend")))
        if self.spec.shareable != old.spec.shareable:
            out.append(FieldError("spec.shareable", immutable_message("shareable")))
        pools = (self.spec.ceph_pool, old.spec.ceph_pool)
        if None not in pools and pools[0] != pools[1]:
            out.append(FieldError("spec.cephPool", immutable_message("cephPool")))
        sources = (self.spec.source, old.spec.source)
        if None not in sources and sources[0] != sources[1]:
            out.append(FieldError("spec.source", immutable_message("source")))
        return out
