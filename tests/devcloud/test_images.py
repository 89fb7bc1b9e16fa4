"""`stratus dev images --import`: the operator and agent images, built offline, run as pods on
the kubelet node: the operator's as an unprivileged user, the agent's with the tools and
bindings it drives the node with."""

from __future__ import annotations

import json
import time
from pathlib import Path

from stratus_devcloud import images
from testsupport import dev_kubectl as kubectl
from testsupport import stratus


def pod(name: str, image: str, script: str) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", script]}]},
    }  # fmt: skip


def finished(state: Path, name: str) -> str:
    deadline = time.monotonic() + 120
    while True:
        shown = kubectl(state, "get", "pod", name, "-n", "default", "-o", "json")
        phase = json.loads(shown.stdout)["status"].get("phase") if shown.returncode == 0 else None
        if phase in ("Succeeded", "Failed"):
            return str(phase)
        assert time.monotonic() < deadline, kubectl(state, "get", "events", "-A").stdout
        time.sleep(0.5)


def test_the_images_run_as_pods_on_the_kubelet_node(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    up = stratus("dev", "up", "--control-plane-only", "--kubelet", "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        built = stratus("dev", "images", "--import", "--state-dir", str(state), timeout=1800)
        assert built.returncode == 0, built.stderr
        for recipe in images.RECIPES.values():
            assert recipe.reference in built.stdout, built.stdout

        checks = {
            # Unprivileged, and the operator's code and dependencies import.
            "operator": (images.OPERATOR.reference,
                         "id -u && python -m stratus_cli operator --help | head -1 && "
                         "python -c 'import stratus_operator.main, kopf; print(\"imports\")'"),
            # Debian's bindings to the node's daemons, and the tools the drivers run.
            "agent": (images.AGENT.reference,
                      "id -u && python -c 'import libvirt, rados, rbd, stratus_agent.main; "
                      "print(\"imports\")' && qemu-img --version | head -1 && "
                      "ovs-vsctl --version | head -1 && dnsmasq --version | head -1 && "
                      "rbd --version && lvm version | head -1 && conntrack --version"),
        }  # fmt: skip
        items = [pod(name, image, script) for name, (image, script) in checks.items()]
        listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        applied = kubectl(state, "apply", "-f", "-", stdin=listed)
        assert applied.returncode == 0, applied.stderr
        logs = {}
        for name in checks:
            phase = finished(state, name)
            logs[name] = kubectl(state, "logs", name, "-n", "default").stdout
            assert phase == "Succeeded", (name, logs[name])
        operator, agent = logs["operator"].splitlines(), logs["agent"].splitlines()
        assert operator[0] == "65532"
        assert operator[1].startswith("Usage:") and operator[2] == "imports"
        assert agent[0] == "0" and agent[1] == "imports"
        assert agent[2].startswith("qemu-img version")
        assert "Open vSwitch" in agent[3] and agent[4].startswith("Dnsmasq version")
        assert agent[5].startswith("ceph version")
    finally:
        down = stratus("dev", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
