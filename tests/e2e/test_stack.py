"""The example stack (examples/stack: two Networks, an Image, a Volume, three Instances) on
the all-in-one: `helm install --wait` returns once all of it is Ready; applied backwards,
one kind at a time, it converges too, its Instances first saying what they wait for; with a
wrong checksum `helm install --wait` fails long before its timeout, naming the digest;
`helm uninstall` leaves no object and no guest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from typing import Any

import yaml

from allinone_kit import BOOT_TIMEOUT, Cloud, virsh_domains
from testsupport import REPO_ROOT, wait_until

CHART = REPO_ROOT / "examples" / "stack"
KINDS = "networks,images,volumes,instances"
# Reverse dependency order: what refers first, what is referred to last.
REVERSE = ("Instance", "Volume", "Image", "Network")


def helm(cloud: Cloud, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    plane = cloud.dev.plane
    return subprocess.run(
        [str(plane.user_bin_dir / "helm"), f"--kubeconfig={plane.kubeconfig}", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def image_values(cloud: Cloud, sha256: str | None = None) -> list[str]:
    """The all-in-one's test image with its real digest, unless `sha256` is given."""
    served = cloud.dev.node_dir / "served" / "stratus-test.qcow2"
    digest = sha256 or hashlib.sha256(served.read_bytes()).hexdigest()
    return ["--set", f"image.sha256={digest}"]


def objects(cloud: Cloud, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cloud.kubectl("get", KINDS, "-n", namespace, "-o", "json")
    )["items"]
    return items


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def kstatus_current(obj: dict[str, Any]) -> bool:
    """kstatus's Current for our kinds: the status is about this generation, Ready, and
    neither Reconciling nor Stalled."""
    status, found = obj.get("status") or {}, conditions(obj)
    observed = status.get("observedGeneration")
    return (
        (observed is None or observed == obj["metadata"]["generation"])
        and found.get("Ready", {}).get("status") == "True"
        and found.get("Reconciling", {}).get("status") != "True"
        and found.get("Stalled", {}).get("status") != "True"
    )


def describe(items: list[dict[str, Any]]) -> str:
    def said(obj: dict[str, Any]) -> str:
        found = conditions(obj).items()
        return ", ".join(f"{t}={c['status']}({c.get('reason')}: {c.get('message')})"
                         for t, c in found)  # fmt: skip

    return "\n".join(f"{o['kind']} {o['metadata']['name']}: {said(o)}" for o in items)


def assert_all_current(cloud: Cloud, namespace: str) -> list[dict[str, Any]]:
    items = objects(cloud, namespace)
    assert sorted(o["kind"] for o in items) == [
        "Image", "Instance", "Instance", "Instance", "Network", "Network", "Volume",
    ], describe(items)  # fmt: skip
    assert all(kstatus_current(o) for o in items), describe(items)
    return items


def remove_and_check(cloud: Cloud, namespace: str, before: list[str], *, release: bool) -> None:
    """Everything goes: finalizers done, no guest left beyond those there `before`."""
    if release:
        done = helm(cloud, "uninstall", "stack", "-n", namespace, "--wait", "--timeout=3m")
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        cloud.kubectl("delete", KINDS, "--all", "-n", namespace, "--timeout=180s")
    wait_until(f"no object left in {namespace}", lambda: not objects(cloud, namespace), 180)
    wait_until("no guest left", lambda: virsh_domains() == before, 60)
    cloud.kubectl("delete", "namespace", namespace, "--timeout=120s")


def test_helm_install_waits_for_the_whole_stack(cloud: Cloud) -> None:
    before = virsh_domains()
    lint = helm(cloud, "lint", "--strict", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    started = time.monotonic()
    done = helm(cloud, "install", "stack", str(CHART), "-n", "stack-helm", "--create-namespace",
                *image_values(cloud), "--wait", "--timeout=5m")  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr + describe(objects(cloud, "stack-helm"))
    items = assert_all_current(cloud, "stack-helm")
    print(f"\nhelm install --wait, apply -> all Ready: {took:.1f} s")
    db = next(o for o in items if o["metadata"]["name"] == "stack-db")
    data = next(o for o in items if o["kind"] == "Volume")
    assert data["status"]["attachedTo"] == "stack-db" and db["status"]["phase"] == "Running"
    app = next(o for o in items if o["metadata"]["name"] == "stack-app")
    assert [i["network"] for i in app["status"]["interfaces"]] == ["stack-front", "stack-back"]
    assert len(virsh_domains()) == len(before) + 3
    remove_and_check(cloud, "stack-helm", before, release=True)


def test_the_stack_converges_applied_backwards(cloud: Cloud) -> None:
    """Instances first, then the Volume, the Image, the Networks: each Instance says what it
    waits for, and moves on when that appears (not at a retry minutes later)."""
    before, namespace = virsh_domains(), "stack-backwards"
    rendered = helm(cloud, "template", "stack", str(CHART), "-n", namespace, *image_values(cloud))
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    cloud.kubectl("create", "namespace", namespace)

    def apply(kind: str) -> None:
        items = [d for d in docs if d["kind"] == kind]
        listed = {"apiVersion": "v1", "kind": "List", "items": items}
        cloud.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(listed))

    def reasons() -> dict[str, tuple[str, str]]:
        return {
            o["metadata"]["name"]: (c.get("reason", ""), c.get("message", ""))
            for o in objects(cloud, namespace)
            if o["kind"] == "Instance" and (c := conditions(o).get("Ready"))
        }

    def all_say(reason: str) -> dict[str, tuple[str, str]] | None:
        found = reasons()
        return found if len(found) == 3 and all(r == reason for r, _ in found.values()) else None

    started = time.monotonic()
    apply("Instance")
    waiting = wait_until("the Instances wait for their Image", lambda: all_say("ImageNotFound"))
    assert waiting["stack-web"][1] == "spec.boot.image: Image stack-image not found"
    apply("Volume")
    apply("Image")
    # The Image turns Ready: each Instance goes on to the next thing it lacks.
    waiting = wait_until("the Instances wait for their Networks",
                         lambda: all_say("NetworkNotFound"), 30)  # fmt: skip
    assert waiting["stack-web"][1] == "spec.networks[0].name: Network stack-front not found"
    assert waiting["stack-db"][1] == "spec.networks[0].name: Network stack-back not found"
    waited = {o["metadata"]["name"]: conditions(o) for o in objects(cloud, namespace)
              if o["kind"] == "Instance"}  # fmt: skip
    assert all(c["Reconciling"]["status"] == "True" and c["Stalled"]["status"] == "False"
               for c in waited.values())  # fmt: skip
    apply("Network")
    wait_until("the stack Ready", lambda: all(kstatus_current(o) for o in objects(cloud, namespace))
               and len(objects(cloud, namespace)) == 7, BOOT_TIMEOUT)  # fmt: skip
    took = time.monotonic() - started
    assert_all_current(cloud, namespace)
    print(f"\napplied backwards, one kind at a time, apply -> all Ready: {took:.1f} s")
    remove_and_check(cloud, namespace, before, release=False)


def test_a_wrong_checksum_fails_helm_install_early(cloud: Cloud) -> None:
    before, namespace = virsh_domains(), "stack-broken"
    started = time.monotonic()
    done = helm(cloud, "install", "stack", str(CHART), "-n", namespace, "--create-namespace",
                *image_values(cloud, sha256="0" * 64), "--wait", "--timeout=5m")  # fmt: skip
    took = time.monotonic() - started
    items = objects(cloud, namespace)
    output = done.stdout + done.stderr
    print(f"\nhelm install --wait of a broken stack failed after {took:.1f} s:\n{output}")
    assert done.returncode != 0, output
    assert took < 150, f"{took:.0f} s: it waited for its timeout\n{output}"
    # The Stalled message, from the node: "downloaded file has sha256 X, not Y".
    assert "Failed" in output and "sha256" in output, output + describe(items)
    # kstatus Failed: Stalled on the Image and on every Instance booting from it.
    stalled = {o["metadata"]["name"] for o in items
               if conditions(o).get("Stalled", {}).get("status") == "True"}  # fmt: skip
    assert stalled == {"stack-image", "stack-web", "stack-app", "stack-db"}, describe(items)
    remove_and_check(cloud, namespace, before, release=True)
