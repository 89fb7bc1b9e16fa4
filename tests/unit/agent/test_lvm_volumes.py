"""LvmVolumeDriver at the command level: the lvm command lines it runs and what it makes of
their answers, against EmulatedLvm (this kernel has no device-mapper, so no real thin
volume can exist here; see tests/lvm_emulator.py for what that leaves unshown). Data on real
block devices and a guest using them: tests/integration/agent/test_lvm_guest.py."""

from __future__ import annotations

import uuid

import pytest

from lvm_emulator import EXTENT, EmulatedLvm
from stratus_agent.config import LvmConfig
from stratus_agent.drivers.storage.lvm_volumes import LvmVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure
from stratus_api.v1alpha1.volume import VolumeBackend

VG, POOL = "vg-data", "stratus-thin"


def new_uid() -> str:
    return str(uuid.uuid4())


def driver(lvm: EmulatedLvm) -> LvmVolumeDriver:
    return LvmVolumeDriver(LvmConfig(volume_group=VG, thin_pool=POOL), run=lvm)


@pytest.fixture
def lvm() -> EmulatedLvm:
    return EmulatedLvm(VG, POOL, 64 * 2**30)


async def test_a_blank_volume_is_a_thin_volume_of_the_pool_made_under_a_partial_name(
    lvm: EmulatedLvm,
) -> None:
    uid = new_uid()
    made = await driver(lvm).create(uid, 10 * 2**20)

    name = f"volume-{uid}"
    assert lvm.calls[1:] == [
        ("lvcreate", "--yes", "--type", "thin", "--virtualsize", f"{10 * 2**20}b",
         "--thinpool", f"{VG}/{POOL}", "--name", f"{name}.partial", "--addtag", "stratus"),
        ("lvrename", VG, f"{name}.partial", name),
        lvm.calls[0],  # lvs again: the size LVM gave it
    ]  # fmt: skip
    # LVM rounds up to whole extents; status says what the guest will see.
    assert (made.uid, made.size_bytes, made.location) == (uid, 3 * EXTENT, f"{VG}/{name}")

    calls = len(lvm.calls)
    assert await driver(lvm).create(uid, 10 * 2**20) == made  # kept as it is
    assert len(lvm.calls) == calls + 1  # one lvs, nothing made


async def test_a_crashed_attempt_is_removed_and_never_listed(lvm: EmulatedLvm) -> None:
    uid, kept = new_uid(), new_uid()
    lvs = driver(lvm)
    await lvs.create(kept, EXTENT)
    await lvm(("lvcreate", "--yes", "--type", "thin", "--virtualsize", f"{EXTENT}b",
               "--thinpool", f"{VG}/{POOL}", "--name", f"volume-{uid}.partial"))  # fmt: skip
    await lvm(("lvcreate", "--yes", "--type", "thin", "--virtualsize", f"{EXTENT}b",
               "--thinpool", f"{VG}/{POOL}", "--name", "someone-elses"))  # fmt: skip

    assert [v.uid for v in await lvs.list()] == [kept]
    await lvs.create(uid, EXTENT)
    assert ("lvremove", "--yes", f"{VG}/volume-{uid}.partial") in lvm.calls
    assert sorted(v.uid for v in await lvs.list()) == sorted([kept, uid])
    assert "someone-elses" in lvm.lvs  # not ours: never touched


async def test_clones_and_restores_are_thin_snapshots_grown_to_the_size_asked(
    lvm: EmulatedLvm,
) -> None:
    lvs = driver(lvm)
    source, snap, clone, restored = new_uid(), new_uid(), new_uid(), new_uid()
    await lvs.create(source, 2 * EXTENT)
    taken = await lvs.snapshot(source, snap)
    assert (taken.volume_uid, taken.size_bytes, taken.location) == (
        source, 2 * EXTENT, f"{VG}/snap-{snap}"
    )  # fmt: skip
    assert lvm.lvs[f"snap-{snap}"].tags == ["stratus", f"stratus-of={source}"]

    await lvs.create(clone, 2 * EXTENT, clone_of=source)
    grown = await lvs.create(restored, 5 * EXTENT, snapshot_of=snap)
    assert ("lvcreate", "--yes", "--snapshot", "--name", f"volume-{restored}.partial",
            "--addtag", "stratus", f"{VG}/snap-{snap}") in lvm.calls  # fmt: skip
    assert ("lvextend", "--size", f"{5 * EXTENT}b", f"{VG}/volume-{restored}.partial") in lvm.calls
    assert grown.size_bytes == 5 * EXTENT

    # A snapshot outlives its volume, and still says which one it was taken of.
    assert await lvs.remove(source)
    assert [(s.uid, s.volume_uid) for s in await lvs.list_snapshots()] == [(snap, source)]

    with pytest.raises(ProvisioningError) as smaller:
        await lvs.create(new_uid(), EXTENT, snapshot_of=snap)
    assert smaller.value.reason == GuestFailure.DISK_TOO_SMALL
    with pytest.raises(ProvisioningError) as missing:
        await lvs.create(new_uid(), 2 * EXTENT, clone_of=source)
    assert missing.value.reason == GuestFailure.VOLUME_NOT_FOUND
    assert f"source volume {source} is not in {VG}" in str(missing.value)


async def test_grow_extends_and_never_shrinks(lvm: EmulatedLvm) -> None:
    lvs, uid = driver(lvm), new_uid()
    await lvs.create(uid, 2 * EXTENT)
    assert (await lvs.grow(uid, 3 * EXTENT)).size_bytes == 3 * EXTENT
    with pytest.raises(ProvisioningError) as shrink:
        await lvs.grow(uid, EXTENT)
    assert shrink.value.reason == GuestFailure.DISK_TOO_SMALL
    assert lvm.lvs[f"volume-{uid}"].size == 3 * EXTENT


async def test_remove_says_whether_there_was_anything(lvm: EmulatedLvm) -> None:
    lvs, uid, snap = driver(lvm), new_uid(), new_uid()
    await lvs.create(uid, EXTENT)
    await lvs.snapshot(uid, snap)
    assert await lvs.remove_snapshot(snap) and not await lvs.remove_snapshot(snap)
    assert await lvs.remove(uid) and not await lvs.remove(uid)
    assert set(lvm.lvs) == {POOL}


async def test_usage_is_the_thin_pools_with_what_volumes_and_snapshots_promise(
    lvm: EmulatedLvm,
) -> None:
    lvs, uid = driver(lvm), new_uid()
    await lvs.create(uid, 2 * EXTENT)
    await lvs.snapshot(uid, new_uid())
    usage = await lvs.usage()
    assert (usage.backend, usage.capacity_bytes, usage.used_bytes, usage.free_bytes) == (
        VolumeBackend.LVM, 64 * 2**30, 4 * EXTENT, 64 * 2**30
    )  # fmt: skip
    assert usage.pool == f"{VG}/{POOL}" and usage.pool_uid is None


@pytest.mark.parametrize(
    ("pool", "zeroing", "says"),
    [
        ("elsewhere", True, f"thin pool {VG}/{POOL} does not exist: make it with `lvcreate"),
        (POOL, False, f"thin pool {VG}/{POOL} does not zero new blocks, so a new volume could "
                      "read a deleted one's data"),
    ],
)  # fmt: skip
async def test_a_missing_or_leaking_thin_pool_is_refused_by_name(
    pool: str, zeroing: bool, says: str
) -> None:
    lvs = driver(EmulatedLvm(VG, pool, 2**30, zeroing=zeroing))
    for call in (lvs.usage(), lvs.create(new_uid(), EXTENT)):
        with pytest.raises(ProvisioningError) as refused:
            await call
        assert refused.value.reason == GuestFailure.BACKEND_UNSUPPORTED
        assert says in str(refused.value)


async def test_what_is_not_in_the_group_is_said_missing(lvm: EmulatedLvm) -> None:
    lvs, uid = driver(lvm), new_uid()
    with pytest.raises(ProvisioningError) as missing:
        await lvs.grow(uid, EXTENT)
    assert missing.value.reason == GuestFailure.VOLUME_NOT_FOUND
    with pytest.raises(ProvisioningError) as attach:
        await lvs.attach(uid, None)
    assert attach.value.reason == GuestFailure.VOLUME_NOT_FOUND
    await lvs.create(uid, EXTENT)
    with pytest.raises(ProvisioningError) as taken:
        await lvs.snapshot(new_uid(), new_uid())
    assert taken.value.reason == GuestFailure.VOLUME_NOT_FOUND
