"""Agent configuration: one YAML file, read once at startup and passed down."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stratus_api.sources import SourcePolicy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Section):
    host: str = Field(default="127.0.0.1", description="Address the HTTPS API binds.")
    port: int = Field(default=8441, ge=0, le=65535, description="0 picks a free port.")
    tls_cert_file: Path | None = Field(default=None, description="PEM serving certificate.")
    tls_key_file: Path | None = Field(default=None, description="PEM key of that certificate.")
    insecure: bool = Field(
        default=False,
        description="Serve plain HTTP instead of TLS. Only for a node's own loopback; the "
        "agent logs a warning naming the address when it does.",
    )

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> ListenConfig:
        # TLS is the default: the bearer token and user-data cross this connection.
        has_tls = self.tls_cert_file is not None or self.tls_key_file is not None
        if self.insecure and has_tls:
            raise ValueError("insecure: true serves plain HTTP; remove tls_cert_file/tls_key_file")
        if not self.insecure and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError(
                "tls_cert_file and tls_key_file are required (TLS is the default); set "
                "insecure: true to serve plain HTTP"
            )
        return self


# A kernel network device name: at most 15 characters (IFNAMSIZ - 1), no / or blanks.
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,15}$"


class TunnelLinkConfig(_Section):
    """An existing device pair (a veth) joining the integration bridge and the tunnel bridge,
    for a tunnel bridge on another Open vSwitch (patch ports only join bridges of one)."""

    int_port: str = Field(
        pattern=DEVICE_NAME_PATTERN, description="The end the agent adds to the integration bridge."
    )
    tun_port: str = Field(
        pattern=DEVICE_NAME_PATTERN, description="The end the agent adds to the tunnel bridge."
    )

    @model_validator(mode="after")
    def _two_ends(self) -> TunnelLinkConfig:
        if self.int_port == self.tun_port:
            raise ValueError("int_port and tun_port must be the two different ends of the pair")
        return self


class TunnelConfig(_Section):
    """The VXLAN overlay between nodes: a tunnel bridge beside the integration bridge, one
    VXLAN port per other node hosting one of this node's overlay Networks."""

    local_ip: str = Field(
        description="This node's tunnel endpoint (IPv4 or IPv6): the address other nodes "
        "send this node's VXLAN packets to, reported to the operator as tunnelEndpoint."
    )
    bridge: str = Field(default="br-tun", pattern=DEVICE_NAME_PATTERN, description="Bridge.")
    ovsdb: str | None = Field(
        default=None,
        pattern=r"^unix:/.+",
        description="unix:/path/db.sock of the Open vSwitch holding the tunnel bridge, when "
        "not the integration bridge's own. None: the default one.",
    )
    rundir: Path | None = Field(
        default=None,
        description="Directory of that ovs-vswitchd's BRIDGE.mgmt sockets (its OVS_RUNDIR), "
        "for ovs-ofctl. None: the default one.",
    )
    link: TunnelLinkConfig | None = Field(
        default=None,
        description="A device pair joining the two bridges. None: a pair of OVS patch ports "
        "(both bridges on one Open vSwitch).",
    )
    dst_port: int = Field(default=4789, ge=1, le=65535, description="VXLAN UDP port.")
    ofctl: str = Field(default="ovs-ofctl", description="The ovs-ofctl command to run.")

    @field_validator("local_ip")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None

    @model_validator(mode="after")
    def _link_fits(self) -> TunnelConfig:
        if (self.ovsdb is None) != (self.rundir is None):
            raise ValueError(
                "ovsdb and rundir go together: both name the other Open vSwitch (its "
                "database, its vswitchd's sockets)"
            )
        if self.link is None and (self.ovsdb is not None or self.rundir is not None):
            raise ValueError(
                "a tunnel bridge on another Open vSwitch (ovsdb, rundir) needs a link: "
                "patch ports only join bridges of one"
            )
        return self


class NetworkConfig(_Section):
    driver: Literal["ovs", "fake"] = Field(
        default="ovs",
        description="ovs: one Open vSwitch bridge every NIC is plugged into. fake: plugs "
        "nothing (the default with compute: fake).",
    )
    bridge: str = Field(default="br-stratus", max_length=15, description="OVS bridge.")
    datapath_type: Literal["system", "netdev"] = Field(
        default="system", description="netdev: OVS userspace datapath, where no kernel module."
    )
    vsctl: str = Field(default="ovs-vsctl", description="The ovs-vsctl command to run.")
    ofctl: str = Field(default="ovs-ofctl", description="The ovs-ofctl command to run.")
    appctl: str = Field(default="ovs-appctl", description="The ovs-appctl command to run.")
    vswitchd_target: str | None = Field(
        default=None,
        description="ovs-appctl's -t for the ovs-vswitchd holding the bridge (its control "
        "socket), where conntrack is read and cut. None: the default one.",
    )
    port_security: bool = Field(
        default=True,
        description="Filter overlay NICs with their security groups (conntrack flows on "
        "the bridge, which the agent owns, in fail mode secure). false: every NIC is open "
        "(plain switching, fail mode standalone).",
    )
    physical_networks: dict[str, str] = Field(
        default_factory=dict,
        description="Provider networks: physical network name -> the OVS bridge that reaches "
        "it (the node admin's, with its uplink; the agent makes none). vlan Networks' ports "
        "go there tagged with their VLAN id, flat ones untagged.",
    )
    check_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often the agent re-ensures the bridge, so one deleted from outside "
        "comes back without waiting for the next guest.",
    )
    tunnel: TunnelConfig | None = Field(
        default=None,
        description="The VXLAN overlay to other nodes. None: overlay Networks stay on the node.",
    )

    @model_validator(mode="after")
    def _tunnel_bridge_is_its_own(self) -> NetworkConfig:
        tunnel = self.tunnel
        if tunnel is not None and tunnel.ovsdb is None and tunnel.bridge == self.bridge:
            raise ValueError("tunnel.bridge must differ from bridge (the integration bridge)")
        return self


class RecoveryConfig(_Section):
    """How the agent heals guests by itself (seconds)."""

    retry_initial_seconds: float = Field(
        default=1.0, gt=0, description="First wait before retrying a transient failure."
    )
    retry_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between retries; doubles up to it."
    )
    restart_initial_seconds: float = Field(
        default=1.0,
        gt=0,
        description="First wait before starting a guest that stopped on its own while its "
        "spec says Running (runStrategy Always).",
    )
    restart_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between restarts; doubles up to it."
    )
    restart_stable_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A guest that stayed up this long starts its restart backoff afresh.",
    )


class IsolationConfig(_Section):
    """Each guest's QEMU runs as its own user, so no guest can open another's files."""

    uid_first: int = Field(
        default=1_900_000_000,
        ge=1000,
        le=2**32 - 2,
        description="First UID given to guests; in systemd's unused block (1879048192 to "
        "2147483647), far from users, system accounts and container ranges.",
    )
    uid_count: int = Field(
        default=65536, ge=1, description="UIDs in the range: at most this many guests."
    )
    gid: int | None = Field(
        default=None,
        ge=0,
        description="Group of every guest's QEMU. None: each guest has its own group, "
        "numbered like its UID. Set it to the kvm group where /dev/kvm is not world-"
        "accessible (libvirt gives a per-domain user no supplementary groups).",
    )
    libvirt_qemu_dir: Path | None = Field(
        default=Path("/var/lib/libvirt/qemu"),
        description="libvirt's per-domain state directory. QEMU under a per-guest user must "
        "traverse it; Debian ships it 0750 (upstream 0751) and resets it on upgrades, so the "
        "agent keeps o+x on it. None: leave it alone.",
    )

    @model_validator(mode="after")
    def _fits(self) -> IsolationConfig:
        if self.uid_first + self.uid_count > 2**32 - 1:
            raise ValueError("uid_first + uid_count must stay below 4294967295")
        return self


# LVM names: letters, digits and + _ . - (not starting with -), as lvm(8) allows.
LVM_NAME_PATTERN = r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$"


class LvmConfig(_Section):
    """lvm Volumes: one thin logical volume each, in a thin pool of one volume group. The
    volume group and the thin pool are the node admin's (like Cinder's LVM backend, the agent
    makes neither): `lvcreate --type thin-pool -l 90%FREE -n stratus-thin VG`."""

    volume_group: str = Field(max_length=127, pattern=LVM_NAME_PATTERN, description="The VG.")
    thin_pool: str = Field(
        default="stratus-thin", max_length=127, pattern=LVM_NAME_PATTERN,
        description="The thin pool in it. It must zero new blocks (lvm's default, `-Zy`): "
        "otherwise a new volume could read a deleted one's data, and the agent refuses it.",
    )  # fmt: skip
    config: str = Field(
        default="",
        max_length=4096,
        description="Passed to every lvm command as --config (e.g. a devices filter).",
    )
    timeout_seconds: float = Field(default=120.0, gt=0, description="Per lvm command.")


class StorageConfig(_Section):
    """Where guests' disks and the node's volumes live."""

    driver: Literal["file", "fake"] = Field(
        default="file",
        description="file: each root disk a qcow2 overlay on the cached image, under "
        "state_dir/guests, and each volume a standalone qcow2 under state_dir/volumes. "
        "fake: makes nothing (the default with compute: fake).",
    )
    lvm: LvmConfig | None = Field(
        default=None,
        description="Serve lvm Volumes from this volume group's thin pool (None: none).",
    )


class ImagesConfig(_Section):
    """The image cache and where images may be downloaded from."""

    driver: Literal["cache", "fake"] = Field(
        default="cache",
        description="cache: download, verify and keep images under state_dir/images. "
        "fake: fetches nothing (the default with compute: fake).",
    )
    sources: SourcePolicy = Field(
        default_factory=SourcePolicy,
        description="Allowed schemes, hosts and ports, refused networks and ports; the "
        "agent's own listen port is always refused.",
    )
    max_image_bytes: int = Field(
        default=50 * 2**30,
        gt=0,
        description="Largest image a download may bring (50 GiB): refused from its "
        "Content-Length, or as soon as more bytes arrive.",
    )
    min_free_bytes: int = Field(
        default=2**30,
        ge=0,
        description="Bytes kept free on the image cache's filesystem (1 GiB), checked "
        "before and during every download.",
    )
    connect_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Seconds a connection to an image server may take."
    )
    read_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Seconds without a byte from an image server before the download fails "
        "(and is retried): a hanging server cannot hold a download forever.",
    )
    cache_budget_bytes: int = Field(
        default=100 * 2**30,
        ge=0,
        description="Bytes the cached images may take (100 GiB); beyond it, the least "
        "recently used images no guest uses are evicted.",
    )
    eviction_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="An image used this recently is not evicted for the budget: a guest "
        "being prepared may not have its root overlay on it yet.",
    )


class FakeComputeConfig(_Section):
    """What the fake compute driver claims the node has (control-plane tests, benchmarks)."""

    cpu: int = Field(default=1024, ge=1)
    memory_bytes: int = Field(default=4 * 2**40, ge=2**30)
    volume_pool_bytes: int = Field(
        default=2**50, ge=0, description="Size of each fake volume pool (storage.driver fake)."
    )
    volume_backends: tuple[Literal["file", "lvm"], ...] = Field(
        default=("file",), min_length=1, description="The local backends a fake node serves."
    )


class AgentConfig(_Section):
    node_name: str = Field(default_factory=socket.gethostname)
    token_file: Path = Field(description="File holding the bearer token callers must send.")
    metrics_token_file: Path | None = Field(
        default=None,
        description="File holding a second bearer token that opens GET /metrics and nothing "
        "else: Prometheus's scrape credential, so it need not hold the API token (which "
        "still reads /metrics too). None: only the API token. Same rules as token_file.",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/stratus"),
        description="Disks, seed ISOs, console logs and the image cache live here.",
    )
    compute: Literal["libvirt", "fake"] = "libvirt"
    fake: FakeComputeConfig = Field(default_factory=FakeComputeConfig)
    libvirt_uri: str = "qemu:///system"
    listen: ListenConfig = Field(description="The API's address; TLS unless insecure.")
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="Event-stream heartbeat, so dead peers are noticed."
    )
    answer_within_seconds: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="How long a guest PUT waits for the guest to settle before it answers: "
        "one that settles in time is answered with its state, which saves the operator a "
        "status write; a slower one is answered Provisioning and reported by events.",
    )

    @model_validator(mode="before")
    @classmethod
    def _listen_defaults_to_tls(cls, data: Any) -> Any:
        # A missing listen section is validated as an empty one, so the error names the
        # TLS files it needs rather than only "field required".
        if isinstance(data, dict) and "listen" not in data:
            return {**data, "listen": {}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _fake_compute_defaults_to_fake_drivers(cls, data: Any) -> Any:
        # A fake node makes nothing on the host unless a section asks for a real driver
        # (a storage test with fake guests): benchmarks and control-plane tests stay cheap.
        if not isinstance(data, dict) or data.get("compute") != "fake":
            return data
        data = dict(data)
        for section in _DRIVER_SECTIONS:
            given = data.get(section, {})
            if isinstance(given, dict) and "driver" not in given:
                data[section] = {**given, "driver": "fake"}
            elif isinstance(given, BaseModel) and "driver" not in given.model_fields_set:
                data[section] = given.model_copy(update={"driver": "fake"})
        return data

    @model_validator(mode="after")
    def _fake_drivers_need_fake_compute(self) -> AgentConfig:
        if self.compute != "fake":
            fakes = [s for s in _DRIVER_SECTIONS if getattr(self, s).driver == "fake"]
            if fakes:
                raise ValueError(
                    f"{', '.join(f'{s}.driver' for s in fakes)}: fake drivers make nothing a "
                    "real guest could use; they go with compute: fake only"
                )
        return self

    def read_token(self) -> str:
        return _read_token(self.token_file)

    def read_metrics_token(self) -> str | None:
        if self.metrics_token_file is None:
            return None
        token = _read_token(self.metrics_token_file)
        if token == self.read_token():
            # Prometheus would then hold the token that drives guests.
            raise ConfigError(
                f"{self.metrics_token_file}: the metrics token must differ from the API token"
            )
        return token


def _read_token(path: Path) -> str:
    try:
        token, stat = path.read_text().strip(), path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"{path}: the token must be at least 16 characters")
    if stat.st_mode & 0o077 and os.geteuid() == stat.st_uid:
        raise ConfigError(f"{path}: must not be readable by others (chmod 600)")
    return token


# Sections whose `driver` follows compute: fake unless given.
_DRIVER_SECTIONS = ("images", "storage", "network")


class ConfigError(ValueError):
    """The agent's configuration file is missing, unreadable or invalid."""


def load(path: Path) -> AgentConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(f"invalid agent config {path}:\n" + "\n".join(lines)) from None
