"""Instance: a virtual machine (Nova's server)."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    DnsLabelObjectMeta,
    FieldError,
    PrinterColumn,
    Resource,
    Rule,
    list_map,
    rules,
)
from stratus_api.v1alpha1.instancetype import MAX_CPU, DiskSize, Memory
from stratus_api.v1alpha1.network import IpText
from stratus_api.v1alpha1.volume import RESOURCE_NAME_MAX

MAC_PATTERN = r"^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$"
SSH_KEY_PATTERN = r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-\S+) \S+"
MAX_USER_DATA = 65_536
MAX_NICS = 8
MAX_VOLUMES = 16
MAX_SSH_KEYS = 16

SshKey = Annotated[str, Field(max_length=16384, pattern=SSH_KEY_PATTERN)]


class RunStrategy(enum.StrEnum):
    ALWAYS = "Always"
    HALTED = "Halted"


class InstancePhase(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    PROVISIONING = "Provisioning"
    RUNNING = "Running"
    STOPPED = "Stopped"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class BootSource(ApiModel):
    """What the root disk is made from: exactly one of image or volume."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule("has(self.image) != has(self.volume)", "set exactly one of image or volume"),
            Rule(
                "!has(self.diskSize) || has(self.image)",
                "diskSize applies only when booting from an image",
                field_path=".diskSize",
            ),
        )
    )

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of an Image in the same namespace: the root disk is a copy-on-write "
        "overlay on it, deleted with the instance.",
    )
    volume: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of a Volume in the same namespace to boot from; it outlives the "
        "instance.",
    )
    disk_size: DiskSize | None = Field(
        default=None,
        description="Root disk size when booting from an image. Unset: the instance type's "
        "disk, else the image's virtual size.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> BootSource:
        if (self.image is None) == (self.volume is None):
            raise FieldError("", "set exactly one of image or volume")
        if self.disk_size is not None and self.image is None:
            raise FieldError("diskSize", "diskSize applies only when booting from an image")
        return self


class NetworkAttachment(ApiModel):
    """A NIC on a Network."""

    name: str = Field(
        min_length=1, max_length=RESOURCE_NAME_MAX, description="Network in the same namespace."
    )
    ip: IpText | None = Field(
        default=None,
        description="Fixed IP inside one of the network's subnets. Unset: allocated.",
    )
    mac: str | None = Field(
        default=None,
        pattern=MAC_PATTERN,
        description="Fixed unicast MAC address, lowercase (52:54:00:12:34:56). Unset: generated.",
    )


class VolumeAttachment(ApiModel):
    """A Volume attached as an extra disk."""

    name: str = Field(
        min_length=1, max_length=RESOURCE_NAME_MAX, description="Volume in the same namespace."
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the instance's namespace."""

    name: str = Field(min_length=1, max_length=RESOURCE_NAME_MAX, description="Secret name.")
    key: str = Field(default="userData", min_length=1, max_length=253, description="Key.")


class InstanceSpec(ApiModel):
    """Size, boot disk, NICs, volumes and first-boot configuration of a virtual machine."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule(
                "has(self.instanceType) || (has(self.cpu) && has(self.memory))",
                "set instanceType, or both cpu and memory",
            ),
            Rule(
                "!(has(self.userData) && has(self.userDataSecretRef))",
                "set at most one of userData or userDataSecretRef",
                field_path=".userDataSecretRef",
            ),
        )
    )

    instance_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of an InstanceType giving cpu, memory and disk; cpu and memory set "
        "here override it.",
    )
    cpu: int | None = Field(default=None, ge=1, le=MAX_CPU, description="Virtual CPUs.")
    memory: Memory | None = Field(default=None, description="Guest memory, such as 1Gi.")
    boot: BootSource = Field(
        description="What the root disk is made from: exactly one of image or volume."
    )
    networks: list[NetworkAttachment] = Field(
        default_factory=list,
        max_length=MAX_NICS,
        description="NICs, in order, each on a Network of the same namespace.",
        json_schema_extra=list_map("name"),
    )
    volumes: list[VolumeAttachment] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description="Extra disks, in order.",
        json_schema_extra=list_map("name"),
    )
    user_data: str | None = Field(
        default=None,
        max_length=MAX_USER_DATA,
        description="cloud-init user-data. Put credentials in userDataSecretRef instead: "
        "this field is readable by anyone who can read the Instance.",
    )
    user_data_secret_ref: SecretKeyRef | None = Field(
        default=None, description="cloud-init user-data from a Secret."
    )
    ssh_keys: list[SshKey] = Field(
        default_factory=list,
        max_length=MAX_SSH_KEYS,
        description="Public SSH keys for the default user.",
    )
    run_strategy: RunStrategy = Field(
        default=RunStrategy.ALWAYS,
        description="Always: keep the guest running. Halted: keep it shut off.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Labels a Hypervisor must have to run this instance.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> InstanceSpec:
        if self.instance_type is None and (self.cpu is None or self.memory is None):
            raise FieldError("", "set instanceType, or both cpu and memory")
        if self.user_data is not None and self.user_data_secret_ref is not None:
            raise FieldError(
                "userDataSecretRef", "set at most one of userData or userDataSecretRef"
            )
        return self


class InterfaceStatus(ApiModel):
    """A NIC as it is on the node."""

    network: str = Field(description="Network name.")
    ip: str | None = Field(default=None, description="IP address.")
    mac: str | None = Field(default=None, description="MAC address.")


class InstanceStatus(ApiModel):
    """Where the instance runs and how it is doing."""

    phase: InstancePhase = Field(default=InstancePhase.PENDING, description="Lifecycle phase.")
    node: str | None = Field(default=None, description="Hypervisor running the instance.")
    interfaces: list[InterfaceStatus] = Field(
        default_factory=list,
        description="NICs with their addresses.",
        json_schema_extra=list_map("network"),
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Scheduled and Ready.",
        json_schema_extra=list_map("type"),
    )


class Instance(
    Resource,
    plural="instances",
    short_names=("inst", "vm"),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Node", ".status.node"),
        PrinterColumn("IP", ".status.interfaces[0].ip"),
        PrinterColumn("Type", ".spec.instanceType", priority=1),
    ),
):
    """A virtual machine (Nova's server). Its name becomes the guest's hostname."""

    kind: Literal["Instance"] = "Instance"
    metadata: DnsLabelObjectMeta = Field(default_factory=DnsLabelObjectMeta)
    spec: InstanceSpec = Field(description="What to run.")
    status: InstanceStatus | None = Field(default=None, description="How it runs.")
