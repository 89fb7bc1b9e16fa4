"""Benchmark: a ceph Volume made from an Image at 1 GiB and at 20 GiB virtual size, side by
side, through the agent's RBD driver on a real one-node Ceph.

The first Volume of an Image imports it into the pool once (time grows with the data, not
the virtual size: the images here are sparse but for a few MiB); every Volume is then a
copy-on-write clone of the import's protected snapshot, whose time should not depend on the
size at all. Starts its own Ceph in a temporary directory; run by hand:
`.venv/bin/python bench/rbd_clone.py [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from pydantic import SecretStr

from stratus_agent.base import CachedImage
from stratus_agent.drivers.storage.rbd_volumes import RbdVolumeDriver
from stratus_api.volume_wire import CephAccess
from stratus_devcloud.ceph import LocalCeph

GIB = 2**30


def sparse_image(directory: Path, size_gib: int) -> CachedImage:
    """A qcow2 of `size_gib` virtual GiB holding 8 MiB of data at its start."""
    path = directory / f"{size_gib}g.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_gib}G"],
                   check=True)  # fmt: skip
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", str(path)],
                   check=True, capture_output=True)  # fmt: skip
    return CachedImage(uid=str(uuid.uuid4()), path=path, format="qcow2",
                       virtual_size=size_gib * GIB, sha256="")  # fmt: skip


async def measure(
    driver: RbdVolumeDriver, image: CachedImage, rounds: int
) -> tuple[float, list[float]]:
    """(first Volume: import and clone, [each later Volume: clone])."""
    times = []
    made = []
    for _ in range(rounds + 1):
        uid = str(uuid.uuid4())
        start = time.monotonic()
        await driver.create(uid, image.virtual_size, image=image)
        times.append(time.monotonic() - start)
        made.append(uid)
    for uid in made:
        await driver.remove(uid)
    return times[0], times[1:]


async def run(rounds: int, work: Path) -> None:
    local = LocalCeph(work / "ceph")
    cluster = local.up()
    try:
        key = SecretStr(cluster.key)
        access = CephAccess(pool_uid=str(uuid.uuid4()), monitors=[cluster.monitors],
                            pool=cluster.pool, user=cluster.user, key=key)  # fmt: skip
        driver = RbdVolumeDriver(access, work / "agent")
        rows = []
        for size in (1, 20):
            image = sparse_image(work, size)
            first, clones = await measure(driver, image, rounds)
            rows.append((size, first, clones))
            await driver.release_image(image.uid)
        driver.close()
        print(f"ceph Volume from an Image, {rounds} clones each after the first; one-node Ceph")
        print(f"{'virtual size':<14} {'first (import+clone)':>22} {'clone median (min-max)':>26}")
        for size, first, clones in rows:
            spread = f"{statistics.median(clones):.3f}s ({min(clones):.3f}-{max(clones):.3f})"
            print(f"{f'{size} GiB':<14} {first:>21.3f}s {spread:>26}")
        ratio = statistics.median(rows[1][2]) / statistics.median(rows[0][2])
        print(f"clone 20 GiB / clone 1 GiB: {ratio:.2f}x")
    finally:
        local.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratus-bench-rbd-") as work:
        asyncio.run(run(args.rounds, Path(work)))


if __name__ == "__main__":
    main()
