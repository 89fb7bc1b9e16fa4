"""End to end on the all-in-one cloud: kubectl apply → a real guest boots, pings, goes away.

The all-in-one is shared by every e2e module (conftest.py); `stratus dev down` at the end
of the session must leave no domain, bridge, process or file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from allinone_kit import BOOT_TIMEOUT, Cloud, boot_marker, small_instance, virsh_domains
from testsupport import REPO_ROOT, wait_until


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
    message = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")["message"]
    assert "spec.source.http.sha256 is " + "0" * 64 in message
    cached = cloud.dev.node_dir / "agent" / "images"
    assert not list(cached.glob(f"{failed['metadata']['uid']}*"))
    cloud.kubectl("delete", "instance", "victim", "--timeout=120s")
    cloud.kubectl("delete", "image", "tampered")
