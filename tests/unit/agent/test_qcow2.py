"""The qcow2 header reader on files made by the real qemu-img, and the second line of
defence: what `qemu-img info` itself reports as outside an image."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from stratus_agent.drivers.formats import imageformat, qcow2
from testsupport import qcow2_naming_data_file

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def create(path: Path, *args: str, size: str = "1M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, str(path), size],
                   check=True, capture_output=True)  # fmt: skip
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as stream:
        stream.seek(offset)
        stream.write(data)


def test_self_contained_images_v3_and_v2(tmp_path: Path) -> None:
    for compat, version in (("1.1", 3), ("0.10", 2)):
        header = qcow2.read_header(create(tmp_path / f"{compat}.qcow2", "-o", f"compat={compat}"))
        assert header is not None
        assert (header.version, header.virtual_size) == (version, 2**20)
        assert header.external_references() == []
        assert not header.encrypted


def test_backing_files_v3_and_v2(tmp_path: Path) -> None:
    for compat in ("1.1", "0.10"):
        path = create(tmp_path / f"{compat}.qcow2", "-o", f"compat={compat}", "-F", "raw",
                      "-b", "/etc/hostname", "-u")  # fmt: skip
        header = qcow2.read_header(path)
        assert header is not None
        assert (header.backing_file, header.backing_format) == ("/etc/hostname", "raw")
        assert header.external_references() == ["backing file '/etc/hostname'"]


def test_external_data_file_by_extension_and_by_feature_bit(tmp_path: Path) -> None:
    path = qcow2_naming_data_file(tmp_path / "data.qcow2", "/etc/passwd")
    header = qcow2.read_header(path)
    assert header is not None and header.external_data
    assert header.data_file == "/etc/passwd"
    assert header.external_references() == ["external data file '/etc/passwd'"]
    # The name without the feature bit still counts; so does the bit without the name.
    features = header.incompatible_features
    patch(path, 72, struct.pack(">Q", features & ~qcow2.INCOMPAT_DATA_FILE))
    header = qcow2.read_header(path)
    assert header is not None and not header.external_data
    assert header.external_references() == ["external data file '/etc/passwd'"]
    raw = path.read_bytes()
    at = raw.index(struct.pack(">I", qcow2.EXT_DATA_FILE), 104)
    patch(path, at, struct.pack(">I", 0x12345678))  # an extension QEMU would ignore
    patch(path, 72, struct.pack(">Q", features))
    header = qcow2.read_header(path)
    assert header is not None and header.data_file is None
    assert header.external_references() == ["external data file (flagged in the header)"]


def test_encrypted_images_are_recognised(tmp_path: Path) -> None:
    # A plain image whose header then says LUKS (crypt_method 2, at byte 32), as qemu-img's
    # LUKS images say: making a real one runs QEMU's PBKDF benchmark, which fails on a busy
    # machine ("Unable to get accurate CPU usage") however often it is tried.
    plain = qcow2.read_header(create(tmp_path / "plain.qcow2"))
    assert plain is not None and not plain.encrypted
    path = create(tmp_path / "luks.qcow2")
    patch(path, 32, (2).to_bytes(4, "big"))
    header = qcow2.read_header(path)
    assert header is not None and header.encrypted


def test_not_qcow2_malformed_and_special_files(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    assert qcow2.read_header(raw) is None
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes(create(tmp_path / "whole.qcow2").read_bytes()[:40])
    with pytest.raises(qcow2.Qcow2Error, match="truncated"):
        qcow2.read_header(truncated)
    unknown = create(tmp_path / "unknown.qcow2")
    patch(unknown, 72, struct.pack(">Q", 1 << 40))
    with pytest.raises(qcow2.Qcow2Error, match="unknown qcow2 incompatible features"):
        qcow2.read_header(unknown)
    old = create(tmp_path / "v1.qcow2")
    patch(old, 4, struct.pack(">I", 1))
    with pytest.raises(qcow2.Qcow2Error, match="version 1"):
        qcow2.read_header(old)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(qcow2.Qcow2Error, match="not a regular file"):
        qcow2.read_header(fifo)  # refused without blocking on the open
    link = tmp_path / "link.qcow2"
    link.symlink_to(tmp_path / "whole.qcow2")
    with pytest.raises(OSError):
        qcow2.read_header(link)


def test_overlong_backing_names_still_count_as_references(tmp_path: Path) -> None:
    path = create(tmp_path / "b.qcow2", "-F", "raw", "-b", "/etc/hostname", "-u")
    patch(path, 16, struct.pack(">I", 5000))  # longer than the specification allows
    header = qcow2.read_header(path)
    assert header is not None and header.backing_file == "(outside the header)"
    assert header.external_references()


def test_second_line_reads_qemu_img_info(tmp_path: Path) -> None:
    """What plain `qemu-img info` says about images with external references."""

    def info(path: Path) -> dict[str, object]:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        result: dict[str, object] = json.loads(out)
        return result

    data = qcow2_naming_data_file(tmp_path / "data.qcow2", "/etc/passwd")
    backed = create(tmp_path / "backed.qcow2", "-F", "raw", "-b", "/etc/hostname", "-u")
    plain = create(tmp_path / "plain.qcow2")
    assert imageformat._external_in_info(info(data)) == ["external data file '/etc/passwd'"]
    assert imageformat._external_in_info(info(backed)) == [
        "backing-filename '/etc/hostname'",
        "full-backing-filename '/etc/hostname'",
    ]
    assert imageformat._external_in_info(info(plain)) == []
    children = {"children": [{"name": "file", "info": {}}, {"name": "data-file", "info": {}}]}
    assert imageformat._external_in_info(children) == ["child node 'data-file'"]
