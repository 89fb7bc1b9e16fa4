"""Instance: a virtual machine (Nova's server)."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    DnsLabelObjectMeta,
    FieldError,
    PrinterColumn,
    Resource,
    Rule,
    WithRules,
    list_map,
    rules,
)
from stratus_api.v1alpha1.instancetype import MAX_CPU, DiskSize, Memory
from stratus_api.v1alpha1.network import IpText
from stratus_api.v1alpha1.volume import RESOURCE_NAME_MAX

# Bytes of user-data, whether in userData or in the Secret userDataSecretRef names: the same
# number as stratus_api.guest.MAX_USER_DATA_BYTES, which a test keeps equal (guest imports
# this package, so this module cannot import it).
MAX_USER_DATA_BYTES = 65_536
# Lowercase, unicast (the first octet's low bit clear). Patterns use explicit ASCII classes
# that mean the same to the models' regex engine and the API server's RE2 (no \s, \S, \d).
MAC_PATTERN = r"^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$"
ZERO_MAC = "00:00:00:00:00:00"
# A public key as one authorized_keys line: type, one space, the base64 body, and an
# optional comment of printable ASCII and spaces; nothing else (no tab, newline or
# non-ASCII, which the guest's sshd would read differently or not at all).
SSH_KEY_PATTERN = (
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9.@-]+) "
    r"[A-Za-z0-9+/]+={0,2}( [ -~]*)?$"
)
MAX_SSH_KEY_LENGTH = 8192  # characters, which are bytes here (ASCII): a 16384-bit RSA key is 2.8K
MAX_SSH_KEYS = 16
MAX_NICS = 8
MAX_VOLUMES = 16
MAX_NODE_SELECTOR = 32
LABEL_KEY_MAX = 317  # a DNS subdomain prefix (253), '/', a name (63)
LABEL_VALUE_MAX = 63
USER_DATA_MESSAGE = f"userData must be at most {MAX_USER_DATA_BYTES} bytes of UTF-8"
NODE_SELECTOR_KEY_MESSAGE = f"nodeSelector keys must be at most {LABEL_KEY_MAX} characters"


def _not_zero_mac(mac: str) -> str:
    if mac == ZERO_MAC:
        raise ValueError(f"mac must not be {ZERO_MAC}")
    return mac


def _user_data_bytes(text: str) -> str:
    # "surrogatepass": a lone surrogate counts 3 bytes, as the API server's U+FFFD does.
    if len(text.encode("utf-8", "surrogatepass")) > MAX_USER_DATA_BYTES:
        raise ValueError(USER_DATA_MESSAGE)
    return text


def _label_keys(selector: dict[str, str]) -> dict[str, str]:
    if any(len(key) > LABEL_KEY_MAX for key in selector):
        raise ValueError(NODE_SELECTOR_KEY_MESSAGE)
    return selector


SshKey = Annotated[str, Field(max_length=MAX_SSH_KEY_LENGTH, pattern=SSH_KEY_PATTERN)]
Mac = Annotated[
    str,
    Field(pattern=MAC_PATTERN),
    AfterValidator(_not_zero_mac),
    WithRules(Rule(f"self != '{ZERO_MAC}'", f"mac must not be {ZERO_MAC}")),
]
UserData = Annotated[
    str,
    # Characters bound the CEL cost estimate; the rule bounds the bytes.
    Field(max_length=MAX_USER_DATA_BYTES),
    AfterValidator(_user_data_bytes),
    WithRules(Rule(f"size(bytes(self)) <= {MAX_USER_DATA_BYTES}", USER_DATA_MESSAGE)),
]
NodeSelector = Annotated[
    dict[str, Annotated[str, Field(max_length=LABEL_VALUE_MAX)]],
    Field(max_length=MAX_NODE_SELECTOR),
    AfterValidator(_label_keys),
    WithRules(Rule(f"self.all(k, size(k) <= {LABEL_KEY_MAX})", NODE_SELECTOR_KEY_MESSAGE)),
]


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
    mac: Mac | None = Field(
        default=None,
        description="Fixed unicast MAC address, lowercase (52:54:00:12:34:56), not all zero. "
        "Unset: generated.",
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
    user_data: UserData | None = Field(
        default=None,
        description=f"cloud-init user-data, at most {MAX_USER_DATA_BYTES} bytes of UTF-8. Put "
        "credentials in userDataSecretRef instead: this field is readable by anyone who can "
        "read the Instance.",
    )
    user_data_secret_ref: SecretKeyRef | None = Field(
        default=None, description="cloud-init user-data from a Secret."
    )
    ssh_keys: list[SshKey] = Field(
        default_factory=list,
        max_length=MAX_SSH_KEYS,
        description=f"Public SSH keys for the default user, one authorized_keys line each "
        f"(type, base64 key, optional comment; printable ASCII, at most {MAX_SSH_KEY_LENGTH} "
        f"characters), at most {MAX_SSH_KEYS}.",
    )
    run_strategy: RunStrategy = Field(
        default=RunStrategy.ALWAYS,
        description="Always: keep the guest running. Halted: keep it shut off.",
    )
    node_selector: NodeSelector | None = Field(
        default=None,
        description=f"Labels a Hypervisor must have to run this instance (at most "
        f"{MAX_NODE_SELECTOR}).",
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
    restarts: int | None = Field(
        default=None,
        ge=0,
        description="Times the node started the guest again after it stopped on its own "
        "(runStrategy Always).",
    )
    last_restart_reason: str | None = Field(
        default=None, description="Why the guest stopped before its last restart."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Scheduled, Ready, and Reconciling or Stalled (kstatus).",
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
