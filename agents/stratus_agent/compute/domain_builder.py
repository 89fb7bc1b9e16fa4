"""Policy: how a GuestSpec, plus what the node prepared for it, becomes a libvirt domain.

Every choice about the guest's virtual hardware lives here; `domain_xml` only writes it out.
The result depends only on its inputs, so building twice gives the same XML (a drift check
can compare text) and the unit tests need no libvirt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from stratus_agent.compute import domain_xml as dx
from stratus_api import guest, naming

# Guest-visible disk names: the root disk first, then volumes in spec order.
_VIRTIO_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Linux names a disk by its bus driver: IDE disks are hdX, SATA/SCSI/USB ones sdX.
_CDROM_PREFIX = {"ide": "hd", "sata": "sd", "scsi": "sd", "usb": "sd"}
# How often the balloon driver refreshes the guest's memory statistics (seconds), so that
# virDomainMemoryStats reports guest-side usage for metrics.
_MEMORY_STATS_PERIOD = 10


@dataclass(frozen=True, kw_only=True)
class VolumeAttachment:
    """A volume the node has made available to one guest, as a local file."""

    name: str  # the spec Disk's name (the Volume's name)
    path: str
    format: dx.DiskFormat = "raw"


@dataclass(frozen=True, kw_only=True)
class GuestOwner:
    """The user and group one guest's QEMU runs as, owner of that guest's files only."""

    uid: int
    gid: int


@dataclass(frozen=True, kw_only=True)
class NodeFacts:
    """What the node decided or prepared for one guest: never in the spec, which is
    node-independent, but needed to write its domain."""

    virt_type: Literal["kvm", "qemu"]  # detected by the agent, never assumed
    root_disk_path: str  # the qcow2 overlay made for the guest
    seed_iso_path: str  # the cloud-init NoCloud seed
    console_log_path: str  # where virtlogd keeps the serial output
    bridge: str  # OVS bridge every NIC's tap is plugged into
    machine: str = "pc"
    # Bus of the seed CD-ROM; it must be one the guest kernel has a driver for built in or
    # in its initramfs (IDE on 'pc'; q35 has no IDE, use 'sata').
    cdrom_bus: Literal["ide", "sata", "scsi", "usb"] = "ide"
    vnc_listen: str = "127.0.0.1"  # reached through the agent's console proxy only
    volumes: tuple[VolumeAttachment, ...] = ()
    # None: QEMU runs as libvirt's default user, shared by every guest (fake driver, tests).
    owner: GuestOwner | None = None


def build_domain(spec: guest.GuestSpec, node: NodeFacts) -> dx.Domain:
    """The domain that runs `spec` on this node. `spec.power` is not part of it: whether
    the domain runs is the driver's business, not its definition's."""
    return dx.Domain(
        type=node.virt_type,
        name=naming.domain_name(spec.uid),
        # libvirt's UUID is the Instance UID, so both sides name the guest the same way.
        uuid=str(uuid.UUID(spec.uid)),
        title=f"{spec.namespace}/{spec.name}",
        metadata=dx.StratusMetadata(
            uid=spec.uid, namespace=spec.namespace, name=spec.name, generation=spec.generation
        ),
        memory=_memory(spec.memory_bytes),
        vcpu=dx.Vcpu(count=spec.cpu),
        os=dx.Os(arch="x86_64", machine=node.machine, boot=("hd",)),
        features=dx.Features(acpi=True, apic=True),
        cpu=_cpu(node.virt_type),
        clock=dx.Clock(
            offset="utc",
            # The usual tick policies for Linux and Windows guests: catch up on missed RTC
            # ticks, delay PIT ones; no HPET, which guests handle worse than the others.
            timers=(
                dx.Timer(name="rtc", tickpolicy="catchup"),
                dx.Timer(name="pit", tickpolicy="delay"),
                dx.Timer(name="hpet", present=False),
            ),
        ),
        # A guest that powers off or crashes stays down: the agent reports it and the
        # operator decides; a reboot from inside the guest is just a reboot.
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="destroy",
        devices=_devices(spec, node),
        seclabel=_seclabel(node.owner),
    )


def _seclabel(owner: GuestOwner | None) -> dx.DacSeclabel | None:
    if owner is None:
        return None
    # relabel=no: the agent owns the guest's files itself. libvirt's relabelling would chown
    # the whole backing chain, so the cached base image every guest shares would end up
    # owned (writable) by whichever guest started last, and keep that owner after it stops.
    return dx.DacSeclabel(uid=owner.uid, gid=owner.gid, relabel=False)


def _memory(memory_bytes: int) -> dx.Memory:
    # Exact either way: KiB when the size is whole KiB (libvirt's own unit), else the byte
    # count, which libvirt rounds up itself.
    if memory_bytes % 1024 == 0:
        return dx.Memory(amount=memory_bytes // 1024, unit="KiB")
    return dx.Memory(amount=memory_bytes, unit="b")


def _cpu(virt_type: Literal["kvm", "qemu"]) -> dx.Cpu:
    if virt_type == "kvm":
        # Best performance; live migration between unlike hosts is not offered.
        return dx.Cpu(mode="host-passthrough")
    # TCG: QEMU's 'max' model, everything the emulator implements. Its default (qemu64)
    # lacks x86-64-v2, which current distributions (RHEL 9 and kin) refuse to boot without.
    return dx.Cpu(mode="maximum")


def _devices(spec: guest.GuestSpec, node: NodeFacts) -> dx.Devices:
    graphics = (dx.Graphics(listen=node.vnc_listen, autoport=True),) if spec.vnc else ()
    return dx.Devices(
        disks=(*_disks(spec, node), _seed_cdrom(node)),
        interfaces=tuple(_interface(spec.uid, i, nic, node) for i, nic in enumerate(spec.nics)),
        # A pty, so `virsh console` works, whose output virtlogd also writes to the log.
        serials=(dx.Serial(type="pty", log_file=node.console_log_path, log_append=False),),
        consoles=(dx.Console(type="pty", target_type="serial", port=0),),
        graphics=graphics,
        # A display adapter only for a display: without VNC nobody looks at it.
        videos=(dx.Video(model="vga"),) if spec.vnc else (),
        rngs=(dx.Rng(source="/dev/urandom"),),
        memballoon=dx.MemBalloon(model="virtio", stats_period=_MEMORY_STATS_PERIOD),
    )


def _disks(spec: guest.GuestSpec, node: NodeFacts) -> list[dx.Disk]:
    if len(spec.disks) > len(_VIRTIO_LETTERS):
        raise ValueError(f"{len(spec.disks)} disks: at most {len(_VIRTIO_LETTERS)} supported")
    volumes = {v.name: v for v in node.volumes}
    disks = []
    for index, disk in enumerate(spec.disks):
        path: str
        fmt: dx.DiskFormat
        if index == 0:
            # The root disk is always the guest's own qcow2 overlay on the cached image.
            path, fmt = node.root_disk_path, "qcow2"
        elif disk.name in volumes:
            path, fmt = volumes[disk.name].path, volumes[disk.name].format
        else:
            raise ValueError(f"disk {disk.name!r} has no volume attached on this node")
        disks.append(
            dx.Disk(
                source_file=path,
                driver_type=fmt,
                target_dev=f"vd{_VIRTIO_LETTERS[index]}",
                target_bus="virtio",
            )
        )
    return disks


def _seed_cdrom(node: NodeFacts) -> dx.Disk:
    return dx.Disk(
        device="cdrom",
        source_file=node.seed_iso_path,
        driver_type="raw",
        target_dev=f"{_CDROM_PREFIX[node.cdrom_bus]}a",
        target_bus=node.cdrom_bus,
        readonly=True,
    )


def _interface(uid: str, index: int, nic: guest.Nic, node: NodeFacts) -> dx.Interface:
    # No <vlan>: segmentation_id is a VLAN tag or a VNI depending on the network's type,
    # which the spec does not carry yet, and isolation on the bridge belongs to the network
    # driver (OVS port tag or flows), not to the domain. No interfaceid either: libvirt
    # generates one, and nothing reads it yet.
    return dx.Interface(
        source_bridge=node.bridge,
        target_dev=naming.tap_name(uid, index),
        mac=nic.mac,
        model="virtio",
        mtu=nic.mtu,
        virtualport=dx.VirtualPort(),
    )
