"""One domain's record from libvirt's bulk statistics (virConnectGetAllDomainStats) as
GuestStats: pure parsing, no libvirt import, so it is tested with plain dictionaries.

The record is libvirt's flat typed-parameter list ("state.state", "block.0.rd.bytes", ...),
documented with virConnectGetAllDomainStats. Keys a group lacks are simply absent: an
inactive domain has no I/O or NIC counters, and with the NOWAIT flag a domain busy in a job
may miss those that need its monitor for one scrape. Usage is read only while the domain
has a QEMU process: for a shut-off one libvirt 9 still reports a cpu.time, which is not
the guest's (seen here: 0.2 s on a domain that had used 5.5 s before it stopped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stratus_agent import base

# libvirt's virDomainState values (part of its stable ABI).
_STATES: dict[int, base.DomainState] = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}
# States in which the domain has a QEMU process, and so usage to read.
_ACTIVE: frozenset[base.DomainState] = frozenset(
    {"running", "blocked", "paused", "shutdown", "pmsuspended"}
)
_KIB = 1024
_NS = 1e-9

Record = Mapping[str, Any]


def _int(record: Record, key: str) -> int | None:
    value = record.get(key)
    return int(value) if value is not None else None


def _kib(record: Record, key: str) -> int | None:
    value = _int(record, key)
    return value * _KIB if value is not None else None


def _seconds(record: Record, key: str) -> float | None:
    value = _int(record, key)
    return value * _NS if value is not None else None


def _vcpu_seconds(record: Record) -> float | None:
    """The vCPU threads' time, summed; None when libvirt reported none (not running)."""
    count = _int(record, "vcpu.maximum") or _int(record, "vcpu.current") or 0
    times = [t for n in range(count) if (t := _int(record, f"vcpu.{n}.time")) is not None]
    return sum(times) * _NS if times else None


def _disks(record: Record) -> tuple[base.DiskStats, ...]:
    disks = []
    for n in range(_int(record, "block.count") or 0):
        prefix = f"block.{n}"
        device = record.get(f"{prefix}.name")
        if device is None or f"{prefix}.rd.bytes" not in record:
            continue  # no I/O counters: the guest is not running
        disks.append(
            base.DiskStats(
                device=str(device),
                read_bytes=_int(record, f"{prefix}.rd.bytes") or 0,
                write_bytes=_int(record, f"{prefix}.wr.bytes") or 0,
                read_requests=_int(record, f"{prefix}.rd.reqs") or 0,
                write_requests=_int(record, f"{prefix}.wr.reqs") or 0,
                read_seconds=_seconds(record, f"{prefix}.rd.times") or 0.0,
                write_seconds=_seconds(record, f"{prefix}.wr.times") or 0.0,
            )
        )
    return tuple(disks)


def _nics(record: Record) -> tuple[base.NicStats, ...]:
    # net.<n> follows the domain's interfaces, which the builder writes in the spec's order.
    nics = []
    for n in range(_int(record, "net.count") or 0):
        prefix = f"net.{n}"
        if f"{prefix}.rx.bytes" not in record:
            continue
        nics.append(
            base.NicStats(
                index=n,
                receive_bytes=_int(record, f"{prefix}.rx.bytes") or 0,
                transmit_bytes=_int(record, f"{prefix}.tx.bytes") or 0,
                receive_packets=_int(record, f"{prefix}.rx.pkts") or 0,
                transmit_packets=_int(record, f"{prefix}.tx.pkts") or 0,
                receive_errors=_int(record, f"{prefix}.rx.errs") or 0,
                transmit_errors=_int(record, f"{prefix}.tx.errs") or 0,
                receive_drops=_int(record, f"{prefix}.rx.drop") or 0,
                transmit_drops=_int(record, f"{prefix}.tx.drop") or 0,
            )
        )
    return tuple(nics)


def guest_stats(
    uid: str, record: Record, *, namespace: str | None = None, name: str | None = None
) -> base.GuestStats:
    """The guest `uid`'s stats from its record (STATE, CPU_TOTAL, BALLOON, VCPU, INTERFACE
    and BLOCK groups)."""
    state = _STATES.get(_int(record, "state.state") or 0, "nostate")
    sizes = base.GuestStats(
        uid=uid,
        state=state,
        vcpus=_int(record, "vcpu.current") or 0,
        memory_bytes=_kib(record, "balloon.maximum") or 0,
        namespace=namespace,
        name=name,
    )
    if state not in _ACTIVE:
        return sizes
    return replace(
        sizes,
        cpu_seconds=_seconds(record, "cpu.time"),
        vcpu_seconds=_vcpu_seconds(record),
        balloon_bytes=_kib(record, "balloon.current"),
        resident_bytes=_kib(record, "balloon.rss"),
        disks=_disks(record),
        nics=_nics(record),
    )
