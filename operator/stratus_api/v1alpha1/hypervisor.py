"""Hypervisor: a node that runs instances, as its agent reports it (nova-compute's record)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from stratus_api.quantity import ByteQuantity, ByteRange
from stratus_api.v1alpha1.base import ApiModel, Condition, PrinterColumn, Resource, list_map
from stratus_api.v1alpha1.image import URL_HOST, URL_PORT
from stratus_api.v1alpha1.instancetype import MAX_MEMORY
from stratus_api.v1alpha1.volume import RESOURCE_NAME_MAX, VolumeBackend

# Explicit ASCII classes, as every pattern here: a host (name, dotted IPv4 or bracketed
# IPv6), an optional port and an optional path; no user:password, query or fragment.
AGENT_URL_PATTERN = (
    f"^https?://{URL_HOST}{URL_PORT}(/([A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{{2}})*)?$"
)
# Overcommit bounds, as Nova's cpu_allocation_ratio (default 4.0 here, 16.0 in old Nova)
# and ram_allocation_ratio (1.0: memory is not overcommitted unless asked for).
DEFAULT_CPU_RATIO = 4.0
DEFAULT_MEMORY_RATIO = 1.0
MAX_CPU_RATIO = 64.0
MAX_MEMORY_RATIO = 16.0
DEFAULT_RESERVED_MEMORY = "512Mi"  # for the host's kernel, libvirtd, OVS and the agent
MAX_RESERVED_CPU = 1024

HostMemory = Annotated[ByteQuantity, ByteRange("0", MAX_MEMORY)]


class VirtType(enum.StrEnum):
    KVM = "kvm"
    QEMU = "qemu"


class TokenSecretRef(ApiModel):
    """A Secret key holding the agent's bearer token."""

    namespace: str = Field(min_length=1, max_length=63, description="Secret namespace.")
    name: str = Field(min_length=1, max_length=RESOURCE_NAME_MAX, description="Secret name.")
    key: str = Field(default="token", min_length=1, max_length=253, description="Key.")


class AllocationRatio(ApiModel):
    """How far instances may overcommit the node (Nova's allocation ratios).

    allocatable = (capacity - reserved) x ratio, per resource.
    """

    # strict: a number, as the CRD's `type: number` takes, never the string "4".
    cpu: float = Field(
        default=DEFAULT_CPU_RATIO,
        strict=True,
        gt=0,
        le=MAX_CPU_RATIO,
        description=f"Virtual CPUs placed per physical CPU left after reserved.cpu: "
        f"allocatable cpu = (capacity cpu - reserved cpu) x this (0 < ratio <= "
        f"{MAX_CPU_RATIO}). Default {DEFAULT_CPU_RATIO}.",
    )
    memory: float = Field(
        default=DEFAULT_MEMORY_RATIO,
        strict=True,
        gt=0,
        le=MAX_MEMORY_RATIO,
        description=f"Guest memory placed per byte left after reserved.memory: allocatable "
        f"memory = (capacity memory - reserved memory) x this (0 < ratio <= "
        f"{MAX_MEMORY_RATIO}). Above 1.0 relies on guests not touching all their memory. "
        f"Default {DEFAULT_MEMORY_RATIO}.",
    )


class ReservedResources(ApiModel):
    """What the host keeps for itself before anything is allocated to instances."""

    cpu: int = Field(
        default=0,
        ge=0,
        le=MAX_RESERVED_CPU,
        description="Physical CPUs kept for the host, taken off capacity before the ratio "
        "applies. Default 0.",
    )
    memory: HostMemory = Field(
        default=ByteQuantity(DEFAULT_RESERVED_MEMORY),
        description=f"Memory kept for the host (kernel, libvirtd, OVS, the agent), taken off "
        f"capacity before the ratio applies. Default {DEFAULT_RESERVED_MEMORY}.",
    )


class HypervisorSpec(ApiModel):
    """How to reach the node's agent, whether it takes new instances and how much."""

    endpoint: str = Field(
        max_length=2048,
        pattern=AGENT_URL_PATTERN,
        description="Base URL of the node agent, such as https://10.0.0.5:8441.",
    )
    token_secret_ref: TokenSecretRef = Field(description="Secret holding the agent's bearer token.")
    schedulable: bool = Field(
        default=True, description="false: keep running instances but place no new ones."
    )
    allocation_ratio: AllocationRatio = Field(
        default_factory=AllocationRatio,
        description="Overcommit per resource: allocatable = (capacity - reserved) x ratio.",
        json_schema_extra={"default": {}},
    )
    reserved: ReservedResources = Field(
        default_factory=ReservedResources,
        description="CPU and memory the host keeps, taken off capacity before the ratio.",
        json_schema_extra={"default": {}},
    )


class Resources(ApiModel):
    """An amount of CPU and memory."""

    cpu: int = Field(ge=0, description="Virtual CPUs.")
    memory: ByteQuantity = Field(description="Memory.")


class StoragePool(ApiModel):
    """One volume backend on the node, as its agent last reported it."""

    backend: VolumeBackend = Field(description="The backend its Volumes use.")
    location: str | None = Field(
        default=None, max_length=255, description="Where: the LVM volume group/thin pool."
    )
    capacity: ByteQuantity = Field(description="Size of the filesystem or pool.")
    provisioned: ByteQuantity = Field(description="Virtual size of the Volumes in it.")
    free: ByteQuantity = Field(description="What it can still store.")


class HypervisorStatus(ApiModel):
    """What the agent reports and what the operator has placed on it."""

    virt_type: VirtType | None = Field(
        default=None, description="kvm where hardware virtualisation works, else qemu (TCG)."
    )
    capacity: Resources | None = Field(default=None, description="All the node has.")
    allocatable: Resources | None = Field(
        default=None,
        description="What instances may use: (capacity - spec.reserved) x "
        "spec.allocationRatio, filled in by the operator.",
    )
    allocated: Resources | None = Field(default=None, description="What instances placed here use.")
    storage: list[StoragePool] = Field(
        default_factory=list,
        max_length=len(VolumeBackend),  # one per backend; bounds the CEL cost estimate
        description="Volume pools on the node: a Volume is made only where it fits.",
        json_schema_extra=list_map("backend"),
    )
    physical_networks: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Physical networks the node has a bridge for (its agent's config): vlan "
        "and flat Networks' Instances are placed only where theirs is.",
    )
    tunnel_endpoint: str | None = Field(
        default=None,
        max_length=45,
        description="The node's overlay tunnel endpoint address (its agent's "
        "network.tunnel.local_ip): other nodes send this node's overlay traffic there. "
        "None: the node's guests on overlay Networks reach only guests on the same node.",
    )
    heartbeat: datetime | None = Field(default=None, description="Last successful health check.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether the agent answers.",
        json_schema_extra=list_map("type"),
    )


class Hypervisor(
    Resource,
    plural="hypervisors",
    scope="Cluster",
    short_names=("hv",),
    printer_columns=(
        PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        PrinterColumn("VirtType", ".status.virtType"),
        PrinterColumn("CPU", ".status.capacity.cpu", "integer"),
        PrinterColumn("Memory", ".status.capacity.memory"),
        PrinterColumn("Allocatable CPU", ".status.allocatable.cpu", "integer", priority=1),
        PrinterColumn("Allocatable Memory", ".status.allocatable.memory", priority=1),
        PrinterColumn("Endpoint", ".spec.endpoint", priority=1),
        PrinterColumn("Tunnel", ".status.tunnelEndpoint", priority=1),
    ),
):
    """A node running the Stratus agent, as the operator sees it (nova-compute's record)."""

    kind: Literal["Hypervisor"] = "Hypervisor"
    spec: HypervisorSpec = Field(description="How to reach the agent.")
    status: HypervisorStatus | None = Field(default=None, description="What the agent reports.")
