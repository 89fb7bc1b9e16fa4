"""`stratus dev up --chart`: Stratus from its Helm chart on the kubelet node, over the node
services of the all-in-one. The agent pod enrolls, the demo Instance of examples/ boots a
real guest through the pods, a `helm upgrade` rolls both kinds of pod without losing the
guest, and `down` leaves no guest behind."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from allinone_kit import virsh_domains
from stratus_devcloud import allinone, incluster
from stratus_devcloud.pki import NODE_NAME
from testsupport import REPO_ROOT, dev_kubectl, stratus, wait_until

EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("chart-guest") / "dev"
    others = set(virsh_domains())  # another local cloud's guests, if any
    up = stratus("dev", "up", "--chart", "--state-dir", str(state), timeout=1800)
    try:
        assert up.returncode == 0, up.stderr
        print(up.stderr)
        yield state
    finally:
        down = stratus("dev", "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        assert set(virsh_domains()) <= others, virsh_domains()


def kubectl(state: Path, *args: str, stdin: str | None = None) -> str:
    done = dev_kubectl(state, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def demo_manifests() -> list[dict[str, Any]]:
    """examples/, its Image served where the pods reach it."""
    docs = []
    for name in ("instancetype", "network", "image", "instance"):
        doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
        if doc["kind"] == "Image":
            url = doc["spec"]["source"]["http"]["url"]
            doc["spec"]["source"]["http"]["url"] = url.replace(
                allinone.IMAGE_ENDPOINT, incluster.IMAGE_ENDPOINT)  # fmt: skip
        docs.append(doc)
    return docs


def pod_names(state: Path) -> set[str]:
    pods = json.loads(kubectl(state, "get", "pods", "-n", incluster.NAMESPACE, "-o", "json"))
    return {p["metadata"]["name"] for p in pods["items"]}


def test_the_demo_boots_through_the_charts_pods_and_survives_an_upgrade(state: Path) -> None:
    hypervisor = json.loads(kubectl(state, "get", "hypervisor", NODE_NAME, "-o", "json"))
    assert hypervisor["metadata"]["labels"]["stratus.io/enrolled"] == "true"
    demo = {"apiVersion": "v1", "kind": "List", "items": demo_manifests()}
    kubectl(state, "apply", "-f", "-", stdin=json.dumps(demo))
    kubectl(state, "wait", "--for=condition=Ready", "instance/demo", "--timeout=300s")
    found = json.loads(kubectl(state, "get", "instance", "demo", "-o", "json"))
    assert found["status"]["node"] == NODE_NAME
    domain = f"stratus-{found['metadata']['uid']}"
    assert domain in virsh_domains()

    def console() -> str:
        shown = stratus("dev", "console", "demo", "--lines", "60", "--state-dir", str(state))
        return shown.stdout

    # The guest booted, read its NoCloud data (written by the agent pod) and ran user-data.
    wait_until("the guest ready", lambda: "STRATUS-GUEST: ready" in console(), timeout=180)
    assert "hello from demo" in console()
    domain_id = subprocess.run(["virsh", "domid", domain], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip

    # An upgrade that changes both pods' templates rolls them; the guest runs on.
    before = pod_names(state)
    values = state / "chart-values.json"
    upgrade = subprocess.run(
        [str(state / "bin" / "helm"), f"--kubeconfig={state / 'kubeconfig'}", "upgrade",
         incluster.RELEASE, str(incluster.CHART), "-n", incluster.NAMESPACE, "-f", str(values),
         "--set-json", 'agent.podAnnotations={"stratus.io/rolled":"1"}',
         "--set-json", 'operator.podAnnotations={"stratus.io/rolled":"1"}',
         "--wait", "--timeout=3m"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    wait_until("the old pods gone", lambda: not (before & pod_names(state)), timeout=60)
    ready = 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
    wait_until("Hypervisor Ready again", lambda: kubectl(
        state, "get", "hypervisor", NODE_NAME, "-o", ready) == "True", timeout=60)  # fmt: skip
    same = subprocess.run(["virsh", "domid", domain], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    assert same == domain_id  # the same QEMU process: not restarted, not re-created
    found = json.loads(kubectl(state, "get", "instance", "demo", "-o", "json"))
    assert found["status"]["phase"] == "Running"

    # Deleting the Instance goes through the new agent pod: the guest is gone.
    kubectl(state, "delete", "instance", "demo", "--timeout=120s")
    assert domain not in virsh_domains()
