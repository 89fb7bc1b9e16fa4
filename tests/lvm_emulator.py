"""An emulation of the lvm(8) commands LvmVolumeDriver runs, for a machine without
device-mapper (this one: lvcreate of a thin pool or volume fails there).

It answers exactly the command lines the driver uses, refusing any other, and keeps thin
pool metadata as LVM would: names, sizes rounded up to 4 MiB extents, tags, activation
skip on snapshots, "Failed to find logical volume" for a missing one. With `data_dir`, each
logical volume's data is a real block device: a sparse file on a loop device, reached as
/dev/VG/NAME (a symlink, as udev makes it), so qemu-img, QEMU and libvirt work on real
block devices. A snapshot copies the file (LVM shares blocks instead; what a guest sees is
the same).

What it cannot show: that real LVM accepts these command lines and behaves the same. That
part is checked against a real volume group on a loop device, as far as a kernel without
device-mapper lets (tests/integration/agent/test_lvm_guest.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from stratus_agent import process

EXTENT = 4 * 2**20


@dataclass
class EmulatedLv:
    size: int
    attr: str
    tags: list[str] = field(default_factory=list)
    pool: str = ""
    loop: str = ""  # the loop device while active, with data_dir


class EmulatedLvm:
    def __init__(
        self, vg: str, pool: str, pool_size: int, *, zeroing: bool = True,
        data_dir: Path | None = None,
    ) -> None:  # fmt: skip
        self.vg, self.pool_name = vg, pool
        self.lvs: dict[str, EmulatedLv] = {
            pool: EmulatedLv(size=pool_size, attr="twi-aotz--" if zeroing else "twi-aot---")
        }
        self.data_dir = data_dir
        self.calls: list[tuple[str, ...]] = []

    @property
    def dev_dir(self) -> Path:
        return Path("/dev") / self.vg

    def _file(self, name: str) -> Path:
        assert self.data_dir is not None
        return self.data_dir / f"{name}.img"

    async def __call__(self, args: tuple[str, ...]) -> str:
        self.calls.append(args)
        command, rest = args[0], list(args[1:])
        return await asyncio.to_thread(getattr(self, "_" + command), rest)

    def _fail(self, args: list[str], message: str, code: int = 5) -> None:
        raise process.CommandError(("lvm", *args), code, f"  {message}\n")

    def _find(self, target: str) -> tuple[str, EmulatedLv]:
        vg, _, name = target.partition("/")
        assert vg == self.vg, target
        lv = self.lvs.get(name)
        if lv is None:
            self._fail([target], f'Failed to find logical volume "{target}"')
        assert lv is not None
        return name, lv

    # -- commands, each with the exact options the driver passes --------------------------

    def _lvs(self, args: list[str]) -> str:
        assert args[:6] == ["--reportformat", "json", "--units", "b", "--nosuffix", "-o"], args
        assert args[7:] == [self.vg], args
        rows = []
        for name, lv in self.lvs.items():
            used = self._allocated() if name == self.pool_name else 0
            rows.append({
                "lv_name": name, "lv_size": str(lv.size), "lv_attr": lv.attr,
                "lv_tags": ",".join(lv.tags), "pool_lv": lv.pool,
                "data_percent": f"{100 * used / lv.size:.2f}" if lv.attr[0] in "tV" else "",
            })  # fmt: skip
        return json.dumps({"report": [{"lv": rows}]})

    def _allocated(self) -> int:
        if self.data_dir is None:
            return 0
        return sum(self._file(n).stat().st_blocks * 512 for n in self.lvs if n != self.pool_name)

    def _lvcreate(self, args: list[str]) -> str:
        assert args[0] == "--yes", args
        opts = _options(args[1:], flags={"--snapshot"})
        name = opts["--name"][0]
        if name in self.lvs:
            self._fail(args, f'Logical Volume "{name}" already exists in volume group')
        tags = opts.get("--addtag", [])
        if "--snapshot" in opts:
            origin_name, origin = self._find(opts["positional"][0])
            self.lvs[name] = EmulatedLv(
                size=origin.size, attr="Vwi---tz-k", tags=tags, pool=origin.pool
            )
            if self.data_dir is not None:
                subprocess.run(["cp", "--sparse=always", self._file(origin_name),
                                self._file(name)], check=True)  # fmt: skip
            return ""
        assert opts["--type"] == ["thin"] and opts["--thinpool"] == [
            f"{self.vg}/{self.pool_name}"
        ], args
        size = _rounded(opts["--virtualsize"][0])
        self.lvs[name] = EmulatedLv(size=size, attr="Vwi-a-tz--", tags=tags, pool=self.pool_name)
        if self.data_dir is not None:
            with self._file(name).open("wb") as data:
                data.truncate(size)
        return ""

    def _lvrename(self, args: list[str]) -> str:
        vg, old, new = args
        assert vg == self.vg, args
        _, lv = self._find(f"{vg}/{old}")
        self._deactivate(old, lv)
        self.lvs[new] = self.lvs.pop(old)
        if self.data_dir is not None:
            self._file(old).rename(self._file(new))
        return ""

    def _lvremove(self, args: list[str]) -> str:
        assert args[0] == "--yes", args
        name, lv = self._find(args[1])
        self._deactivate(name, lv)
        del self.lvs[name]
        if self.data_dir is not None:
            self._file(name).unlink()
        return ""

    def _lvextend(self, args: list[str]) -> str:
        assert args[0] == "--size", args
        name, lv = self._find(args[2])
        size = _rounded(args[1])
        if size < lv.size:
            self._fail(args, "New size given is smaller than the current one")
        lv.size = size
        if self.data_dir is not None:
            with self._file(name).open("r+b") as data:
                data.truncate(size)
            if lv.loop:
                subprocess.run(["losetup", "--set-capacity", lv.loop], check=True)
        return ""

    def _lvchange(self, args: list[str]) -> str:
        assert args[:3] == ["--activate", "y", "--ignoreactivationskip"], args
        name, lv = self._find(args[3])
        lv.attr = lv.attr[:4] + "a" + lv.attr[5:]
        if self.data_dir is not None and not lv.loop:
            lv.loop = subprocess.run(
                ["losetup", "--find", "--show", str(self._file(name))],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            self.dev_dir.mkdir(exist_ok=True)
            (self.dev_dir / name).symlink_to(lv.loop)
        return ""

    def _deactivate(self, name: str, lv: EmulatedLv) -> None:
        if lv.loop:
            (self.dev_dir / name).unlink(missing_ok=True)
            subprocess.run(["losetup", "--detach", lv.loop], check=True)
            lv.loop = ""

    def close(self) -> None:
        """Detach every loop device and remove /dev/VG."""
        for name, lv in self.lvs.items():
            self._deactivate(name, lv)
        shutil.rmtree(self.dev_dir, ignore_errors=True)


def _options(args: list[str], flags: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"positional": []}
    it = iter(args)
    for arg in it:
        if arg in flags:
            found[arg] = []
        elif arg.startswith("--"):
            found.setdefault(arg, []).append(next(it))
        else:
            found["positional"].append(arg)
    return found


def _rounded(size: str) -> int:
    assert size.endswith("b"), size  # bytes, as the driver always gives them
    return -(-int(size[:-1]) // EXTENT) * EXTENT
