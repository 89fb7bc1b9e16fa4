"""End to end on the all-in-one cloud: kubectl apply → a real guest boots, pings, goes away.

One `stratus dev up` for the module (real control plane, OVS, libvirtd, TLS agent,
operator); `stratus dev down` at the end must leave no domain, bridge, process or file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stratus_devcloud.allinone import BRIDGE, DevCloud
from testsupport import REPO_ROOT, wait_until

STRATUS = [sys.executable, "-m", "stratus_cli"]
BOOT_TIMEOUT = 300.0


def virsh_domains() -> list[str]:
    """Stratus domains libvirt knows; with libvirtd stopped (dev down stops the one it
    started), the persistent definitions it would load on its next start."""
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if listed.returncode != 0:
        return sorted(p.stem for p in Path("/etc/libvirt/qemu").glob("stratus-*.xml"))
    return [name for name in listed.stdout.split() if name.startswith("stratus-")]


class Cloud:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dev = DevCloud(state_dir)

    def stratus(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*STRATUS, *args, "--state-dir", str(self.state_dir)],
                              capture_output=True, text=True, timeout=600, check=False,
                              cwd=REPO_ROOT)  # fmt: skip

    def kubectl(self, *args: str, input: str | None = None) -> str:
        result = self.dev.plane.kubectl_run(*args, input=input, check=False)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def instance(self, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "instance", name, "-o", "json"))

    def console(self, name: str) -> str:
        try:
            return self.dev.console_log("default", name)
        except Exception:
            return ""


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    if os.environ.get("STRATUS_TEST_KUBECONFIG"):
        pytest.skip("the all-in-one test brings its own cluster and node")
    cloud = Cloud(tmp_path_factory.mktemp("allinone"))
    up = cloud.stratus("dev", "up")
    try:
        assert up.returncode == 0, up.stderr
        yield cloud
    finally:
        down = cloud.stratus("dev", "down")
        assert down.returncode == 0, down.stderr
    # Nothing left behind.
    assert virsh_domains() == []
    bridges = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"],
                             capture_output=True, text=True, check=False)  # fmt: skip
    # A non-zero exit: dev down stopped the OVS it started, so no bridge is left either.
    assert bridges.returncode != 0 or BRIDGE not in bridges.stdout.split()
    assert not cloud.dev.node_dir.exists()
    assert cloud.dev.running() == []


def small_instance(name: str, **spec: Any) -> dict[str, Any]:
    """An Instance like examples/instance.yaml: s1.small, the test image, network default."""
    body: dict[str, Any] = {"instanceType": "s1.small", "boot": {"image": "stratus-test"},
                            "networks": [{"name": "default"}]}  # fmt: skip
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": name}, "spec": {**body, **spec}}  # fmt: skip


def boot_marker(cloud: Cloud, name: str, marker: str) -> str:
    return wait_until(f"{marker!r} on the console of {name}",
                      lambda: marker in cloud.console(name) and cloud.console(name),
                      BOOT_TIMEOUT)  # fmt: skip


def test_examples_boot_ping_and_delete(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    cloud.kubectl(
        "wait", "--for=condition=Ready", "instance/demo", f"--timeout={BOOT_TIMEOUT:.0f}s"
    )
    demo = cloud.instance("demo")
    ip = demo["status"]["interfaces"][0]["ip"]
    assert demo["status"]["phase"] == "Running" and demo["status"]["node"] == "local"
    console = boot_marker(cloud, "demo", "STRATUS-GUEST: ready")
    assert "STRATUS-GUEST: hostname=demo" in console
    assert f"STRATUS-GUEST: ip eth0 {ip}/24" in console
    assert "hello from demo" in console and "STRATUS-GUEST: user-data exit=0" in console

    # A second guest on the same network reaches the first.
    pinger = small_instance("pinger", userData=f"#!/bin/sh\nping -c 3 -W 2 {ip} && echo PING-OK\n")
    cloud.kubectl("apply", "-f", "-", input=json.dumps(pinger))
    console = boot_marker(cloud, "pinger", "STRATUS-GUEST: user-data exit=")
    assert "PING-OK" in console, console[-2000:]

    # Deleting an Instance removes everything of it from the node.
    uid = demo["metadata"]["uid"]
    cloud.kubectl("delete", "instance", "demo", "--timeout=120s")
    assert f"stratus-{uid}" not in virsh_domains()
    ports = subprocess.run(["ovs-vsctl", "--format=json", "find", "Interface",
                            f"external_ids:vm-id={uid}"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert json.loads(ports)["data"] == []
    assert not list((cloud.dev.node_dir / "agent" / "guests").glob(f"{uid}-*"))
    cloud.kubectl("delete", "instance", "pinger", "--timeout=120s")


def test_operator_killed_mid_provisioning_makes_one_guest(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    twin = small_instance("restart")
    cloud.kubectl("apply", "-f", "-", input=json.dumps(twin))
    scheduled = lambda: cloud.instance("restart").get("status", {}).get("node")  # noqa: E731
    wait_until("the Instance scheduled", scheduled, timeout=60)
    pid = cloud.dev.operator.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until("the operator gone", lambda: not cloud.dev.operator.running(), timeout=30)
    cloud.dev.operator.start()
    cloud.kubectl(
        "wait", "--for=condition=Ready", "instance/restart", f"--timeout={BOOT_TIMEOUT:.0f}s"
    )
    uid = cloud.instance("restart")["metadata"]["uid"]
    assert [d for d in virsh_domains() if d == f"stratus-{uid}"] == [f"stratus-{uid}"]
    cloud.kubectl("delete", "instance", "restart", "--timeout=120s")
    cloud.kubectl("delete", "-f", str(REPO_ROOT / "examples"), "--timeout=120s")


def test_a_bad_checksum_fails_the_image_and_caches_nothing(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    image = json.loads(cloud.kubectl("get", "image", "stratus-test", "-o", "json"))
    tampered = {
        "apiVersion": "stratus.io/v1alpha1", "kind": "Image", "metadata": {"name": "tampered"},
        "spec": {"source": {"http": {"url": image["spec"]["source"]["http"]["url"],
                                     "sha256": "0" * 64}}},
    }  # fmt: skip
    victim = small_instance("victim", boot={"image": "tampered"})
    cloud.kubectl("apply", "-f", "-", input=json.dumps(tampered))
    cloud.kubectl("apply", "-f", "-", input=json.dumps(victim))

    def ready_reason() -> str | None:
        found = cloud.instance("victim").get("status", {}).get("conditions", [])
        return next((c["reason"] for c in found if c["type"] == "Ready"), None)

    wait_until(
        "the checksum failure", lambda: ready_reason() == "ImageChecksumMismatch", BOOT_TIMEOUT
    )
    failed = wait_until(
        "the Image Failed",
        lambda: (got := json.loads(cloud.kubectl("get", "image", "tampered", "-o", "json")))
        .get("status", {}).get("phase") == "Failed" and got,
        BOOT_TIMEOUT,
    )  # fmt: skip
    message = failed["status"]["conditions"][0]["message"]
    assert "spec.source.http.sha256 is " + "0" * 64 in message
    cached = cloud.dev.node_dir / "agent" / "images"
    assert not list(cached.glob(f"{failed['metadata']['uid']}*"))
    cloud.kubectl("delete", "instance", "victim", "--timeout=120s")
    cloud.kubectl("delete", "image", "tampered")
