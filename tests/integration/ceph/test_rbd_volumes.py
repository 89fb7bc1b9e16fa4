"""The RBD volume driver against the session's real Ceph (cephx): blank volumes, volumes
cloned from an Image imported once, snapshots and restores, copies, refusals; and nothing
left in the pool afterwards. What is checked is read back with the rbd binding and the `rbd`
CLI (given the driver's conf and keyring files, never the key)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import SecretStr

from stratus_agent.base import CachedImage
from stratus_agent.drivers.formats import qcow2
from stratus_agent.drivers.storage.rbd_volumes import RbdVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure
from stratus_api.volume_wire import CephAccess
from testsupport import build_test_image

MiB, GiB = 2**20, 2**30


def cached(path: Path) -> CachedImage:
    header = qcow2.read_header(path)
    assert header is not None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return CachedImage(str(uuid.uuid4()), path, "qcow2", header.virtual_size, digest)


@pytest.fixture(scope="module")
def test_image() -> CachedImage:
    """The project's test image (a bootable qcow2), as the image store would hand it over."""
    return cached(build_test_image())


@pytest.fixture
async def driver(ceph_access: CephAccess, tmp_path: Path) -> AsyncIterator[RbdVolumeDriver]:
    made = RbdVolumeDriver(ceph_access, tmp_path)
    yield made
    made.close()


def rbd_cli(driver: RbdVolumeDriver, *args: str) -> Any:
    """`rbd ARGS --format json` with the driver's own conf and keyring files."""
    done = subprocess.run(
        ["rbd", "-c", str(driver.conf_path), "--id", driver.access.user, *args, "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.fixture
async def pool(driver: RbdVolumeDriver, rados: ModuleType) -> AsyncIterator[Any]:
    """An ioctx on the pool, as the driver's user, for checking what the driver made."""
    await driver.list()  # connects, writing its conf and keyring files
    cluster = rados.Rados(conffile=str(driver.conf_path), rados_id=driver.access.user,
                          conf={"client_mount_timeout": "15"})  # fmt: skip
    cluster.connect()
    try:
        with cluster.open_ioctx(driver.access.pool) as ioctx:
            yield ioctx
    finally:
        cluster.shutdown()


def new_uid() -> str:
    return str(uuid.uuid4())


async def test_a_blank_volume_is_made_grown_listed_counted_and_removed(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType
) -> None:
    uid = new_uid()
    seen: list[int] = []
    stored = await driver.create(uid, 64 * MiB, progress=seen.append)
    assert (stored.size_bytes, stored.location) == (64 * MiB, f"stratus/volume-{uid}")
    assert seen[0] == 0 and seen[-1] == 100
    with rbd.Image(pool, f"volume-{uid}", read_only=True) as image:
        assert image.features() & rbd.RBD_FEATURE_LAYERING
    assert (await driver.create(uid, 128 * MiB)).size_bytes == 64 * MiB  # kept as it is

    assert (await driver.grow(uid, 96 * MiB)).size_bytes == 96 * MiB
    assert [v.uid for v in await driver.list()] == [uid]
    usage = await driver.usage()
    assert usage.used_bytes == 96 * MiB
    # The monitor learns space from a manager (ceph-mgr), which the local cluster has not:
    # it reports 0 for both, and the driver passes that on as it is.
    assert usage.free_bytes <= usage.capacity_bytes

    attached = await driver.attach(uid, None)
    assert attached.rbd is not None and attached.path == ""
    assert (attached.rbd.pool, attached.rbd.image) == ("stratus", f"volume-{uid}")
    assert attached.rbd.monitors == tuple(driver.access.monitors)

    assert await driver.remove(uid) is True
    assert await driver.remove(uid) is False
    assert await driver.list() == []
    with pytest.raises(ProvisioningError) as missing:
        await driver.attach(uid, None)
    assert missing.value.reason is GuestFailure.VOLUME_NOT_FOUND


async def test_a_shareable_volume_has_no_exclusive_lock_for_guests_to_pass_around(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType, test_image: CachedImage
) -> None:
    blank, cloned = new_uid(), new_uid()
    await driver.create(blank, 8 * MiB, shareable=True)
    await driver.create(cloned, test_image.virtual_size, image=test_image, shareable=True)
    for uid in (blank, cloned):
        with rbd.Image(pool, f"volume-{uid}", read_only=True) as image:
            features = image.features()
        assert features & rbd.RBD_FEATURE_LAYERING
        assert not features & (rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP)
        assert await driver.remove(uid)
    await driver.release_image(test_image.uid)


async def test_volumes_from_an_image_are_clones_of_its_base_imported_once(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType, test_image: CachedImage
) -> None:
    first, second = new_uid(), new_uid()
    await driver.create(first, test_image.virtual_size, image=test_image)
    base_image = f"image-{test_image.uid}"
    with rbd.Image(pool, base_image, read_only=True) as image:
        [base] = image.list_snaps()
        assert base["name"] == "base" and image.is_protected_snap("base")
        created = image.create_timestamp()
    with rbd.Image(pool, f"volume-{first}", read_only=True) as volume:
        assert volume.parent_info() == ("stratus", base_image, "base")
    info = rbd_cli(driver, "info", f"stratus/volume-{first}")
    assert info["parent"]["image"] == base_image and info["parent"]["snapshot"] == "base"
    assert rbd_cli(driver, "info", f"stratus/{base_image}@base")["protected"] == "true"

    # The second volume, larger, is one more clone: the image is not imported again.
    await driver.create(second, test_image.virtual_size + GiB, image=test_image)
    with rbd.Image(pool, base_image, read_only=True) as image:
        [again] = image.list_snaps()
        assert (again["id"], image.create_timestamp()) == (base["id"], created)
    with rbd.Image(pool, f"volume-{second}", read_only=True) as volume:
        assert volume.parent_info()[1:] == (base_image, "base")
        assert volume.size() == test_image.virtual_size + GiB

    # The guest's data is the image's: the first MiB of each volume equals the base.
    with rbd.Image(pool, base_image, snapshot="base", read_only=True) as image:
        start = image.read(0, MiB)
    for uid in (first, second):
        with rbd.Image(pool, f"volume-{uid}", read_only=True) as volume:
            assert volume.read(0, MiB) == start

    # The Image deleted while clones of it remain: the import stays, marked in the pool,
    # and goes with the last clone (whichever node removes it: the mark is in Ceph).
    assert await driver.release_image(test_image.uid) is False
    assert await driver.remove(first)
    assert base_image in rbd.RBD().list(pool)
    assert await driver.remove(second)
    assert base_image not in rbd.RBD().list(pool)
    assert await driver.release_image(test_image.uid) is False  # nothing left to do


async def test_two_nodes_importing_one_image_at_once_share_one_copy(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType, test_image: CachedImage,
    ceph_access: CephAccess, tmp_path: Path,
) -> None:  # fmt: skip
    other_node = RbdVolumeDriver(ceph_access, tmp_path / "other-node")
    try:
        made = await asyncio.gather(*(
            node.create(new_uid(), test_image.virtual_size, image=test_image)
            for node in (driver, other_node)
        ))  # fmt: skip
        # One copy, imported by the node that took the pool's import lock first; the other
        # waited for it and cloned it. The lock is gone.
        names = rbd.RBD().list(pool)
        assert [n for n in names if n.startswith(f"image-{test_image.uid}")] == [
            f"image-{test_image.uid}"
        ]
        assert f"import-{test_image.uid}" not in {o.key for o in pool.list_objects()}
        for volume in made:
            with rbd.Image(pool, f"volume-{volume.uid}", read_only=True) as image:
                assert image.parent_info()[1] == f"image-{test_image.uid}"
            assert await driver.remove(volume.uid)
        await driver.release_image(test_image.uid)
    finally:
        other_node.close()


async def test_clone_time_does_not_grow_with_the_image(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType, tmp_path: Path
) -> None:
    """1 GiB and 20 GiB images: each volume is a clone, made in about the same time."""
    timings = {}
    for gib in (1, 20):
        path = tmp_path / f"{gib}g.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{gib}G"],
                       check=True)  # fmt: skip
        image = cached(path)
        await driver.create(new_uid(), image.virtual_size, image=image)  # imports it
        uid = new_uid()
        started = time.monotonic()
        await driver.create(uid, image.virtual_size, image=image)
        timings[gib] = time.monotonic() - started
        with rbd.Image(pool, f"volume-{uid}", read_only=True) as volume:
            assert volume.parent_info()[1] == f"image-{image.uid}"
            assert volume.size() == gib * GiB
        for stored in await driver.list():
            await driver.remove(stored.uid)
        assert await driver.release_image(image.uid)
    print(
        f"\nclone of a volume from a 1 GiB image: {timings[1]:.3f} s, 20 GiB: {timings[20]:.3f} s"
    )
    assert timings[20] < 2 + 3 * timings[1]  # a bound, not a benchmark: no copy happened


async def test_a_snapshot_restores_the_data_as_it_was(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType
) -> None:
    volume, snapshot, restored = new_uid(), new_uid(), new_uid()
    await driver.create(volume, 32 * MiB)
    with rbd.Image(pool, f"volume-{volume}") as image:
        image.write(b"before", 5 * MiB)
    taken = await driver.snapshot(volume, snapshot)
    assert taken.location == f"stratus/volume-{volume}@snap-{snapshot}"
    assert await driver.snapshot(volume, snapshot) == taken  # kept as it is
    with rbd.Image(pool, f"volume-{volume}") as image:
        image.write(b"after!", 5 * MiB)
        assert image.is_protected_snap(f"snap-{snapshot}")
    [listed] = await driver.list_snapshots()
    assert (listed.uid, listed.volume_uid, listed.size_bytes) == (snapshot, volume, 32 * MiB)

    with pytest.raises(ProvisioningError) as small:
        await driver.create(restored, 16 * MiB, snapshot_of=snapshot)
    assert small.value.reason is GuestFailure.DISK_TOO_SMALL
    await driver.create(restored, 48 * MiB, snapshot_of=snapshot)
    with rbd.Image(pool, f"volume-{restored}") as image:
        assert image.parent_info()[1:] == (f"volume-{volume}", f"snap-{snapshot}")
        assert image.read(5 * MiB, 6) == b"before" and image.size() == 48 * MiB

    # The volume cannot go while it has snapshots; removing the snapshot flattens the
    # restored volume, which keeps its data.
    with pytest.raises(ProvisioningError) as held:
        await driver.remove(volume)
    assert held.value.reason is GuestFailure.VOLUME_IN_USE
    assert await driver.remove_snapshot(snapshot) is True
    assert await driver.remove_snapshot(snapshot) is False
    with rbd.Image(pool, f"volume-{restored}", read_only=True) as image:
        with pytest.raises(rbd.ImageNotFound):
            image.parent_info()
        assert image.read(5 * MiB, 6) == b"before"
    assert await driver.remove(volume) and await driver.remove(restored)


async def test_a_clone_of_a_volume_is_a_standalone_copy(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType
) -> None:
    source, copy = new_uid(), new_uid()
    await driver.create(source, 16 * MiB)
    with rbd.Image(pool, f"volume-{source}") as image:
        image.write(b"source data", MiB)
    await driver.create(copy, 24 * MiB, clone_of=source)
    with rbd.Image(pool, f"volume-{copy}", read_only=True) as image:
        with pytest.raises(rbd.ImageNotFound):
            image.parent_info()
        assert image.read(MiB, 11) == b"source data" and image.size() == 24 * MiB
    with rbd.Image(pool, f"volume-{source}", read_only=True) as image:
        assert list(image.list_snaps()) == []  # the temporary snapshot is gone
    assert await driver.remove(source)
    with rbd.Image(pool, f"volume-{copy}", read_only=True) as image:
        assert image.read(MiB, 11) == b"source data"
    assert await driver.remove(copy)


async def test_shrinking_is_refused(driver: RbdVolumeDriver, test_image: CachedImage) -> None:
    uid = new_uid()
    with pytest.raises(ProvisioningError) as small:
        await driver.create(uid, test_image.virtual_size - MiB, image=test_image)
    assert small.value.reason is GuestFailure.DISK_TOO_SMALL
    await driver.create(uid, 32 * MiB)
    with pytest.raises(ProvisioningError) as shrink:
        await driver.grow(uid, 16 * MiB)
    assert shrink.value.reason is GuestFailure.DISK_TOO_SMALL
    assert (await driver.list())[0].size_bytes == 32 * MiB
    assert await driver.remove(uid)


async def test_a_wrong_key_fails_soon_and_clearly_without_the_key(
    ceph_access: CephAccess, tmp_path: Path
) -> None:
    wrong = subprocess.run(
        ["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True
    ).stdout.strip()
    access = ceph_access.model_copy(update={"key": SecretStr(wrong)})
    driver = RbdVolumeDriver(access, tmp_path, mount_timeout=3)
    started = time.monotonic()
    with pytest.raises(ProvisioningError) as refused:
        await driver.list()
    took = time.monotonic() - started
    text = f"{refused.value!s} {refused.value!r} {refused.value.__cause__!r}"
    assert wrong not in text and ceph_access.key.get_secret_value() not in text
    assert "client.stratus" in text and "refused" in text
    assert took < 15, f"the mount timeout is 3 s, and the connect took {took:.1f} s"
    keyring = driver.keyring_path.stat()
    assert keyring.st_mode & 0o777 == 0o600
    assert wrong not in driver.conf_path.read_text()
    print(f"\nwrong key refused after {took:.1f} s")


async def test_nothing_is_left_in_the_pool(
    driver: RbdVolumeDriver, pool: Any, rbd: ModuleType
) -> None:
    """Last: every test removed what it made, partials and imported images included."""
    assert await driver.list() == [] and await driver.list_snapshots() == []
    assert rbd.RBD().list(pool) == []
