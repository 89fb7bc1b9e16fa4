"""Benchmark: Volumes on the all-in-one, each next to the plain tool doing the same.

- hot-plug: `kubectl patch` of a running Instance's spec.volumes until the guest sees the
  disk, against `virsh attach-device --live` of the same disk XML until the guest sees it
  (the guest polls /sys/block every 0.5 s in both cases);
- file Volume from the Image: `kubectl apply` until the Volume is Available, against plain
  `qemu-img convert` of the cached image to a standalone qcow2.

Starts its own all-in-one in a temporary state directory; run by hand:
`.venv/bin/python bench/volumes.py [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from stratus_api.volume_wire import disk_serial
from stratus_devcloud.allinone import DevCloud
from stratus_devcloud.controlplane import REPO_ROOT

URI = "qemu:///system"
# The test guest's user data that reports its disks on the console, as in the tests.
DISK_WATCHER = (REPO_ROOT / "hack" / "guest-init" / "disk-watcher").read_text()


def until(check: Callable[[], bool], timeout: float = 300) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)
    return time.monotonic() - start


class Bench:
    def __init__(self, cloud: DevCloud) -> None:
        self.cloud = cloud
        self.base = [str(cloud.plane.kubectl), f"--kubeconfig={cloud.plane.kubeconfig}"]

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([*self.base, *args], input=input, text=True, check=True,
                              capture_output=True).stdout  # fmt: skip

    def apply(self, *objects: dict[str, object]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": list(objects)}))  # fmt: skip

    def get(self, kind: str, name: str) -> dict[str, object]:
        found: dict[str, object] = json.loads(self.kubectl("get", kind, name, "-o", "json"))
        return found

    def phase(self, kind: str, name: str) -> object:
        return self.get(kind, name).get("status", {}).get("phase")  # type: ignore[attr-defined]

    def console(self) -> str:
        try:
            return self.cloud.console_log("default", "bench")
        except Exception:  # not booted yet
            return ""


def volume(name: str, size: str, **spec: object) -> dict[str, object]:
    on_local = {"stratus.io/node": "local"}
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume", "metadata": {"name": name},
            "spec": {"size": size, "nodeSelector": on_local, **spec}}  # fmt: skip


def hot_plug(bench: Bench, rounds: int) -> tuple[list[float], list[float]]:
    ours, theirs = [], []
    domain = "stratus-" + str(bench.get("instance", "bench")["metadata"]["uid"])  # type: ignore[index]
    for index in range(rounds):
        name = f"plug-{index}"
        bench.apply(volume(name, "64Mi"))
        until(lambda: bench.phase("volume", name) == "Available")  # noqa: B023
        uid = str(bench.get("volume", name)["metadata"]["uid"])  # type: ignore[index]
        start = time.monotonic()
        bench.kubectl("patch", "instance", "bench", "--type=merge", "-p",
                      json.dumps({"spec": {"volumes": [{"name": name}]}}))  # fmt: skip
        until(lambda: f"VOL-SEEN {disk_serial(uid)}" in bench.console())  # noqa: B023
        ours.append(time.monotonic() - start)

        # The same disk XML as the agent wrote, on a file of our own, by hand.
        live = subprocess.run(["virsh", "-c", URI, "dumpxml", domain], check=True, text=True,
                              capture_output=True).stdout  # fmt: skip
        disk = next(d for d in etree.fromstring(live.encode()).iterfind("devices/disk")
                    if d.findtext("serial") == disk_serial(uid))  # fmt: skip
        for child in ("alias", "address"):
            for found in disk.findall(child):
                disk.remove(found)
        own = bench.cloud.node_dir / f"virsh-{index}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(own), "64M"], check=True)
        owner = disk.getparent()
        assert owner is not None
        seclabel = etree.fromstring(live.encode()).find("seclabel/label")
        if seclabel is not None and seclabel.text:  # the guest's own user must open it
            user, _, group = seclabel.text.lstrip("+").partition(":")
            subprocess.run(["chown", f"{user}:{group.lstrip('+')}", str(own)], check=True)
        serial = uuid.uuid4().hex[:20]
        disk.find("source").set("file", str(own))  # type: ignore[union-attr]
        disk.find("serial").text = serial  # type: ignore[union-attr]
        disk.find("target").set("dev", f"vd{'pqrstuvwxyz'[index]}")  # type: ignore[union-attr]
        xml = bench.cloud.node_dir / f"virsh-{index}.xml"
        xml.write_bytes(etree.tostring(disk))
        start = time.monotonic()
        subprocess.run(["virsh", "-c", URI, "attach-device", domain, str(xml), "--live"],
                       check=True, capture_output=True)  # fmt: skip
        until(lambda: f"VOL-SEEN {serial}" in bench.console())  # noqa: B023
        theirs.append(time.monotonic() - start)
        subprocess.run(["virsh", "-c", URI, "detach-device", domain, str(xml), "--live"],
                       check=True, capture_output=True)  # fmt: skip
        bench.kubectl("patch", "instance", "bench", "--type=merge", "-p",
                      '{"spec": {"volumes": []}}')  # fmt: skip
        until(lambda: bench.phase("volume", name) == "Available")  # noqa: B023
    return ours, theirs


def file_from_image(bench: Bench, rounds: int) -> tuple[list[float], list[float]]:
    ours, theirs = [], []
    images = bench.cloud.node_dir / "agent" / "images"
    cached = next(p for p in images.iterdir() if p.suffix != ".partial" and p.is_file())
    for index in range(rounds):
        name = f"copy-{index}"
        start = time.monotonic()
        bench.apply(volume(name, "1Gi", source={"image": "stratus-test"}))
        until(lambda: bench.phase("volume", name) == "Available")  # noqa: B023
        ours.append(time.monotonic() - start)
        out = bench.cloud.node_dir / f"convert-{index}.qcow2"
        start = time.monotonic()
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(cached), str(out)],
                       check=True)  # fmt: skip
        subprocess.run(["qemu-img", "resize", "-q", str(out), "1G"], check=True)
        theirs.append(time.monotonic() - start)
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="stratus-bench-volumes-"))
    cloud = DevCloud(state)
    cloud.up()
    bench = Bench(cloud)
    try:
        bench.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
        bench.kubectl("label", "--overwrite", "hypervisor", "local", "stratus.io/node=local")
        spec = {
            "instanceType": "s1.small",
            "boot": {"image": "stratus-test"},
            "networks": [{"name": "default"}],
            "userData": DISK_WATCHER,
        }
        instance: dict[str, object] = {"apiVersion": "stratus.io/v1alpha1", "kind": "Instance",
                                       "metadata": {"name": "bench"}, "spec": spec}  # fmt: skip
        bench.apply(instance)
        until(lambda: "STRATUS-GUEST: user-data exit=0" in bench.console())
        rows = [
            ("hot-plug: apply -> the guest sees the disk", *hot_plug(bench, args.rounds),
             "virsh attach-device"),
            ("file Volume from the Image (1Gi) -> Available", *file_from_image(bench, args.rounds),
             "qemu-img convert"),
        ]  # fmt: skip
        print(f"{args.rounds} rounds each, median (min-max); TCG, one node")
        print(f"{'measure':<48} {'stratus':>18} {'plain tool':>18} {'ratio':>6}  tool")
        for name, ours, theirs, tool in rows:
            a, b = statistics.median(ours), statistics.median(theirs)
            ours_at = f"{a:>6.2f}s ({min(ours):.2f}-{max(ours):.2f})"
            theirs_at = f"{b:>6.2f}s ({min(theirs):.2f}-{max(theirs):.2f})"
            print(f"{name:<48} {ours_at:>18} {theirs_at:>18} {a / b:>5.2f}x  {tool}")
    finally:
        cloud.down()


if __name__ == "__main__":
    main()
