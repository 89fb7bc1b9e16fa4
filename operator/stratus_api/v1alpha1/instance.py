"""Instance: a virtual machine (Nova's server)."""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1.base import (
    MAX_NODE_SELECTOR,
    ApiModel,
    Condition,
    DnsLabelObjectMeta,
    FieldError,
    NodeSelector,
    PrinterColumn,
    Resource,
    Rule,
    WithRules,
    list_map,
    rules,
    unchanged,
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
MAX_NIC_GROUPS = 8
SecurityGroupName = Annotated[str, Field(min_length=1, max_length=RESOURCE_NAME_MAX)]
MAX_VOLUMES = 16
USER_DATA_MESSAGE = f"userData must be at most {MAX_USER_DATA_BYTES} bytes of UTF-8"

# An RFC 3339 time as `date -u +%FT%TZ`, Go's time.RFC3339(Nano) and `kubectl rollout
# restart` write it: upper-case T and Z, at most nine digits of fraction, no leap second
# (Go refuses :60 too), years 1000-9999 (Python's dates start at year 1, Go's at 0).
RFC3339_PATTERN = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
# The longest text the pattern accepts (2026-11-27T08:00:00.123456789+01:00); the operator
# hands the value to the node as GuestSpec.restart_token, which holds 64 (a test checks).
RFC3339_MAX_LENGTH = 35
RESTART_REQUEST_MESSAGE = (
    "restartRequestedAt must be an RFC 3339 time such as 2026-11-27T08:00:00Z, on a day "
    "the month has"
)
_YEAR, _MONTH, _DAY = "int(self.substring(0, 4))", "self.substring(5, 7)", "self.substring(8, 10)"
# The pattern leaves the day of the month to this rule: 30 days hath September...
RESTART_REQUEST_RULE = Rule(
    f"!self.matches('{RFC3339_PATTERN}') || int({_DAY}) <= ("
    f"{_MONTH} in ['04', '06', '09', '11'] ? 30 : {_MONTH} != '02' ? 31 : "
    f"{_YEAR} % 4 == 0 && ({_YEAR} % 100 != 0 || {_YEAR} % 400 == 0) ? 29 : 28)",
    RESTART_REQUEST_MESSAGE,
)

# Edits the node cannot apply, refused at admission (CEL `oldSelf`; `refused_changes` is
# the Python twin). What stays editable is applied by the node at the guest's next start.
BOOT_IMAGE_CHANGE = (
    "image is immutable once created: the node makes the root disk from it once; create "
    "another Instance to boot another image"
)
BOOT_VOLUME_CHANGE = (
    "volume is immutable once created: create another Instance to boot from another volume"
)
DISK_SIZE_CHANGE = (
    "diskSize is immutable once created: the root disk keeps the size it was made with "
    "(growing it is not supported yet)"
)
NIC_IP_CHANGE = (
    "ip is immutable while the network stays attached: the NIC keeps the address it was given"
)
NIC_MAC_CHANGE = (
    "mac is immutable while the network stays attached: the NIC keeps the MAC it was given"
)
NODE_SELECTOR_CHANGE = (
    "nodeSelector is immutable once the instance is placed on a node (status.node): it only "
    "chooses the node, and instances do not move"
)
_SAME_DISK_SIZE = (
    "[string(self.diskSize), string(oldSelf.diskSize)].all(q, isQuantity(q)) ? "
    "quantity(string(self.diskSize)).compareTo(quantity(string(oldSelf.diskSize))) == 0 : "
    "string(self.diskSize) == string(oldSelf.diskSize)"
)


def _not_zero_mac(mac: str) -> str:
    if mac == ZERO_MAC:
        raise ValueError(f"mac must not be {ZERO_MAC}")
    return mac


def _user_data_bytes(text: str) -> str:
    # "surrogatepass": a lone surrogate counts 3 bytes, as the API server's U+FFFD does.
    if len(text.encode("utf-8", "surrogatepass")) > MAX_USER_DATA_BYTES:
        raise ValueError(USER_DATA_MESSAGE)
    return text


def _bytes(size: ByteQuantity | None) -> int | None:
    return size.bytes if size is not None else None


def _calendar_day(text: str) -> str:
    try:
        datetime.date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        raise ValueError(RESTART_REQUEST_MESSAGE) from None
    return text


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
RestartRequest = Annotated[
    str,
    Field(max_length=RFC3339_MAX_LENGTH, pattern=RFC3339_PATTERN),
    AfterValidator(_calendar_day),
    WithRules(RESTART_REQUEST_RULE),
]


class RunStrategy(enum.StrEnum):
    ALWAYS = "Always"
    HALTED = "Halted"
    PAUSED = "Paused"


def verb_patch(verb: str, now: datetime.datetime) -> dict[str, Any]:
    """The spec merge patch of a lifecycle verb (start, stop, pause, unpause, restart), as
    `kubectl stratus` and the dashboard send it; KeyError for another verb."""
    if verb == "restart":  # one restart per new value; lastRestartRequestHandled says when
        stamp = now.astimezone(datetime.UTC).isoformat(timespec="milliseconds")
        return {"restartRequestedAt": stamp.replace("+00:00", "Z")}
    return {"runStrategy": VERB_STRATEGIES[verb].value}


VERB_STRATEGIES = {
    "start": RunStrategy.ALWAYS, "stop": RunStrategy.HALTED,
    "pause": RunStrategy.PAUSED, "unpause": RunStrategy.ALWAYS,
}  # fmt: skip
VERBS = (*VERB_STRATEGIES, "restart")


class InstancePhase(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    PROVISIONING = "Provisioning"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPED = "Stopped"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class BootSource(ApiModel):
    """What the root disk is made from: exactly one of image or volume. Immutable: the node
    makes the root disk once."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule("has(self.image) != has(self.volume)", "set exactly one of image or volume"),
            Rule(
                "!has(self.diskSize) || has(self.image)",
                "diskSize applies only when booting from an image",
                field_path=".diskSize",
            ),
            unchanged("image", BOOT_IMAGE_CHANGE),
            unchanged("volume", BOOT_VOLUME_CHANGE),
            unchanged("diskSize", DISK_SIZE_CHANGE, equal=_SAME_DISK_SIZE),
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
        "disk, else the image's virtual size. Immutable: growing the disk is not supported "
        "yet.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> BootSource:
        if (self.image is None) == (self.volume is None):
            raise FieldError("", "set exactly one of image or volume")
        if self.disk_size is not None and self.image is None:
            raise FieldError("diskSize", "diskSize applies only when booting from an image")
        return self


class NetworkAttachment(ApiModel):
    """A NIC on a Network. Its ip and mac are fixed while it stays attached."""

    model_config = ConfigDict(
        json_schema_extra=rules(unchanged("ip", NIC_IP_CHANGE), unchanged("mac", NIC_MAC_CHANGE))
    )

    name: str = Field(
        min_length=1, max_length=RESOURCE_NAME_MAX, description="Network in the same namespace."
    )
    ip: IpText | None = Field(
        default=None,
        description="Fixed IP inside one of the network's subnets. Unset: allocated. "
        "Immutable while the network stays attached.",
    )
    mac: Mac | None = Field(
        default=None,
        description="Fixed unicast MAC address, lowercase (52:54:00:12:34:56), not all zero. "
        "Unset: generated. Immutable while the network stays attached.",
    )
    security_groups: list[SecurityGroupName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NIC_GROUPS,
        description="SecurityGroups of the same namespace filtering the NIC. Unset: the "
        "namespace's group `default`. Changes apply to the running guest within seconds.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _groups_once(self) -> NetworkAttachment:
        # The twin of the API server's list-type "set", which names the repeated item.
        groups = self.security_groups or []
        for index, name in enumerate(groups):
            if name in groups[:index]:
                raise FieldError(f"securityGroups[{index}]", f"duplicate value: {name!r}")
        return self


class VolumeAttachment(ApiModel):
    """A Volume attached as an extra disk."""

    name: str = Field(
        min_length=1, max_length=RESOURCE_NAME_MAX, description="Volume in the same namespace."
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the instance's namespace."""

    name: str = Field(min_length=1, max_length=RESOURCE_NAME_MAX, description="Secret name.")
    key: str = Field(default="userData", min_length=1, max_length=253, description="Key.")


BOOT_VOLUME_TWICE = "the boot volume cannot also be in volumes"


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
            Rule(
                "!has(self.boot.volume) || !has(self.volumes) || "
                "self.volumes.all(v, v.name != self.boot.volume)",
                BOOT_VOLUME_TWICE,
                field_path=".volumes",
            ),
        )
    )

    instance_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=RESOURCE_NAME_MAX,
        description="Name of an InstanceType giving cpu, memory and disk; cpu and memory set "
        "here override it. A new type's cpu and memory apply at the guest's next start; its "
        "disk applies only when the root disk is made.",
    )
    cpu: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CPU,
        description="Virtual CPUs. A change applies at the guest's next start.",
    )
    memory: Memory | None = Field(
        default=None,
        description="Guest memory, such as 1Gi. A change applies at the guest's next start.",
    )
    boot: BootSource = Field(
        description="What the root disk is made from: exactly one of image or volume. "
        "Immutable (diskSize too): the node makes the root disk once."
    )
    networks: list[NetworkAttachment] = Field(
        default_factory=list,
        max_length=MAX_NICS,
        description="NICs, in order, each on a Network of the same namespace. NICs added or "
        "removed apply at the guest's next start.",
        json_schema_extra=list_map("name"),
    )
    volumes: list[VolumeAttachment] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description="Extra disks, in order. Adding one to a running guest plugs it in at "
        "once; removing one asks the guest to release it, and the Volume stays attached "
        "until it has.",
        json_schema_extra=list_map("name"),
    )
    user_data: UserData | None = Field(
        default=None,
        description=f"cloud-init user-data, at most {MAX_USER_DATA_BYTES} bytes of UTF-8. Put "
        "credentials in userDataSecretRef instead: this field is readable by anyone who can "
        "read the Instance. Edits reach the guest's seed disk at its next start; cloud-init "
        "applies most modules only on the first boot.",
    )
    user_data_secret_ref: SecretKeyRef | None = Field(
        default=None, description="cloud-init user-data from a Secret."
    )
    ssh_keys: list[SshKey] = Field(
        default_factory=list,
        max_length=MAX_SSH_KEYS,
        description=f"Public SSH keys for the default user, one authorized_keys line each "
        f"(type, base64 key, optional comment; printable ASCII, at most {MAX_SSH_KEY_LENGTH} "
        f"characters), at most {MAX_SSH_KEYS}. Like userData, read by cloud-init, which "
        "installs them on the first boot.",
    )
    run_strategy: RunStrategy = Field(
        default=RunStrategy.ALWAYS,
        description="Always: keep the guest running; the node starts it again when it stops "
        "or crashes. Halted: keep it shut off. Paused: keep it started with its vCPUs "
        "suspended and its memory kept (from Halted or at creation it starts paused, before "
        "running one instruction); set Always again to resume it at once. Pausing is a run "
        "strategy, not a separate flag, because it is one more power state of the same "
        "knob: one field to patch (kubectl patch instance vm --type=merge -p "
        '\'{"spec":{"runStrategy":"Paused"}}\'), no combination to refuse (a paused '
        "Halted guest), and no doubt whether Always restarts a paused guest: a guest that "
        "goes down while Paused is started again paused.",
    )
    restart_requested_at: RestartRequest | None = Field(
        default=None,
        description="Ask for one restart by setting the time of asking in RFC 3339, such as "
        "2026-11-27T08:00:00Z (as kubectl rollout restart stamps restartedAt): each new "
        "value is one more restart, a power cycle from outside the guest, which also applies "
        "cpu, memory and NIC changes. The guest comes back as runStrategy says (paused under "
        "Paused); a Halted guest stays off. Removing the field asks for nothing. "
        "status.lastRestartRequestHandled shows the value last acted on.",
    )
    node_selector: NodeSelector | None = Field(
        default=None,
        description=f"Labels a Hypervisor must have to run this instance (at most "
        f"{MAX_NODE_SELECTOR}). Immutable once the instance is placed (status.node).",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> InstanceSpec:
        if self.instance_type is None and (self.cpu is None or self.memory is None):
            raise FieldError("", "set instanceType, or both cpu and memory")
        if self.user_data is not None and self.user_data_secret_ref is not None:
            raise FieldError(
                "userDataSecretRef", "set at most one of userData or userDataSecretRef"
            )
        if self.boot.volume is not None and any(v.name == self.boot.volume for v in self.volumes):
            raise FieldError("volumes", BOOT_VOLUME_TWICE)
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
    last_restart_request_handled: str | None = Field(
        default=None,
        description="The spec.restartRequestedAt the node last acted on (restarted the "
        "guest, or found it Halted): equal to it once the asked-for restart is done.",
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
    root_rules=(
        # A root rule: the spec cannot see status.node. Placement happens once; until then
        # the selector can still be fixed (an Unschedulable instance), much as Kubernetes
        # lets a Pod's be edited while scheduling gates hold it back.
        Rule(
            "!has(oldSelf.status) || !has(oldSelf.status.node) || "
            f"({unchanged('spec.nodeSelector', NODE_SELECTOR_CHANGE).rule})",
            NODE_SELECTOR_CHANGE,
            field_path=".spec.nodeSelector",
        ),
    ),
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

    def refused_changes(self, old: Instance) -> list[FieldError]:
        """The twin of the CEL transition rules above. Paths name the new object's fields,
        as the API server does (a NIC by its index in the new list)."""
        out = []
        new_boot, old_boot = self.spec.boot, old.spec.boot
        if new_boot.image != old_boot.image:
            out.append(FieldError("spec.boot.image", BOOT_IMAGE_CHANGE))
        if new_boot.volume != old_boot.volume:
            out.append(FieldError("spec.boot.volume", BOOT_VOLUME_CHANGE))
        if _bytes(new_boot.disk_size) != _bytes(old_boot.disk_size):
            out.append(FieldError("spec.boot.diskSize", DISK_SIZE_CHANGE))
        attached = {nic.name: nic for nic in old.spec.networks}
        for index, nic in enumerate(self.spec.networks):
            before = attached.get(nic.name)
            if before is not None and nic.ip != before.ip:
                out.append(FieldError(f"spec.networks[{index}].ip", NIC_IP_CHANGE))
            if before is not None and nic.mac != before.mac:
                out.append(FieldError(f"spec.networks[{index}].mac", NIC_MAC_CHANGE))
        placed = old.status is not None and old.status.node is not None
        if placed and self.spec.node_selector != old.spec.node_selector:
            out.append(FieldError("spec.nodeSelector", NODE_SELECTOR_CHANGE))
        return out
