"""The agent's seams: what the node prepared for a guest (NodeFacts and its parts), and every
Protocol a driver or the provisioner implements.

Plain data and Protocols only. It imports nothing else of the agent, so every layer (domain
builder, drivers, manager, API) may import it; the layers contract in pyproject.toml keeps
it at the bottom. Which implementation stands behind each Protocol is chosen by the agent's
configuration, in stratus_agent.main, and nowhere else.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from stratus_api.guest import GuestEvent, GuestSpec, GuestStatus, Nic
from stratus_api.imageref import ImageRef
from stratus_api.network_wire import NodeNetworkSpec
from stratus_api.router_wire import NodeRouterSpec
from stratus_api.security_group_wire import NodeSecurityGroupSpec
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import CephAccess, PoolUsage

# Formats a disk is handed to the hypervisor in (the domain XML's driver type).
DiskFormat = Literal["qcow2", "raw"]
# How guests are accelerated on this node; detected by the compute driver, never assumed.
VirtType = Literal["kvm", "qemu"]

GuestListener = Callable[[GuestStatus], None]
# Called with a copy's percentage done (0-100) while a volume's data is being made.
ProgressListener = Callable[[int], None]
# ComputeDriver.resize_disk: (guest UID, disk serial, bytes) -> whether it was done live.
LiveResizer = Callable[[str, str, int], Awaitable[bool]]


# Node facts: what the node decided or prepared for one guest.


@dataclass(frozen=True, kw_only=True)
class GuestOwner:
    """The user and group one guest's QEMU runs as, owner of that guest's files only."""

    uid: int
    gid: int


@dataclass(frozen=True, kw_only=True)
class RbdSource:
    """An RBD image as QEMU opens it itself, through librbd: no file on the node. The key is
    not here: libvirt hands QEMU the one kept in the secret `secret_uuid` names (the libvirt
    compute driver defines it)."""

    pool: str
    image: str  # the image's name in the pool
    monitors: tuple[str, ...]  # "host:port" each
    user: str  # the cephx user, without "client."
    secret_uuid: str


def _one_source(path: str, rbd: RbdSource | None) -> None:
    if bool(path) == (rbd is not None):
        raise ValueError("a disk is either a local path or an RBD image, exactly one")


@dataclass(frozen=True, kw_only=True)
class DiskSource:
    """A disk as the hypervisor opens it: a local path (a qcow2 overlay, a raw file or block
    device) or an RBD image (`rbd`, path empty); the domain builder writes the matching
    <disk type=...>."""

    path: str = ""
    format: DiskFormat = "qcow2"
    serial: str | None = None  # a Volume booted from keeps its serial
    rbd: RbdSource | None = None
    block: bool = False  # `path` is a block device (an LVM volume), not a file

    def __post_init__(self) -> None:
        _one_source(self.path, self.rbd)


@dataclass(frozen=True, kw_only=True)
class VolumeAttachment:
    """A volume the node has made available to one guest: a local path (a file, or a block
    device when `block`), or an RBD image (`rbd`, path empty)."""

    name: str  # the spec Disk's name (the Volume's name)
    path: str = ""
    format: DiskFormat = "raw"
    # What the guest sees as the disk's serial (/dev/disk/by-id/virtio-<serial>).
    serial: str | None = None
    rbd: RbdSource | None = None
    block: bool = False

    def __post_init__(self) -> None:
        _one_source(self.path, self.rbd)


@dataclass(frozen=True, kw_only=True)
class NicBinding:
    """Where the network driver wants one NIC plugged, in the order of the spec's NICs.
    libvirt plugs the tap itself (virtualport openvswitch), with the port's VLAN tag, so the
    port is in its network from its first frame."""

    bridge: str
    vlan_tag: int | None = None  # the Network's local tag on the bridge (None: untagged)
    # False: the guest must fill in its own checksums. OVS's userspace (netdev) datapath
    # reads a tap without its virtio-net header, so a checksum a guest leaves to the host
    # stays unfilled, and every TCP segment it sends arrives corrupt.
    host_checksum: bool = True


@dataclass(frozen=True, kw_only=True)
class NodeFacts:
    """What the node decided or prepared for one guest: never in the spec, which is
    node-independent, but needed to write its domain. The virt type and the console log
    are not here: they are the compute driver's own."""

    root_disk: DiskSource  # made by the disk driver
    seed_iso_path: str  # the cloud-init NoCloud seed, written by the seed drive
    nics: tuple[NicBinding, ...] = ()  # one per spec NIC, same order
    machine: str = "pc"
    # Bus of the seed CD-ROM; it must be one the guest kernel has a driver for built in or
    # in its initramfs (IDE on 'pc'; q35 has no IDE, use 'sata').
    cdrom_bus: Literal["ide", "sata", "scsi", "usb"] = "ide"
    vnc_listen: str = "127.0.0.1"  # reached through the agent's console proxy only
    volumes: tuple[VolumeAttachment, ...] = ()
    # None: QEMU runs as libvirt's default user, shared by every guest (fake driver, tests).
    owner: GuestOwner | None = None


@dataclass(frozen=True)
class CachedImage:
    """A base image whole and verified in the node's image store."""

    uid: str  # the Image UID: a pool backend imports an image once under it
    path: Path
    format: str
    virtual_size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class StoredVolume:
    """A volume's data as its backend holds it."""

    uid: str  # the Volume UID
    size_bytes: int  # virtual size
    location: str  # a file path, pool/image or VG/LV


@dataclass(frozen=True, kw_only=True)
class StoredSnapshot:
    """A snapshot's data as its backend holds it: the volume's data as it was when taken."""

    uid: str  # the VolumeSnapshot UID
    # The Volume UID it was taken of; None only when the backend lost that record.
    volume_uid: str | None
    size_bytes: int  # virtual size: a volume restored from it is at least this big
    location: str  # a file path, pool/image@snap or VG/LV


# A domain's state as the hypervisor names it (libvirt's virDomainState): finer than
# GuestState (a guest shutting down, one blocked on I/O), for metrics.
DomainState = Literal[
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"
]


@dataclass(frozen=True, kw_only=True)
class DiskStats:
    """One disk's I/O since its guest's QEMU started, as the hypervisor counts it."""

    device: str  # the guest-side target (vda, hda): few per guest
    read_bytes: int
    write_bytes: int
    read_requests: int
    write_requests: int
    read_seconds: float  # time spent on reads, summed over requests
    write_seconds: float


@dataclass(frozen=True, kw_only=True)
class NicStats:
    """One NIC's traffic since its guest's QEMU started, as the guest sees it (received:
    what reached the guest)."""

    index: int  # the NIC's position in the spec's NICs
    receive_bytes: int
    transmit_bytes: int
    receive_packets: int
    transmit_packets: int
    receive_errors: int
    transmit_errors: int
    receive_drops: int
    transmit_drops: int


@dataclass(frozen=True, kw_only=True)
class GuestStats:
    """What the hypervisor says one guest has and uses, read for all guests at once. The
    counters are None (or the devices empty) while it does not run: they start afresh with
    each QEMU process."""

    uid: str  # the Instance UID
    state: DomainState
    vcpus: int
    memory_bytes: int  # what it is defined with (the balloon's maximum)
    # The Instance as the guest's definition names it; None when the driver has not read it.
    namespace: str | None = None
    name: str | None = None
    cpu_seconds: float | None = None  # the whole QEMU process: vCPUs, emulation and I/O
    vcpu_seconds: float | None = None  # the vCPU threads only
    balloon_bytes: int | None = None  # memory the guest has now (the balloon's current)
    resident_bytes: int | None = None  # host memory its QEMU process holds
    disks: tuple[DiskStats, ...] = ()
    nics: tuple[NicStats, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImageCacheStats:
    """The image store's contents and how often it was asked, since the agent started."""

    images: int
    bytes: int  # allocated on disk
    hits: int  # ensures answered from the cache
    misses: int  # ensures that had to download


@dataclass(frozen=True)
class Released:
    """What releasing an image did: evicted now, or kept while guests use it."""

    evicted: bool
    in_use: bool


# Protocols. Every method is idempotent and keyed by a Kubernetes UID.


class ComputeDriver(Protocol):
    """Runs guests: libvirt, or the in-memory fake."""

    @property
    def virt_type(self) -> str:
        """kvm or qemu as detected once started (fake: fake); the one owner of it."""

    async def start(self, on_change: GuestListener) -> None:
        """Connect; from now on report every guest state change to `on_change`, which is
        called on the event loop. A change the driver makes itself as part of a verb (the
        stop half of a restart) is not reported as one."""

    async def stop(self) -> None:
        """Disconnect; guests keep running."""

    async def ensure(
        self, spec: GuestSpec, facts: NodeFacts, *, restart: bool = False
    ) -> GuestStatus:
        """Define the guest, or update its definition, and bring it to `spec.power`:
        Running (started, resumed), Paused (started if needed, then suspended) or Stopped.
        `restart`: power-cycle a guest that was already running, so it boots afresh from
        its current definition; a guest this call starts boots afresh anyway.

        A guest left running gets the volume disks its new definition adds or drops
        plugged in or out live (hot-plug). A dropped disk counts as gone only once the guest
        has released it: until then ProvisioningError(VOLUME_DETACH_PENDING), so the caller
        keeps the volume held and tries again."""

    async def resize_disk(self, uid: str, serial: str, size_bytes: int) -> bool:
        """Grow the disk with `serial` of the running guest `uid` through its hypervisor,
        which resizes the image it holds open and tells the guest at once. False when the
        guest is not running or has no such disk: the caller grows it offline."""

    async def delete(self, uid: str) -> bool:
        """Stop and undefine the guest; True if there was one."""

    async def remove_ceph_secret(self, pool_uid: str) -> bool:
        """Forget the key of a Ceph pool (CephPool UID) guests reached it with; True if the
        hypervisor held one."""

    async def list(self) -> list[GuestStatus]:
        """Every guest this driver owns, with its state and the generation its definition
        was built from (the manager's, written into the definition)."""

    async def capacity(self) -> tuple[int, int]:
        """(CPUs, memory bytes) of the node."""

    async def console_device(self, uid: str) -> str | None:
        """The host pty of the running guest's serial console; None when it is not running
        or has none (the fake's guests)."""

    async def vnc_port(self, uid: str) -> int | None:
        """The port of the running guest's VNC display on the node's loopback; None when it
        is not running or has none."""

    async def guest_stats(self) -> builtins.list[GuestStats]:
        """Every guest of this driver with its usage counters, read in one pass (one
        hypervisor call, off the event loop): per scrape, so it must stay cheap."""


class ImageStore(Protocol):
    """Base images on the node: download, verify sha256, inspect the format, cache, evict."""

    async def ensure(self, ref: ImageRef) -> CachedImage:
        """The image, whole and verified; fetched once, then from the cache."""

    async def release(self, image_uid: str) -> Released:
        """The Image is gone: evict it now if no guest's disk uses it, else once the last
        one is gone (`collect`)."""

    async def collect(self) -> list[str]:
        """Evict released images no disk uses and, over budget, the least recently used
        unused ones; the UIDs evicted. Never raises."""

    async def stats(self) -> ImageCacheStats:
        """What the store holds now, and its hits and misses so far."""


class DiskDriver(Protocol):
    """A guest's root disk from a cached image: qcow2 files now, RBD and LVM next. It gets
    the whole CachedImage (a pool backend imports it once under its UID) and answers with a
    DiskSource (a path today, a pool/name with hosts for RBD)."""

    async def ensure_root_disk(
        self, uid: str, image: CachedImage, size_bytes: int | None, owner: GuestOwner | None
    ) -> DiskSource:
        """Make the root disk unless it exists; an existing one is kept as it is, so the
        guest's data survives every later ensure. `owner`: who may open it (file backends
        chown it to the guest's user; others ignore it)."""

    async def grow(self, uid: str, size_bytes: int) -> None:
        """Grow a stopped guest's root disk to `size_bytes`; never shrinks (refused)."""

    async def remove(self, uid: str) -> None:
        """Remove the guest's root disk; logs rather than raises (a delete is not retried)."""

    async def images_in_use(self) -> set[str]:
        """Image UIDs some guest's disk still depends on: the image store keeps them."""


class VolumeDriver(Protocol):
    """Volumes of one backend on this node (files now, RBD and LVM next), and snapshots of
    them. Every method is keyed by a Volume or VolumeSnapshot UID and idempotent; what
    exists is read from the backend, so it survives agent restarts."""

    @property
    def backend(self) -> VolumeBackend:
        """The backend this driver serves."""

    async def create(
        self,
        uid: str,
        size_bytes: int,
        *,
        image: CachedImage | None = None,
        clone_of: str | None = None,
        snapshot_of: str | None = None,
        progress: ProgressListener | None = None,
        shareable: bool = False,
    ) -> StoredVolume:
        """Make the volume unless it exists (an existing one is kept as it is): blank, a
        standalone copy of a cached image, a copy of another volume of this driver, or a
        restore of one of its snapshots (`snapshot_of`, a snapshot UID); at most one source.
        A copy is grown to `size_bytes`, never made smaller than its source (DISK_TOO_SMALL).
        A half-made volume never looks like a whole one. `shareable`: made for several
        guests writing at once (BACKEND_UNSUPPORTED where the backend cannot). Raises
        ProvisioningError."""

    async def grow(self, uid: str, size_bytes: int) -> StoredVolume:
        """Grow the volume to `size_bytes` while no running guest holds it open (a running
        guest's is grown through ComputeDriver.resize_disk); never shrinks (refused)."""

    async def remove(self, uid: str) -> bool:
        """Remove the volume's data; True if there was some."""

    async def list(self) -> list[StoredVolume]:
        """Every volume the backend holds."""

    async def snapshot(
        self, volume_uid: str, snapshot_uid: str, *, progress: ProgressListener | None = None
    ) -> StoredSnapshot:
        """Take a snapshot of the volume unless one with `snapshot_uid` exists (an existing
        one is kept as it is). The caller makes sure nothing writes to the volume meanwhile.
        A half-made snapshot never looks like a whole one. Raises ProvisioningError
        (VOLUME_NOT_FOUND when the volume is not on this node)."""

    async def remove_snapshot(self, snapshot_uid: str) -> bool:
        """Remove the snapshot's data; True if there was some. Volumes restored from it are
        not touched."""

    # builtins.list: inside this class, `list` names the method above.
    async def list_snapshots(self) -> builtins.list[StoredSnapshot]:
        """Every whole snapshot the backend holds, with the volume each was taken of."""

    async def attach(self, uid: str, owner: GuestOwner | None) -> VolumeAttachment:
        """Check the volume is safe to hand to a guest and give it to `owner`; the
        attachment is named by the volume UID (the caller names it after the spec disk)."""

    async def detach(self, uid: str) -> None:
        """No guest uses the volume any more: take it back from the guest's user."""

    async def usage(self) -> PoolUsage:
        """Capacity, provisioned and free bytes of the backend, snapshots included."""


class CephPoolDriver(VolumeDriver, Protocol):
    """The volumes of one Ceph pool, reached with the access the operator last sent for it."""

    access: CephAccess

    def use_access(self, access: CephAccess) -> bool:
        """Reach the pool with `access` from now on (a rotated key, changed monitors); True
        if it differs from the current one. Blocking: it drops the current connection."""

    def close(self) -> None:
        """Disconnect (blocking); the next call connects again."""

    async def release_image(self, image_uid: str) -> bool:
        """The Image is gone: remove its copy imported into the pool, now or once its last
        clone is removed; True if removed now."""


class CephPools(Protocol):
    """Makes the driver of each Ceph pool the node serves volumes of (RBD)."""

    def make(self, access: CephAccess) -> CephPoolDriver:
        """A driver of the pool, not connected yet. ProvisioningError(BACKEND_UNSUPPORTED)
        when this node cannot serve Ceph at all."""

    def saved(self) -> Sequence[CephPoolDriver]:
        """Drivers of the pools the node kept the access of, rebuilt from it (not connected):
        the pools it served before a restart. Unreadable ones are logged and left out.
        Blocking."""

    def forget(self, pool_uid: str) -> bool:
        """Remove what the node kept to reach the pool (its access: the key among it); True
        if there was some. Blocking."""


class NetworkDriver(Protocol):
    """The node's networking and a guest's NICs, as far as the agent does them: OVS now."""

    async def ensure_node(self) -> None:
        """Node-wide networking guests depend on (the bridge); raises ProvisioningError."""

    async def plug(self, uid: str, nics: Sequence[Nic]) -> tuple[NicBinding, ...]:
        """Get the node ready for the guest's NICs; where each one is plugged."""

    async def unplug(self, uid: str) -> None:
        """Remove what is left of the guest's ports; logs rather than raises."""

    async def check(self) -> None:
        """Periodic: repair node networking someone else changed (a deleted bridge)."""

    async def ensure_network(self, spec: NodeNetworkSpec) -> None:
        """Keep the Network's node spec, replacing the one before (kept across restarts),
        and bring the node's share of the Network in line with it (overlay peers and their
        MACs); raises ProvisioningError when that cannot be done now (the spec stays kept,
        the periodic check tries again)."""

    async def remove_network(self, uid: str) -> bool:
        """The node hosts the Network no more: forget its spec; True if there was one."""

    def networks(self) -> list[str]:
        """UIDs of the Networks whose node spec is kept."""

    def network(self, uid: str) -> NodeNetworkSpec | None:
        """The Network's node spec, as kept."""

    async def ensure_router(self, spec: NodeRouterSpec) -> None:
        """Keep the router's node spec (kept across restarts) and build the router here;
        raises ProvisioningError when that cannot be done now (the spec stays kept, the
        periodic check tries again)."""

    async def remove_router(self, uid: str) -> bool:
        """The router is not this node's any more: remove it; True if it was kept."""

    def router_uids(self) -> list[str]:
        """UIDs of the routers whose node spec is kept."""

    def router(self, uid: str) -> NodeRouterSpec | None:
        """The router's node spec, as kept."""

    async def ensure_security_group(self, spec: NodeSecurityGroupSpec) -> None:
        """Keep the group's rules (kept across restarts) and apply them to the ports here
        that are in it; ProvisioningError when the flows cannot be applied now (the spec
        stays kept, the periodic check tries again)."""

    async def remove_security_group(self, uid: str) -> bool:
        """No port here is in the group any more: forget it; True if it was kept."""

    def security_group_uids(self) -> list[str]:
        """UIDs of the groups whose rules are kept."""

    def security_group(self, uid: str) -> NodeSecurityGroupSpec | None:
        """The group's node spec, as kept."""

    async def secure(self, uid: str) -> None:
        """The guest's ports exist now (libvirt made them at start): filter them. Logs
        rather than raises: the periodic check tries again, and an unfiltered new port
        lets nothing through meanwhile."""


class SeedDrive(Protocol):
    """The guest's first-boot configuration medium (cloud-init NoCloud)."""

    async def write(self, spec: GuestSpec, owner: GuestOwner | None) -> str:
        """(Re)write the guest's seed for `spec`; its path. Rewritten on every ensure: a
        newer generation may change its content."""

    async def remove(self, uid: str) -> None:
        """Remove the guest's seed; logs rather than raises."""


class Provisioner(Protocol):
    """Makes what a guest needs on the node besides the guest itself (the manager's seam)."""

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        """Image, root disk, seed, networking, the spec's volumes; idempotent. It only adds:
        what an older spec held and this one drops is let go by `settle`."""

    async def settle(self, spec: GuestSpec) -> None:
        """The guest now matches `spec` (the compute driver said so): let go of what it no
        longer uses (volumes unplugged from it)."""

    async def check_node(self) -> None:
        """Repair node-wide state guests depend on; periodic, idempotent."""

    async def cleanup(self, uid: str) -> None:
        """Remove everything `prepare` made for the guest; idempotent, never raises."""


class EventSink(Protocol):
    """Where the manager publishes guest events; the API's EventHub fans them out to every
    open event stream (a Protocol, so the manager never imports the layer above it)."""

    def publish(self, event: GuestEvent) -> None:
        """Hand one event over; never blocks."""
