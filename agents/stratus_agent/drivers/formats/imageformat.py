"""What a downloaded image is, decided without following anything it names.

Two lines of defence against an image that points outside itself (a backing file, an
external data file: another guest's disk, /etc/passwd, a FIFO that blocks forever):
first our own reading of the file's first bytes and qcow2 header, before any qemu-img runs;
then `qemu-img info` on a node description that opens the file alone (no backing, a null
data file, the driver chosen by us rather than probed), whose JSON is checked again.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratus_agent import process
from stratus_agent.drivers.formats import qcow2
from stratus_agent.errors import ProvisioningError
from stratus_api.reasons import GuestFailure

SUPPORTED = ("qcow2", "raw")
SNIFF_BYTES = 4096
# Formats QEMU would recognise, by their magic bytes at an offset: none is supported, and
# several (vmdk extents, qed and qcow backing files, parallels descriptors) can name
# files outside the image, so they are refused before qemu-img ever opens them.
MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"conectix", "vpc"),
    (0, b"vhdxfile", "vhdx"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
)
DMG_TRAILER = b"koly"  # 512 bytes before the end of an Apple disk image
QEMU_IMG_TIMEOUT = 60.0


@dataclass(frozen=True)
class Detected:
    format: str
    virtual_size: int


@dataclass(frozen=True)
class _Probe:
    format: str
    header: qcow2.Header | None
    size: int


def _fail(reason: GuestFailure, name: str, text: str) -> ProvisioningError:
    return ProvisioningError(reason, f"image {name}: {text}")


def _probe(path: Path, name: str) -> _Probe:
    """The format by magic bytes (blocking: run in a thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _fail(GuestFailure.IMAGE_UNREADABLE, name, "not a regular file")
        start = stream.read(SNIFF_BYTES)
        tail = b""
        if info.st_size >= 512:
            stream.seek(info.st_size - 512)
            tail = stream.read(4)
        if qcow2.is_qcow2(start):
            if start[4:8] == b"\x00\x00\x00\x01":
                return _Probe("qcow", None, info.st_size)
            stream.seek(0)
            try:
                header = qcow2.parse(stream)
            except qcow2.Qcow2Error as exc:
                raise _fail(GuestFailure.IMAGE_UNREADABLE, name, f"invalid qcow2: {exc}") from exc
            return _Probe("qcow2", header, info.st_size)
    for offset, magic, fmt in MAGICS:
        if start[offset : offset + len(magic)] == magic:
            return _Probe(fmt, None, info.st_size)
    if tail == DMG_TRAILER:
        return _Probe("dmg", None, info.st_size)
    return _Probe("raw", None, info.st_size)


def _node(path: Path, fmt: str) -> str:
    """A qemu block node description that opens `path` and nothing else."""
    node: dict[str, Any] = {
        "driver": fmt,
        "file": {"driver": "file", "filename": str(path.absolute())},
    }
    if fmt == "qcow2":
        node["backing"] = None
        node["data-file"] = {"driver": "null-co"}
    return "json:" + json.dumps(node, separators=(",", ":"))


def _external_in_info(info: dict[str, Any]) -> list[str]:
    """Second line: what qemu-img itself reports as outside the file."""
    found = [
        f"{key} {qcow2.shown_name(str(info[key]))}"
        for key in ("backing-filename", "full-backing-filename")
        if info.get(key)
    ]
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        found.append(f"external data file {qcow2.shown_name(str(data['data-file']))}")
    for child in info.get("children") or []:
        if isinstance(child, dict) and child.get("name") != "file":
            found.append(f"child node {qcow2.shown_name(str(child.get('name')))}")
    return found


async def inspect(path: Path, name: str, expected: str | None) -> Detected:
    """The image's format and virtual size; raises ProvisioningError for an image that
    refers outside itself, an unsupported or unexpected format, or an unreadable file."""
    probe = await asyncio.to_thread(_probe, path, name)
    if probe.header is not None:
        refs = probe.header.external_references()
        if refs:
            raise _fail(
                GuestFailure.IMAGE_HAS_EXTERNAL_REFERENCE,
                name,
                f"refused, it refers to files outside itself: {', '.join(refs)}",
            )
        if probe.header.encrypted:
            raise _fail(
                GuestFailure.IMAGE_FORMAT_UNSUPPORTED, name, "encrypted qcow2 is not supported"
            )
    if probe.format not in SUPPORTED:
        raise _fail(
            GuestFailure.IMAGE_FORMAT_UNSUPPORTED,
            name,
            f"format {probe.format} is not supported (only {' and '.join(SUPPORTED)})",
        )
    if expected is not None and expected != probe.format:
        raise _fail(
            GuestFailure.IMAGE_FORMAT_MISMATCH,
            name,
            f"spec.format is {expected} but the file is {probe.format}",
        )
    try:
        out = await process.run(
            "qemu-img", "info", "--output=json", _node(path, probe.format),
            timeout=QEMU_IMG_TIMEOUT,
        )  # fmt: skip
        info = json.loads(out.stdout)
    except process.CommandError as exc:
        last = (exc.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise _fail(
            GuestFailure.IMAGE_UNREADABLE, name, f"qemu-img cannot read it ({last})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise _fail(GuestFailure.IMAGE_UNREADABLE, name, "qemu-img info gave no JSON") from exc
    refs = _external_in_info(info)
    if refs:
        raise _fail(
            GuestFailure.IMAGE_HAS_EXTERNAL_REFERENCE,
            name,
            f"refused, it refers to files outside itself: {', '.join(refs)}",
        )
    if info.get("format") != probe.format or info.get("encrypted"):
        raise _fail(
            GuestFailure.IMAGE_UNREADABLE,
            name,
            f"qemu-img reads it as {info.get('format')}, not as {probe.format}",
        )
    return Detected(probe.format, int(info["virtual-size"]))
