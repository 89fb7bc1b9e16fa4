"""A guest's files on the node: private to their owner, and a delete that never stops at
one file it cannot remove."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from stratus_agent import disks, seed
from stratus_agent.disks import GuestFiles


def test_remove_skips_what_it_cannot_remove_and_removes_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = GuestFiles(tmp_path)
    uid = str(uuid.uuid4())
    files.root_disk(uid).write_bytes(b"disk")
    files.console_log(uid).mkdir()  # unlink() cannot remove a directory
    removed = files.remove(uid)
    assert removed == [files.root_disk(uid)]
    assert not files.root_disk(uid).exists()
    assert "cannot remove" in caplog.text
    assert files.remove(uid) == []  # idempotent


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
