"""Policy: how a GuestSpec, plus what the node prepared for it, becomes a libvirt domain.

Every choice about the guest's virtual hardware lives here; `domain_xml` only writes it out.
The result depends only on its inputs, so building twice gives the same XML (a drift check
can compare text) and the unit tests need no libvirt.
"""

from __future__ import annotations

import uuid

from stratus_agent import base
from stratus_agent.domain import xml as dx
from stratus_api import guest, naming

# Guest-visible disk names: the root disk first, then volumes in spec order.
_VIRTIO_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Linux names a disk by its bus driver: IDE disks are hdX, SATA/SCSI/USB ones sdX.
_CDROM_PREFIX = {"ide": "hd", "sata": "sd", "scsi": "sd", "usb": "sd"}
# How often the balloon driver refreshes the guest's memory statistics (seconds), so that
# virDomainMemoryStats reports guest-side usage for metrics.
_MEMORY_STATS_PERIOD = 10


def build_domain(
    spec: guest.GuestSpec,
    node: base.NodeFacts,
    *,
    virt_type: base.VirtType,
    console_log: str,
    node_name: str | None = None,
    agent: str | None = None,
) -> dx.Domain:
    """The domain that runs `spec` on this node. `virt_type`, `console_log`, `node_name`
    and `agent` come from the compute driver, which owns them. `spec.power` and `spec.restart_token`
    are not part of it: whether and since when the domain runs is the driver's business,
    not its definition's."""
    return dx.Domain(
        type=virt_type,
        name=naming.domain_name(spec.uid),
        # libvirt's UUID is the Instance UID, so both sides name the guest the same way.
        uuid=str(uuid.UUID(spec.uid)),
        title=f"{spec.namespace}/{spec.name}",
        metadata=dx.StratusMetadata(
            uid=spec.uid,
            namespace=spec.namespace,
            name=spec.name,
            generation=spec.generation,
            node=node_name,
            agent=agent,
        ),
        memory=_memory(spec.memory_bytes),
        vcpu=dx.Vcpu(count=spec.cpu),
        os=dx.Os(arch="x86_64", machine=node.machine, boot=("hd",)),
        features=dx.Features(acpi=True, apic=True),
        cpu=_cpu(virt_type),
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
        devices=_devices(spec, node, console_log),
        seclabel=_seclabel(node.owner),
    )


def _seclabel(owner: base.GuestOwner | None) -> dx.DacSeclabel | None:
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


def _cpu(virt_type: base.VirtType) -> dx.Cpu:
    if virt_type == "kvm":
        # Best performance; live migration between unlike hosts is not offered.
        return dx.Cpu(mode="host-passthrough")
    # TCG: QEMU's 'max' model, everything the emulator implements. Its default (qemu64)
    # lacks x86-64-v2, which current distributions (RHEL 9 and kin) refuse to boot without.
    return dx.Cpu(mode="maximum")


def _devices(spec: guest.GuestSpec, node: base.NodeFacts, console_log: str) -> dx.Devices:
    graphics = (dx.Graphics(listen=node.vnc_listen, autoport=True),) if spec.vnc else ()
    return dx.Devices(
        disks=(*_disks(spec, node), _seed_cdrom(node)),
        interfaces=_interfaces(spec, node),
        # A pty, so `virsh console` works, whose output virtlogd also writes to the log.
        serials=(dx.Serial(type="pty", log_file=console_log, log_append=False),),
        consoles=(dx.Console(type="pty", target_type="serial", port=0),),
        graphics=graphics,
        # A display adapter only for a display: without VNC nobody looks at it.
        videos=(dx.Video(model="vga"),) if spec.vnc else (),
        rngs=(dx.Rng(source="/dev/urandom"),),
        memballoon=dx.MemBalloon(model="virtio", stats_period=_MEMORY_STATS_PERIOD),
    )


def _disks(spec: guest.GuestSpec, node: base.NodeFacts) -> list[dx.Disk]:
    if len(spec.disks) > len(_VIRTIO_LETTERS):
        raise ValueError(f"{len(spec.disks)} disks: at most {len(_VIRTIO_LETTERS)} supported")
    volumes = {v.name: v for v in node.volumes}
    disks = []
    for index, disk in enumerate(spec.disks):
        source: base.DiskSource | base.VolumeAttachment
        if index == 0:
            # The root disk, as the disk driver made it (a qcow2 overlay for files), or the
            # Volume booted from.
            source = node.root_disk
        elif disk.name in volumes:
            source = volumes[disk.name]
        else:
            raise ValueError(f"disk {disk.name!r} has no volume attached on this node")
        target = f"vd{_VIRTIO_LETTERS[index]}"
        if source.rbd is not None:
            shared = disk.volume is not None and disk.volume.shareable
            disks.append(_rbd_disk(source.rbd, target, source.serial, shared))
        else:
            disks.append(
                dx.Disk(
                    source_file=None if source.block else source.path,
                    source_dev=source.path if source.block else None,
                    driver_type=source.format,
                    # An LVM volume: no host page cache (as Nova's LVM backend), and the
                    # guest's TRIM gives blocks back to the thin pool.
                    driver_cache="none" if source.block else None,
                    driver_discard="unmap" if source.block else None,
                    target_dev=target,
                    target_bus="virtio",
                    serial=source.serial,
                )
            )
    return disks


def _rbd_disk(
    rbd: base.RbdSource, target: str, serial: str | None, shareable: bool = False
) -> dx.Disk:
    return dx.Disk(
        source_network=dx.NetworkSource(
            name=f"{rbd.pool}/{rbd.image}", hosts=tuple(_host(m) for m in rbd.monitors)
        ),
        auth=dx.DiskAuth(username=rbd.user, secret_uuid=rbd.secret_uuid),
        # RBD images are raw. writeback: librbd's own cache, which QEMU flushes when the guest
        # does (safe, and what Ceph recommends for QEMU), but not for a disk other guests
        # write too, which must see each write at once; unmap: the guest's TRIM frees
        # space in the pool, which a thin pool shared by many nodes needs.
        driver_type="raw",
        driver_cache="none" if shareable else "writeback",
        shareable=shareable,
        driver_discard="unmap",
        target_dev=target,
        target_bus="virtio",
        serial=serial,
    )


def _host(monitor: str) -> dx.DiskHost:
    """A "host:port", "[v6]:port" or bare-host monitor address as a <host>."""
    host, colon, port = monitor.rpartition(":")
    if not colon or host.endswith(":") or (host.startswith("[") != host.endswith("]")):
        return dx.DiskHost(name=monitor.strip("[]"))  # no port: Ceph's default
    return dx.DiskHost(name=host.strip("[]"), port=int(port))


def _seed_cdrom(node: base.NodeFacts) -> dx.Disk:
    return dx.Disk(
        device="cdrom",
        source_file=node.seed_iso_path,
        driver_type="raw",
        target_dev=f"{_CDROM_PREFIX[node.cdrom_bus]}a",
        target_bus=node.cdrom_bus,
        readonly=True,
    )


def _interfaces(spec: guest.GuestSpec, node: base.NodeFacts) -> tuple[dx.Interface, ...]:
    if len(node.nics) != len(spec.nics):
        raise ValueError(f"{len(spec.nics)} NICs in the spec, {len(node.nics)} plugged")
    return tuple(
        _interface(spec.uid, i, nic, binding)
        for i, (nic, binding) in enumerate(zip(spec.nics, node.nics, strict=True))
    )


def _interface(uid: str, index: int, nic: guest.Nic, binding: base.NicBinding) -> dx.Interface:
    # <vlan>: the network driver's local tag for the NIC's Network, so libvirt adds the port
    # already tagged. No interfaceid: libvirt generates one, and nothing reads it yet.
    return dx.Interface(
        source_bridge=binding.bridge,
        target_dev=naming.tap_name(uid, index),
        mac=nic.mac,
        model="virtio",
        mtu=nic.mtu,
        virtualport=dx.VirtualPort(),
        vlan_tag=binding.vlan_tag,
        host_checksum=binding.host_checksum,
    )
