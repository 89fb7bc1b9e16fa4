"""A guest's files on the node: private to their owner, and a delete that never stops at
one file it cannot remove."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from stratus_agent.drivers.seed import nocloud as seed
from stratus_agent.drivers.storage import file as disks
from stratus_agent.errors import ProvisioningError


async def test_a_disk_or_seed_that_cannot_be_removed_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver, drive = disks.FileDiskDriver(tmp_path), seed.NoCloudSeed(tmp_path)
    uid = str(uuid.uuid4())
    driver.root_disk(uid).write_bytes(b"disk")
    drive.path(uid).mkdir()  # unlink() cannot remove a directory
    await driver.remove(uid)
    await drive.remove(uid)
    assert not driver.root_disk(uid).exists()
    assert "cannot remove" in caplog.text
    await driver.remove(uid)  # idempotent


async def test_images_in_use_are_the_overlays_backing_files(tmp_path: Path) -> None:
    driver = disks.FileDiskDriver(tmp_path)
    image = str(uuid.uuid4())
    assert await driver.images_in_use() == set()
    overlay = driver.root_disk(str(uuid.uuid4()))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-u",
         "-b", f"/var/lib/stratus/images/{image}.img", str(overlay), "1M"],
        check=True,
    )  # fmt: skip
    (tmp_path / "not-an-overlay.qcow2").write_bytes(b"x")
    assert await driver.images_in_use() == {image}


def test_seed_iso_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    # A leftover temporary file, world-readable: it must not stay so.
    leftover = tmp_path / ".seed.iso.tmp"
    leftover.write_bytes(b"old")
    leftover.chmod(0o644)
    owner = (os.getuid(), os.getgid())  # chown to anyone else needs root; see test_isolation
    seed.write_seed_iso(path, {"user-data": b"secret"}, owner)
    st = path.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, *owner)
    assert seed.read_seed_iso(path) == {"user-data": b"secret"}


def test_make_private_sets_0600(tmp_path: Path) -> None:
    path = tmp_path / "overlay.qcow2"
    path.write_bytes(b"x")
    path.chmod(0o644)
    disks.make_private(path, None)
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_root_disk_grows_and_never_shrinks(tmp_path: Path) -> None:
    """qemu-img on real files; the overlay's backing image need not exist for a resize."""
    driver = disks.FileDiskDriver(tmp_path)
    uid = str(uuid.uuid4())
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(driver.root_disk(uid)), "1M"], check=True
    )
    await driver.grow(uid, 4 * 2**20)
    await driver.grow(uid, 4 * 2**20)  # already that size: nothing to do
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(driver.root_disk(uid))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert '"virtual-size": 4194304' in info
    with pytest.raises(ProvisioningError, match="shrinking it to 1048576 would lose data"):
        await driver.grow(uid, 2**20)
