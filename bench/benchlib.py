"""Helpers shared by the bench scripts (a plain module: they run as `python bench/X.py`, so
bench/ is on sys.path and `import benchlib` finds it; mypy finds it through mypy_path)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from lxml import etree


def copy_disks(
    domain: etree._Element, copy_dir: Path, drop: Iterable[str] = ("backingStore",)
) -> None:
    """Give each file-backed disk of `domain` its own copy in `copy_dir`, in place.

    A qcow2 overlay becomes a fresh overlay on the same backing file; any other file (the
    seed) is copied. The disk's source then points at the copy, and its children named in
    `drop` (by default the backingStore chain libvirt wrote into the live XML) are removed.
    Disks without a file source are left as they are."""
    drop = tuple(drop)
    for disk in domain.iterfind("devices/disk"):
        source = disk.find("source")
        if source is None or source.get("file") is None:
            continue
        original = Path(source.get("file", ""))
        copy = copy_dir / original.name
        if original.suffix == ".qcow2":
            info = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(original)],
                                  check=True, capture_output=True, text=True).stdout  # fmt: skip
            backing = json.loads(info)["backing-filename"]
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            backing, str(copy)], check=True)  # fmt: skip
        else:
            shutil.copyfile(original, copy)
        source.set("file", str(copy))
        for tag in drop:
            for child in disk.findall(tag):
                disk.remove(child)
