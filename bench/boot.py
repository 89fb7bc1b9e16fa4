"""Benchmark: one real VM, `kubectl apply` → Running next to `virsh create` of the same XML.

Starts its own all-in-one cloud (`stratus dev up` in a temporary state directory), boots the
examples' Instance through the operator and agent, then boots a copy of the very same domain
XML with plain `virsh create`, and prints both times and their ratio. Not a test: run it by
hand, `.venv/bin/python bench/boot.py`.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from benchlib import copy_disks
from stratus_devcloud.allinone import DevCloud
from stratus_devcloud.controlplane import REPO_ROOT

URI = "qemu:///system"
READY = "STRATUS-GUEST: ready"


def until(check: Callable[[], bool], timeout: float = 300) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.05)
    return time.monotonic() - start


def copy_domain(xml: str, copy_dir: Path) -> tuple[Path, Path]:
    """The domain with its own name, UUID, MAC, overlay, seed copy and console log."""
    domain = etree.fromstring(xml.encode())
    copy_dir.mkdir(parents=True, exist_ok=True)
    copy_dir.chmod(0o755)
    domain.find("name").text = "bench-virsh-copy"  # type: ignore[union-attr]
    domain.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    copy_disks(domain, copy_dir)
    console = copy_dir / "console.log"
    for log in domain.iterfind("devices/serial/log"):
        log.set("file", str(console))
    for nic in domain.iterfind("devices/interface"):
        nic.find("mac").set("address", "52:54:00:be:00:01")  # type: ignore[union-attr]
        for target in nic.findall("target"):
            nic.remove(target)
    copy_xml = copy_dir / "domain.xml"
    copy_xml.write_bytes(etree.tostring(domain))
    return copy_xml, console


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="stratus-bench-boot-"))
    cloud = DevCloud(state)
    cloud.up()
    kubectl = [str(cloud.plane.kubectl), f"--kubeconfig={cloud.plane.kubeconfig}"]
    copy_dir = cloud.node_dir / "virsh-copy"
    try:
        for name in ("instancetype", "network", "image"):
            manifest = str(REPO_ROOT / "examples" / f"{name}.yaml")
            subprocess.run([*kubectl, "apply", "-f", manifest], check=True, capture_output=True)
        # A first guest warms the image cache, so both timed boots start from a cached image.
        instance = (REPO_ROOT / "examples" / "instance.yaml").read_text()
        subprocess.run([*kubectl, "apply", "-f", "-"], input=instance, text=True, check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([*kubectl, "wait", "--for=condition=Ready", "instance/demo",
                        "--timeout=300s"], check=True, capture_output=True)  # fmt: skip

        timed = instance.replace("name: demo", "name: bench")
        start = time.monotonic()
        subprocess.run([*kubectl, "apply", "-f", "-"], input=timed, text=True, check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([*kubectl, "wait", "--for=condition=Ready", "instance/bench",
                        "--timeout=300s"], check=True, capture_output=True)  # fmt: skip
        stratus_running = time.monotonic() - start
        stratus_ready = stratus_running + until(
            lambda: READY in cloud.console_log("default", "bench")
        )
        uid = subprocess.run([*kubectl, "get", "instance", "bench", "-o",
                              "jsonpath={.metadata.uid}"], check=True, capture_output=True,
                             text=True).stdout  # fmt: skip

        # The same domain, by hand: copy its XML, give it its own name, disks and console.
        xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "--inactive", f"stratus-{uid}"],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        copy_xml, console = copy_domain(xml, copy_dir)
        start = time.monotonic()
        subprocess.run(["virsh", "-c", URI, "create", str(copy_xml)], check=True,
                       capture_output=True)  # fmt: skip
        virsh_running = time.monotonic() - start
        virsh_ready = virsh_running + until(
            lambda: console.exists() and READY in console.read_text(errors="replace")
        )
        rows = [
            ("to Running (Ready condition / virsh create returned)", stratus_running,
             virsh_running),
            ("to guest ready marker on the console", stratus_ready, virsh_ready),
        ]  # fmt: skip
        print(f"{'one VM, TCG, image cached':<54} {'stratus':>9} {'virsh':>9} {'ratio':>7}")
        for name, ours, theirs in rows:
            print(f"{name:<54} {ours:>8.2f}s {theirs:>8.2f}s {ours / theirs:>6.2f}x")
    finally:
        subprocess.run(["virsh", "-c", URI, "destroy", "bench-virsh-copy"],
                       capture_output=True, check=False)  # fmt: skip
        cloud.down()


if __name__ == "__main__":
    main()
