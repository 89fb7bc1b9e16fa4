"""Stratus installed into the local cluster from its chart (`stratus dev up --chart`): the
kubelet node runs the operator and the agent as pods, the way a user's cluster does, over
the same node services as the all-in-one (Open vSwitch, libvirtd, the external network) and
the same node files. The agent pod enrolls, so the node's Hypervisor is `stratus-node`.

The test image is served on the node address, where both the operator's pods (which check
an Image's source) and the agent (host network) reach it.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratus_devcloud import images
from stratus_devcloud.allinone import CHART, IMAGE_PORT, DevCloud
from stratus_devcloud.controlplane import ControlPlaneError
from stratus_devcloud.pki import NODE_IP, NODE_NAME

RELEASE, NAMESPACE = "stratus", "stratus-system"
IMAGE_ENDPOINT = f"{NODE_IP}:{IMAGE_PORT}"
AGENT_PORT = 8441  # the chart's agent.port
INSTALL_TIMEOUT = "5m"


@dataclass(frozen=True)
class Timings:
    kubelet_ready: float
    images: float
    install: float


def values(cloud: DevCloud) -> dict[str, Any]:
    """The chart's values for this machine: the all-in-one node 1's agent configuration,
    less what the chart and enrollment give (its name, token, listen address, files)."""
    node = cloud.node_slot(1)
    agent = cloud.agent_settings(node)
    for given in ("node_name", "token_file", "metrics_token_file", "state_dir", "listen"):
        agent.pop(given)
    refused = [*cloud.service_ports(), AGENT_PORT]
    agent["images"] = {"sources": {"allowed_endpoints": [IMAGE_ENDPOINT],
                                   "refused_ports": refused}}  # fmt: skip
    chart_agent: dict[str, Any] = {"stateDir": str(node.state_dir), "config": agent}
    target = agent["network"].get("vswitchd_target")
    if target is not None and not target.startswith(("/run/openvswitch/", "/var/run/openvswitch/")):
        # The Open vSwitch another local cloud started: its control socket is in its state.
        chart_agent["extraHostPaths"] = [str(Path(target).parent)]
    return {
        "image": {"pullPolicy": "Never"},
        "operator": {"allowImageEndpoints": [IMAGE_ENDPOINT]},
        "agent": chart_agent,
    }


def helm(cloud: DevCloud, *args: str) -> subprocess.CompletedProcess[str]:
    plane = cloud.plane
    return subprocess.run(
        [str(plane.user_bin_dir / "helm"), f"--kubeconfig={plane.kubeconfig}", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def up(cloud: DevCloud) -> Timings:
    """Everything, or what is missing of it: node services, the kubelet node, the images in
    its containerd, the node labelled, and the chart installed (or upgraded) and Ready."""
    cloud.up_node_services()
    kubelet_ready = cloud.kubelet.up()
    cloud.serve_test_image(cloud.image_server_on(str(NODE_IP)))
    started = time.monotonic()
    for recipe in images.RECIPES.values():
        built = images.build(recipe)
        cloud.kubelet.import_image(built.archive, built.reference)
    built_in = time.monotonic() - started
    cloud.plane.kubectl_run("label", "node", NODE_NAME, "stratus.io/hypervisor=true",
                            "--overwrite")  # fmt: skip
    values_file = cloud.state_dir / "chart-values.json"
    values_file.write_text(json.dumps(values(cloud), indent=2) + "\n")
    started = time.monotonic()
    done = helm(cloud, "upgrade", "--install", RELEASE, str(CHART), "-n", NAMESPACE,
                "--create-namespace", "-f", str(values_file), "--wait",
                f"--timeout={INSTALL_TIMEOUT}")  # fmt: skip
    if done.returncode != 0:
        raise ControlPlaneError(
            f"helm install of {CHART} failed: {done.stderr.strip()}\n"
            f"see kubectl -n {NAMESPACE} get pods; kubectl -n {NAMESPACE} logs ds/{RELEASE}-agent"
        )
    return Timings(kubelet_ready, built_in, time.monotonic() - started)
