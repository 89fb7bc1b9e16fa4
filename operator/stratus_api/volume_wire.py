"""The node volume spec: what an agent needs to create, grow and delete one Volume's data,
and its replies. The operator resolves a Volume (its source Image or Volume, its node) into
one self-contained NodeVolumeSpec, as it does an Instance into a GuestSpec; the agent never
reads Volumes itself.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import Field, SecretStr, field_serializer, model_validator

from stratus_api.imageref import ImageRef
from stratus_api.naming import UID_PATTERN
from stratus_api.v1alpha1.base import ApiModel, FieldError
from stratus_api.v1alpha1.volume import VolumeBackend

# virtio-blk serials are at most 20 bytes; the guest sees /dev/disk/by-id/virtio-<serial>.
SERIAL_LENGTH = 20


def disk_serial(volume_uid: str) -> str:
    """The serial a Volume's disk carries in every guest: its UID's first 20 hex digits."""
    return volume_uid.replace("-", "")[:SERIAL_LENGTH]


# "host:port", "[v6]:port" or a bare host (Ceph's default port).
MONITOR_PATTERN = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$"


class CephAccess(ApiModel):
    """How a node reaches one Ceph pool: from a CephPool object and its Secret."""

    pool_uid: str = Field(
        pattern=UID_PATTERN,
        description="The CephPool's UID: names the node's libvirt secret and its connection.",
    )
    monitors: list[Annotated[str, Field(pattern=MONITOR_PATTERN)]] = Field(
        min_length=1, description='Monitor addresses, "host:port" each.'
    )
    pool: str = Field(min_length=1, description="The RADOS pool holding the images.")
    user: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description='The cephx user, without the "client." prefix.',
    )  # fmt: skip
    key: SecretStr = Field(
        min_length=1,
        description="The cephx key, base64 text. Masked in repr() and logs; sent in full only "
        "when serialised to JSON for the agent.",
    )

    @field_serializer("key", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr) -> str:
        # As CloudInit.user_data: the agent needs the key itself, everything else the mask.
        return value.get_secret_value()


def ceph_access_required(backend: VolumeBackend, ceph: CephAccess | None) -> None:
    """A ceph volume is reached through its pool's access (a model validator's check)."""
    if backend is VolumeBackend.CEPH and ceph is None:
        raise FieldError("ceph", "required when backend is ceph")


class NodeVolumeSource(ApiModel):
    """Initial content: a copy of an Image, a clone of another Volume or a restore of a
    snapshot (both on the same node and backend). None set: blank."""

    image: ImageRef | None = None
    volume: str | None = Field(default=None, pattern=UID_PATTERN, description="Volume UID.")
    snapshot: str | None = Field(
        default=None, pattern=UID_PATTERN, description="VolumeSnapshot UID."
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> NodeVolumeSource:
        if sum(x is not None for x in (self.image, self.volume, self.snapshot)) > 1:
            raise FieldError("", "set at most one of image, volume or snapshot")
        return self


class NodeVolumeSpec(ApiModel):
    """One Volume as its node holds it. PUT to the agent, idempotently: a larger size grows
    it; the source counts only when the data is first made."""

    uid: str = Field(pattern=UID_PATTERN, description="Volume UID: names the data on the node.")
    name: str
    namespace: str
    generation: int = Field(ge=0)
    backend: VolumeBackend
    size_bytes: int = Field(ge=1)
    source: NodeVolumeSource | None = None
    ceph: CephAccess | None = Field(default=None, description="Required when backend is ceph.")
    shareable: bool = Field(
        default=False, description="Several guests may use it at once (made for that)."
    )

    @model_validator(mode="after")
    def _backend_access(self) -> NodeVolumeSpec:
        ceph_access_required(self.backend, self.ceph)
        return self


class NodeVolumeState(enum.StrEnum):
    CREATING = "Creating"
    AVAILABLE = "Available"
    EXTENDING = "Extending"
    FAILED = "Failed"
    MISSING = "Missing"  # deleted, or never made on this node


class NodeVolumeStatus(ApiModel):
    """The agent's report on one volume."""

    uid: str
    state: NodeVolumeState
    generation: int | None = None
    size_bytes: int | None = Field(default=None, description="Virtual size as provisioned.")
    location: str | None = Field(
        default=None, description="Backend location: a file path, pool/image or VG/LV."
    )
    progress: int | None = Field(default=None, ge=0, le=100, description="Copy progress.")
    attached_to: list[str] = Field(
        default_factory=list, description="UIDs of the guests on this node using the volume."
    )
    reason: str = Field(default="", description="A GuestFailure when state is Failed.")
    message: str = ""
    sequence: int | None = Field(
        default=None, description="Orders the agent's reports (see GuestStatus.sequence)."
    )


class NodeSnapshotSpec(ApiModel):
    """One VolumeSnapshot as its node holds it. PUT to the agent, idempotently: the data is
    copied once, from the volume as it is then; a later PUT changes nothing."""

    uid: str = Field(pattern=UID_PATTERN, description="VolumeSnapshot UID: names the data.")
    name: str
    namespace: str
    generation: int = Field(ge=0)
    backend: VolumeBackend
    volume: str = Field(pattern=UID_PATTERN, description="UID of the Volume to snapshot.")
    ceph: CephAccess | None = Field(default=None, description="Required when backend is ceph.")

    @model_validator(mode="after")
    def _backend_access(self) -> NodeSnapshotSpec:
        ceph_access_required(self.backend, self.ceph)
        return self


class NodeSnapshotState(enum.StrEnum):
    CREATING = "Creating"
    READY = "Ready"
    FAILED = "Failed"
    MISSING = "Missing"  # deleted, or never made on this node


class NodeSnapshotStatus(ApiModel):
    """The agent's report on one snapshot."""

    uid: str
    state: NodeSnapshotState
    generation: int | None = None
    volume: str | None = Field(default=None, description="UID of the Volume it was taken of.")
    size_bytes: int | None = Field(default=None, description="Virtual size of the data.")
    location: str | None = Field(default=None, description="Backend location of the data.")
    progress: int | None = Field(default=None, ge=0, le=100, description="Copy progress.")
    reason: str = Field(default="", description="A GuestFailure when state is Failed.")
    message: str = ""
    sequence: int | None = Field(
        default=None, description="Orders the agent's reports (see GuestStatus.sequence)."
    )


class PoolUsage(ApiModel):
    """Capacity and use of one volume backend on the node: its files, or one Ceph pool."""

    backend: VolumeBackend
    capacity_bytes: int = Field(ge=0)
    used_bytes: int = Field(ge=0, description="Provisioned (virtual) bytes of its volumes.")
    free_bytes: int = Field(ge=0, description="Bytes the backend can still store.")
    pool: str | None = Field(default=None, description="The Ceph pool, for backend ceph.")
    pool_uid: str | None = Field(default=None, description="Its CephPool's UID, for ceph.")


class VolumeInventory(ApiModel):
    """GET /v1/volumes: every volume and snapshot this agent holds, and its pools."""

    node: str
    volumes: list[NodeVolumeStatus] = Field(default_factory=list)
    snapshots: list[NodeSnapshotStatus] = Field(default_factory=list)
    pools: list[PoolUsage] = Field(default_factory=list)
