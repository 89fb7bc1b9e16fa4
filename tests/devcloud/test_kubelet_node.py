"""`stratus dev up --kubelet`: a real node whose pods run (the Helm install's Deployments and
DaemonSets land there), and a `down` that leaves the host as it found it."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path

from stratus_devcloud.kubeletnode import KERNEL_SETTINGS, NODE_LINK, POD_BRIDGE, POD_CIDR
from stratus_devcloud.pki import NODE_NAME
from testsupport import dev_kubectl as kubectl
from testsupport import pinned_kubernetes_version, processes_using, stratus

SANDBOX = "localhost/stratus/pause:3.10"


def host_state() -> dict[str, object]:
    """What the node changes on the host while it runs."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return {
        "settings": {k: (Path("/proc/sys") / k).read_text() for k in KERNEL_SETTINGS},
        "links": sorted(n for n in (NODE_LINK, f"{NODE_LINK}p", POD_BRIDGE) if f" {n}" in links),
        "nat rules": [line for line in nat.splitlines() if "stratus-pods" in line],
        # kube-proxy's Service rules and chains.
        "kube-proxy rules": [line for line in nat.splitlines() if "KUBE-" in line],
        "netns": subprocess.run(["ip", "netns"], capture_output=True, text=True, check=True).stdout,
        "kubelet dir": Path("/var/lib/kubelet").exists(),
        "kubepods": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")),
    }


def workload(kind: str, name: str) -> dict[str, object]:
    template = {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": SANDBOX, "imagePullPolicy": "Never"}],
                 "terminationGracePeriodSeconds": 1},
    }  # fmt: skip
    spec: dict[str, object] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    if kind == "Deployment":
        spec["replicas"] = 2
    return {"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}  # fmt: skip


def running_pods(state: Path) -> list[dict[str, object]]:
    shown = kubectl(state, "get", "pods", "-n", "default", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    pods = json.loads(shown.stdout)["items"]
    return [p for p in pods if p.get("status", {}).get("phase") == "Running"]


def test_a_kubelet_node_runs_deployments_and_daemonsets_and_down_undoes_it(
    tmp_path: Path,
) -> None:
    before = host_state()
    state = tmp_path / "dev"
    up = stratus("dev", "up", "--control-plane-only", "--kubelet", "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        assert f"node {NODE_NAME} Ready" in up.stderr

        node = json.loads(kubectl(state, "get", "node", NODE_NAME, "-o", "json").stdout)
        assert node["status"]["nodeInfo"]["kubeletVersion"] == pinned_kubernetes_version()
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")

        items = [workload("Deployment", "web"), workload("DaemonSet", "agent")]
        applied = kubectl(
            state,
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        assert applied.returncode == 0, applied.stderr
        deadline = time.monotonic() + 90
        while len(running_pods(state)) < 3:
            assert time.monotonic() < deadline, kubectl(state, "get", "events", "-A").stdout
            time.sleep(0.5)
        pods = running_pods(state)
        assert {p["spec"]["nodeName"] for p in pods} == {NODE_NAME}  # type: ignore[index]
        network = ipaddress.ip_network(POD_CIDR)
        assert all(ipaddress.ip_address(p["status"]["podIP"]) in network  # type: ignore[index]
                   for p in pods)  # fmt: skip

        # The API server reaches the kubelet (kubectl logs), with its client certificate.
        logs = kubectl(state, "logs", "deployment/web")
        assert logs.returncode == 0, logs.stderr
    finally:
        down = stratus("dev", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "kubelet" in down.stderr and "containerd" in down.stderr
    assert processes_using(state) == []
    assert host_state() == before
