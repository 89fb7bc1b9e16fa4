"""libvirt's bulk statistics records as GuestStats (records as libvirt 9 returns them)."""

from __future__ import annotations

from stratus_agent import base
from stratus_agent.drivers.compute import domain_stats

UID = "0b6f3f2e-6d3a-4a57-9a1e-2f9c1c0d7e55"

RUNNING = {
    "state.state": 1, "state.reason": 1,
    "cpu.time": 5_250_000_000, "cpu.user": 4_000_000_000, "cpu.system": 1_000_000_000,
    "balloon.current": 262144, "balloon.maximum": 262144, "balloon.rss": 180224,
    "vcpu.current": 2, "vcpu.maximum": 2,
    "vcpu.0.state": 1, "vcpu.0.time": 1_500_000_000, "vcpu.0.wait": 0,
    "vcpu.1.state": 1, "vcpu.1.time": 500_000_000, "vcpu.1.wait": 0,
    "net.count": 1, "net.0.name": "st0b6f3f2e6d3a0",
    "net.0.rx.bytes": 1000, "net.0.rx.pkts": 10, "net.0.rx.errs": 1, "net.0.rx.drop": 2,
    "net.0.tx.bytes": 3000, "net.0.tx.pkts": 30, "net.0.tx.errs": 3, "net.0.tx.drop": 4,
    "block.count": 2,
    "block.0.name": "vda", "block.0.path": "/var/lib/stratus/guests/x.qcow2",
    "block.0.rd.reqs": 400, "block.0.rd.bytes": 8_388_608, "block.0.rd.times": 2_000_000_000,
    "block.0.wr.reqs": 20, "block.0.wr.bytes": 81920, "block.0.wr.times": 500_000_000,
    "block.0.fl.reqs": 5, "block.0.fl.times": 1000,
    "block.0.allocation": 1, "block.0.capacity": 2, "block.0.physical": 3,
    "block.1.name": "hda", "block.1.path": "/var/lib/stratus/guests/x-seed.iso",
    "block.1.rd.reqs": 7, "block.1.rd.bytes": 14336, "block.1.rd.times": 1_000_000,
    "block.1.wr.reqs": 0, "block.1.wr.bytes": 0, "block.1.wr.times": 0,
}  # fmt: skip

# An inactive domain: libvirt reports its definition's sizes and disks, and a cpu.time that
# is not the guest's (it has no process): as libvirt 9.0 answered for a stopped guest.
SHUTOFF = {
    "state.state": 5, "state.reason": 1,
    "cpu.time": 200_000_000, "cpu.user": 80_000_000, "cpu.system": 120_000_000,
    "balloon.current": 262144, "balloon.maximum": 262144,
    "vcpu.current": 2, "vcpu.maximum": 2,
    "net.count": 0,
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/x.qcow2",
    "block.0.allocation": 1, "block.0.capacity": 2, "block.0.physical": 3,
}  # fmt: skip


def test_a_running_domain() -> None:
    stats = domain_stats.guest_stats(UID, RUNNING, namespace="team-a", name="web")
    assert (stats.uid, stats.namespace, stats.name, stats.state) == (UID, "team-a", "web",
                                                                      "running")  # fmt: skip
    assert (stats.vcpus, stats.memory_bytes) == (2, 256 * 2**20)
    assert stats.cpu_seconds == 5.25
    assert stats.vcpu_seconds == 2.0  # both vCPU threads
    assert (stats.balloon_bytes, stats.resident_bytes) == (256 * 2**20, 176 * 2**20)
    assert stats.disks == (
        base.DiskStats(device="vda", read_bytes=8_388_608, write_bytes=81920, read_requests=400,
                       write_requests=20, read_seconds=2.0, write_seconds=0.5),
        base.DiskStats(device="hda", read_bytes=14336, write_bytes=0, read_requests=7,
                       write_requests=0, read_seconds=0.001, write_seconds=0.0),
    )  # fmt: skip
    assert stats.nics == (
        base.NicStats(index=0, receive_bytes=1000, transmit_bytes=3000, receive_packets=10,
                      transmit_packets=30, receive_errors=1, transmit_errors=3, receive_drops=2,
                      transmit_drops=4),
    )  # fmt: skip


def test_an_inactive_domain_has_sizes_and_no_counters() -> None:
    stats = domain_stats.guest_stats(UID, SHUTOFF)
    assert (stats.state, stats.vcpus, stats.memory_bytes) == ("shutoff", 2, 256 * 2**20)
    assert (stats.namespace, stats.name) == (None, None)
    assert (stats.cpu_seconds, stats.vcpu_seconds) == (None, None)
    assert (stats.balloon_bytes, stats.resident_bytes) == (None, None)
    assert (stats.disks, stats.nics) == ((), ())


def test_every_libvirt_state_has_a_name_and_an_unknown_one_is_nostate() -> None:
    names = [domain_stats.guest_stats(UID, {"state.state": code}).state for code in range(9)]
    assert names == ["nostate", "running", "blocked", "paused", "shutdown", "shutoff",
                     "crashed", "pmsuspended", "nostate"]  # fmt: skip
