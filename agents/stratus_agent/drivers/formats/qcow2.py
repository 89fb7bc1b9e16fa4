"""The parts of a qcow2 header that say whether an image reaches outside itself.

Pure Python over the first cluster of the file, written from QEMU's published format
description (docs/interop/qcow2.txt): nothing here opens what a header names. The image
cache reads this before any qemu-img sees a downloaded file, and the eviction of cached
images reads it from the guests' overlays to learn which base image each one uses.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"QFI\xfb"
# Version 2 ends its fixed header here; version 3 says how long its own is.
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
# qcow2 allows clusters of 512 B to 2 MiB; the header and its extensions fit in the first.
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
# The specification caps a backing file name at 1023 bytes.
MAX_BACKING_NAME = 1023

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
KNOWN_INCOMPAT = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2
)  # fmt: skip

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
EXT_ENCRYPTION = 0x0537BE77

_FIXED = struct.Struct(">4sIQIIQI")  # magic .. crypt_method: the fields every version has
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear features; refcount
# order; header length (at offset 72)
_EXT = struct.Struct(">II")


class Qcow2Error(ValueError):
    """The file starts like qcow2 but its header is malformed or uses unknown features."""


@dataclass(frozen=True)
class Header:
    version: int
    virtual_size: int
    cluster_bits: int
    encrypted: bool
    incompatible_features: int
    backing_file: str | None
    backing_format: str | None
    # Named by the header extension; `external_data` is the incompatible feature bit.
    data_file: str | None
    external_data: bool

    def external_references(self) -> list[str]:
        """What this image would make QEMU open besides the file itself, described for a
        message: empty for a self-contained image."""
        found = []
        if self.backing_file is not None:
            found.append(f"backing file {shown_name(self.backing_file)}")
        if self.data_file is not None:
            found.append(f"external data file {shown_name(self.data_file)}")
        elif self.external_data:
            found.append("external data file (flagged in the header)")
        return found


def shown_name(name: str) -> str:
    """A header-supplied name, quoted, escaped and cut short for a message."""
    return repr(name if len(name) <= 120 else name[:120] + "...")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def is_qcow2(start: bytes) -> bool:
    return start[:4] == MAGIC


def read_header(path: Path) -> Header | None:
    """The header of a qcow2 file; None when the file is not qcow2 at all. Reads at most
    one cluster (2 MiB), from a regular file only: a FIFO or device is refused unopened."""
    with _open_regular(path) as stream:
        return parse(stream)


def _open_regular(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Qcow2Error(f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def parse(stream: BinaryIO) -> Header | None:
    fixed = stream.read(_FIXED.size)
    if not is_qcow2(fixed):
        return None
    if len(fixed) < _FIXED.size:
        raise Qcow2Error("truncated qcow2 header")
    _magic, version, backing_offset, backing_size, cluster_bits, size, crypt = _FIXED.unpack(fixed)
    if version not in (2, 3):
        raise Qcow2Error(f"qcow2 version {version} is not supported")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise Qcow2Error(f"qcow2 cluster bits {cluster_bits} out of range")
    cluster_size = 1 << cluster_bits
    stream.seek(0)
    first = stream.read(cluster_size)
    incompatible, header_length = 0, V2_HEADER_LENGTH
    if version == 3:
        if len(first) < V2_HEADER_LENGTH + _V3.size:
            raise Qcow2Error("truncated qcow2 v3 header")
        incompatible, _compat, _autoclear, _order, header_length = _V3.unpack_from(
            first, V2_HEADER_LENGTH
        )
        if header_length < V3_MIN_HEADER_LENGTH or header_length % 8 or header_length > len(first):
            raise Qcow2Error(f"qcow2 header length {header_length} is invalid")
        if incompatible & ~KNOWN_INCOMPAT:
            raise Qcow2Error(f"unknown qcow2 incompatible features {incompatible:#x}")
    backing_file = None
    if backing_offset or backing_size:
        if backing_size > MAX_BACKING_NAME or backing_offset + backing_size > len(first):
            # Still a reference: refuse it as such, whatever its name is.
            backing_file = "(outside the header)"
        else:
            backing_file = _text(first[backing_offset : backing_offset + backing_size])
    extensions = _extensions(first, header_length)
    backing_format = extensions.get(EXT_BACKING_FORMAT)
    data_file = extensions.get(EXT_DATA_FILE)
    return Header(
        version=version,
        virtual_size=size,
        cluster_bits=cluster_bits,
        encrypted=crypt != 0 or EXT_ENCRYPTION in extensions,
        incompatible_features=incompatible,
        backing_file=backing_file,
        backing_format=_text(backing_format) if backing_format is not None else None,
        data_file=_text(data_file) if data_file is not None else None,
        external_data=bool(incompatible & INCOMPAT_DATA_FILE),
    )


def _extensions(first: bytes, offset: int) -> dict[int, bytes]:
    """Header extensions by type, from `offset` to the end marker; all within the first
    cluster, each padded to 8 bytes."""
    found: dict[int, bytes] = {}
    while True:
        if offset + _EXT.size > len(first):
            raise Qcow2Error("qcow2 header extensions run past the first cluster")
        kind, length = _EXT.unpack_from(first, offset)
        offset += _EXT.size
        if kind == EXT_END:
            return found
        if offset + length > len(first):
            raise Qcow2Error(f"qcow2 header extension {kind:#x} runs past the first cluster")
        found.setdefault(kind, first[offset : offset + length])
        offset += (length + 7) & ~7
