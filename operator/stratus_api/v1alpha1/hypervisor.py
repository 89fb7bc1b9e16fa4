"""Hypervisor: a node that runs instances, as its agent reports it (nova-compute's record)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Literal

from pydantic import Field

from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1.base import ApiModel, Condition, PrinterColumn, Resource, list_map
from stratus_api.v1alpha1.volume import RESOURCE_NAME_MAX

AGENT_URL_PATTERN = r"^https?://[^\s/?#]+(:[0-9]+)?(/\S*)?$"


class VirtType(enum.StrEnum):
    KVM = "kvm"
    QEMU = "qemu"


class TokenSecretRef(ApiModel):
    """A Secret key holding the agent's bearer token."""

    namespace: str = Field(min_length=1, max_length=63, description="Secret namespace.")
    name: str = Field(min_length=1, max_length=RESOURCE_NAME_MAX, description="Secret name.")
    key: str = Field(default="token", min_length=1, max_length=253, description="Key.")


class HypervisorSpec(ApiModel):
    """How to reach the node's agent and whether it takes new instances."""

    endpoint: str = Field(
        max_length=2048,
        pattern=AGENT_URL_PATTERN,
        description="Base URL of the node agent, such as https://10.0.0.5:8441.",
    )
    token_secret_ref: TokenSecretRef = Field(description="Secret holding the agent's bearer token.")
    schedulable: bool = Field(
        default=True, description="false: keep running instances but place no new ones."
    )


class Resources(ApiModel):
    """An amount of CPU and memory."""

    cpu: int = Field(ge=0, description="Virtual CPUs.")
    memory: ByteQuantity = Field(description="Memory.")


class HypervisorStatus(ApiModel):
    """What the agent reports and what the operator has placed on it."""

    virt_type: VirtType | None = Field(
        default=None, description="kvm where hardware virtualisation works, else qemu (TCG)."
    )
    capacity: Resources | None = Field(default=None, description="All the node has.")
    allocatable: Resources | None = Field(
        default=None, description="What instances may use, after the node's reserve."
    )
    allocated: Resources | None = Field(default=None, description="What instances placed here use.")
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
        PrinterColumn("Endpoint", ".spec.endpoint", priority=1),
    ),
):
    """A node running the Stratus agent, as the operator sees it (nova-compute's record)."""

    kind: Literal["Hypervisor"] = "Hypervisor"
    spec: HypervisorSpec = Field(description="How to reach the agent.")
    status: HypervisorStatus | None = Field(default=None, description="What the agent reports.")
