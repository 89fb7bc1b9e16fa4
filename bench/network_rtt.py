"""Benchmark: guest-to-guest ping RTT on one overlay Network, on the same node and across
two nodes (VXLAN), next to two plain `virsh`-started guests on one plain OVS bridge.

Starts its own two-node cloud (`stratus dev up --nodes 2` in a temporary state directory),
boots a server guest on node 1 and a pinging guest on each node, then copies the server's
and the same-node pinger's domains onto a bridge of their own (no VLAN tag, no tunnel, the
same seeds, so the same addresses and the same ping) and starts them with plain
`virsh create`. Each pinger waits for its first answer, then pings COUNT times; the table
holds busybox ping's min/avg/max. Not a test: run it by hand,
`.venv/bin/python bench/network_rtt.py [--count 50]`. No target: TCG guests, userspace
OVS datapath; the ratios say what Stratus's local VLANs and tunnels cost.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from benchlib import copy_disks
from stratus_devcloud.allinone import DevCloud
from stratus_devcloud.controlplane import REPO_ROOT, ControlPlaneError

URI = "qemu:///system"
BASELINE_BRIDGE = "bench-rtt"
SERVER_IP = "10.31.0.10"
SUMMARY = re.compile(r"round-trip min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")
LOSS = re.compile(r"(\d+) packets transmitted, (\d+) packets received")


def pinger(count: int) -> str:
    return ("#!/bin/sh\n"
            f"i=0; until ping -c 1 -W 1 {SERVER_IP} >/dev/null 2>&1; do\n"
            '  i=$((i + 1)); [ "$i" -lt 120 ] || break\n'
            "done\n"
            f"ping -c {count} {SERVER_IP}\n")  # fmt: skip


def instance(name: str, node: str, ip: str, user_data: str | None = None) -> dict[str, object]:
    spec: dict[str, object] = {
        "instanceType": "s1.small", "boot": {"image": "stratus-test"},
        "networks": [{"name": "rtt", "ip": ip}],
        "nodeSelector": {"kubernetes.io/hostname": node},
    }  # fmt: skip
    if user_data:
        spec["userData"] = user_data
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def wait_for(
    read: Callable[[], str], pattern: re.Pattern[str], timeout: float = 600
) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(read())
        if found:
            return found
        time.sleep(1)
    raise TimeoutError(pattern.pattern)


def console(cloud: DevCloud, name: str) -> str:
    try:
        return cloud.console_log("default", name)
    except ControlPlaneError:  # not booted yet
        return ""


def plain_copy(xml: str, copy_dir: Path, name: str) -> tuple[Path, Path]:
    """The domain as a plain libvirt user would run it: its own name, UUID, disks and
    console; on the baseline bridge, untagged; QEMU as libvirt's default user. MACs and
    seed stay, so the guest configures the same address."""
    domain = etree.fromstring(xml.encode())
    copy_dir.mkdir(parents=True, exist_ok=True)
    copy_dir.chmod(0o755)
    domain.find("name").text = name  # type: ignore[union-attr]
    domain.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    for label in domain.findall("seclabel"):
        domain.remove(label)
    copy_disks(domain, copy_dir, drop=("backingStore", "seclabel"))
    console = copy_dir / "console.log"
    for log in domain.iterfind("devices/serial/log"):
        log.set("file", str(console))
    for nic in domain.iterfind("devices/interface"):
        nic.find("source").set("bridge", BASELINE_BRIDGE)  # type: ignore[union-attr]
        for child in nic.findall("target") + nic.findall("vlan"):
            nic.remove(child)
    copy_xml = copy_dir / "domain.xml"
    copy_xml.write_bytes(etree.tostring(domain))
    return copy_xml, console


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50, help="pings per pair")
    count = parser.parse_args().count
    state = Path(tempfile.mkdtemp(prefix="stratus-bench-rtt-"))
    cloud = DevCloud(state, nodes=2)
    copies = ("bench-rtt-server", "bench-rtt-client")
    try:
        cloud.up()
        kubectl = [str(cloud.plane.kubectl), f"--kubeconfig={cloud.plane.kubeconfig}"]
        network = {"apiVersion": "stratus.io/v1alpha1", "kind": "Network",
                   "metadata": {"name": "rtt"},
                   "spec": {"subnets": [{"cidr": "10.31.0.0/24"}]}}  # fmt: skip
        items = [network, instance("server", "local", SERVER_IP),
                 instance("same-node", "local", "10.31.0.11", pinger(count)),
                 instance("other-node", "local-2", "10.31.0.12", pinger(count))]  # fmt: skip
        for name in ("instancetype", "image"):
            subprocess.run([*kubectl, "apply", "-f", str(REPO_ROOT / "examples" / f"{name}.yaml")],
                           check=True, capture_output=True)  # fmt: skip
        subprocess.run([*kubectl, "apply", "-f", "-"], check=True, capture_output=True,
                       input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
                       text=True)  # fmt: skip
        results = {}
        for name in ("same-node", "other-node"):
            read = lambda n=name: console(cloud, n)  # noqa: E731
            results[name] = (wait_for(read, SUMMARY), wait_for(read, LOSS))

        # The baseline: the server and the same-node pinger again, by hand, on a bare bridge.
        subprocess.run(["ovs-vsctl", "--may-exist", "add-br", BASELINE_BRIDGE, "--", "set",
                        "Bridge", BASELINE_BRIDGE, "datapath_type=netdev"], check=True)  # fmt: skip
        consoles = {}
        for copy, original in zip(copies, ("server", "same-node"), strict=True):
            uid = subprocess.run([*kubectl, "get", "instance", original, "-o",
                                  "jsonpath={.metadata.uid}"], check=True, capture_output=True,
                                 text=True).stdout  # fmt: skip
            xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "--inactive",
                                  f"stratus-{uid}"], check=True, capture_output=True,
                                 text=True).stdout  # fmt: skip
            copy_xml, consoles[copy] = plain_copy(xml, cloud.node_dir / copy, copy)
            subprocess.run(["virsh", "-c", URI, "create", str(copy_xml)], check=True,
                           capture_output=True)  # fmt: skip
        client = consoles["bench-rtt-client"]
        read_copy = lambda: client.read_text(errors="replace") if client.exists() else ""  # noqa: E731
        results["virsh"] = (wait_for(read_copy, SUMMARY), wait_for(read_copy, LOSS))

        print(f"ping RTT, {count} pings, TCG guests, userspace OVS")
        print(f"{'pair':<44} {'min':>8} {'avg':>8} {'max':>8} {'lost':>5} {'avg/virsh':>10}")
        baseline = float(results["virsh"][0].group(2))
        labels = {"same-node": "Stratus, same node (local VLAN)",
                  "other-node": "Stratus, across nodes (VXLAN)",
                  "virsh": "virsh, one plain bridge (baseline)"}  # fmt: skip
        for name, (summary, loss) in results.items():
            low, avg, high = (float(summary.group(i)) for i in (1, 2, 3))
            lost = int(loss.group(1)) - int(loss.group(2))
            print(f"{labels[name]:<44} {low:>6.2f}ms {avg:>6.2f}ms {high:>6.2f}ms {lost:>5} "
                  f"{avg / baseline:>9.2f}x")  # fmt: skip
    finally:
        for copy in copies:
            subprocess.run(["virsh", "-c", URI, "destroy", copy], capture_output=True,
                           check=False)  # fmt: skip
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BASELINE_BRIDGE],
                       capture_output=True, check=False)  # fmt: skip
        cloud.down()


if __name__ == "__main__":
    main()
