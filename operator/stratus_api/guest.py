"""The guest spec: everything a node agent needs to run one Instance, and nothing more.

The operator resolves an Instance and the objects it refers to (InstanceType, Image, Network,
Volumes, Secrets) into one self-contained GuestSpec and sends it to the node's agent, which
never reads other resources, allocates addresses or picks nodes (the Nova seam). It is also
the agent's wire protocol, with the agent's replies below it.
"""

from __future__ import annotations

import base64
import binascii
import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, SecretBytes, field_serializer, field_validator, model_validator

from stratus_api.imageref import ImageRef
from stratus_api.naming import UID_PATTERN
from stratus_api.v1alpha1.base import ApiModel
from stratus_api.v1alpha1.network import NetworkType
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import (
    SERIAL_LENGTH,
    CephAccess,
    NodeSnapshotStatus,
    NodeVolumeStatus,
    ceph_access_required,
)

MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
# Bytes of user-data a guest spec carries at most (cloud-init's own NoCloud limit is far
# above; this bounds one PUT). The Instance's userData and its Secret obey it too.
MAX_USER_DATA_BYTES = 65_536


class PowerState(enum.StrEnum):
    RUNNING = "Running"
    STOPPED = "Stopped"
    # Defined and started, vCPUs suspended, memory kept (virDomainSuspend): resumes at once.
    PAUSED = "Paused"


class VolumeDisk(ApiModel):
    """A Volume as a disk of one guest; the node holds its data (see volume_wire)."""

    uid: str = Field(pattern=UID_PATTERN, description="Volume UID.")
    backend: VolumeBackend
    serial: str = Field(
        max_length=SERIAL_LENGTH, description="The disk's serial: /dev/disk/by-id/virtio-<serial>."
    )
    ceph: CephAccess | None = Field(
        default=None,
        description="Required when backend is ceph: the guest's node, whichever it is, reaches "
        "the volume's pool with it.",
    )
    shareable: bool = Field(
        default=False, description="Other guests may use it at the same time (<shareable/>)."
    )

    @model_validator(mode="after")
    def _backend_access(self) -> VolumeDisk:
        ceph_access_required(self.backend, self.ceph)
        return self


class Disk(ApiModel):
    """A disk of the guest, in boot order: at most one of image or volume (neither: never)."""

    name: str = Field(description="Role of the disk: 'root', or the Volume's name.")
    image: ImageRef | None = Field(
        default=None, description="Root disk: a copy-on-write overlay on this image."
    )
    volume: VolumeDisk | None = Field(default=None, description="A Volume's data, as it is.")
    size_bytes: int | None = Field(
        default=None, ge=1, description="Virtual size; None keeps the image's own."
    )


class Nic(ApiModel):
    """A NIC, fully resolved: where to plug it and what the guest configures on it."""

    network: str = Field(description="Network name, for messages and status.")
    network_uid: str = Field(description="Network UID.")
    mac: str = Field(pattern=MAC_PATTERN)
    address: str | None = Field(default=None, description="IP address, if the NIC has one.")
    prefix_length: int | None = Field(default=None, ge=0, le=128)
    gateway: str | None = None
    dns_servers: list[str] = Field(default_factory=list)
    dns_search: list[str] = Field(default_factory=list, description="DNS search domains.")
    mtu: int = Field(default=1500, ge=576, le=9000)
    segmentation_id: int | None = Field(
        default=None, description="VLAN tag / VNI of the network on the node's bridge."
    )
    network_type: NetworkType = Field(
        default=NetworkType.OVERLAY, description="How the node plugs it (see Network.spec.type)."
    )
    physical_network: str | None = Field(
        default=None, description="vlan and flat: the physical network the node maps to a bridge."
    )
    security_groups: list[str] | None = Field(
        default=None,
        max_length=16,
        description='The groups filtering the NIC, as "namespace/name" (their rules come '
        "in node security group specs). None: not filtered (port security off).",
    )


class CloudInit(ApiModel):
    """First-boot configuration, written to a NoCloud seed ISO by the agent."""

    instance_id: str
    hostname: str
    user_data: SecretBytes | None = Field(
        default=None,
        max_length=MAX_USER_DATA_BYTES,
        description="cloud-init user-data, any bytes (gzip is allowed); may hold credentials. "
        "Base64 on the wire.",
    )
    ssh_keys: list[str] = Field(default_factory=list)

    @field_validator("user_data", mode="before")
    @classmethod
    def _from_base64(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError("user_data must be base64") from exc
        return value

    @field_serializer("user_data", when_used="json")
    def _reveal_on_the_wire(self, value: SecretBytes | None) -> str | None:
        # Masked in repr() and logs; sent in full only when serialised for the agent.
        return base64.b64encode(value.get_secret_value()).decode() if value is not None else None


class GuestSpec(ApiModel):
    """One Instance as its node runs it. PUT to the agent, idempotently."""

    uid: str = Field(
        pattern=UID_PATTERN, description="Instance UID: every node-side name derives from it."
    )
    name: str
    namespace: str
    generation: int = Field(ge=0, description="Instance metadata.generation it was built from.")
    cpu: int = Field(ge=1)
    memory_bytes: int = Field(ge=64 * 2**20)
    power: PowerState = PowerState.RUNNING
    restart_token: str | None = Field(
        default=None,
        max_length=64,
        description="Changes whenever the user asks for a restart: the agent restarts a "
        "running guest once per new token (power cycle from outside the guest). Unset: none.",
    )
    disks: list[Disk] = Field(min_length=1, description="Boot disk first.")
    nics: list[Nic] = Field(default_factory=list)
    cloud_init: CloudInit
    vnc: bool = Field(default=True, description="Graphical console on the node's loopback.")


class GuestState(enum.StrEnum):
    """What the hypervisor says about a guest (libvirt's domain states, simplified)."""

    PROVISIONING = "Provisioning"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPED = "Stopped"
    CRASHED = "Crashed"
    FAILED = "Failed"
    MISSING = "Missing"


class GuestStatus(ApiModel):
    """The agent's report on one guest."""

    uid: str
    state: GuestState
    generation: int | None = Field(default=None, description="GuestSpec generation applied.")
    reason: str = Field(
        default="",
        description="A GuestFailure when state is Failed, or Paused on its own (PausedOnError).",
    )
    message: str = ""
    vnc_port: int | None = None
    restarts: int = Field(
        default=0,
        ge=0,
        description="Times the agent started the guest again after it stopped on its own "
        "while its spec said Running (runStrategy Always).",
    )
    last_restart_reason: str = Field(
        default="", description="Why the guest stopped before its last restart."
    )
    restart_token: str | None = Field(
        default=None, description="The GuestSpec restart_token the agent last acted on."
    )
    sequence: int | None = Field(
        default=None,
        description="Orders the agent's reports on this guest, across agent restarts: the "
        "operator ignores a report older than one it has applied (an inventory read before "
        "an event it has already seen).",
    )


class GuestEvent(ApiModel):
    """One line of the agent's event stream."""

    type: Literal["guest", "volume", "snapshot", "resync", "heartbeat"]
    time: datetime
    guest: GuestStatus | None = None
    volume: NodeVolumeStatus | None = None
    snapshot: NodeSnapshotStatus | None = None


class NodeInventory(ApiModel):
    """GET /v1/guests: every guest this agent owns, and the node's resources."""

    node: str
    virt_type: Literal["kvm", "qemu", "fake"]
    cpu: int
    memory_bytes: int
    physical_networks: list[str] = Field(
        default_factory=list, description="Physical networks the node has a bridge for."
    )
    tunnel_endpoint: str | None = Field(
        default=None,
        description="The node's VXLAN tunnel endpoint address (None: no overlay to other nodes).",
    )
    guests: list[GuestStatus] = Field(default_factory=list)
