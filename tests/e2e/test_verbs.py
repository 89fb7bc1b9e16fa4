"""Lifecycle verbs on the all-in-one, declaratively with kubectl: pause and unpause through
runStrategy, one restart per new restartRequestedAt, on a real guest."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from allinone_kit import BOOT_TIMEOUT, Cloud, small_instance
from testsupport import REPO_ROOT, wait_until


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def ready(obj: dict[str, Any]) -> bool:
    found = obj.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in found)


def test_pause_unpause_and_restart_once(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    cloud.kubectl("apply", "-f", "-", input=json.dumps(small_instance("verbs")))
    cloud.kubectl("wait", "--for=condition=Ready", "instance/verbs",
                  f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    domain = f"stratus-{cloud.instance('verbs')['metadata']['uid']}"

    def patch(spec: dict[str, Any]) -> None:
        cloud.kubectl("patch", "instance", "verbs", "--type=merge", "-p",
                      json.dumps({"spec": spec}))  # fmt: skip

    patch({"runStrategy": "Paused"})
    wait_until("phase Paused", lambda: cloud.instance("verbs")["status"]["phase"] == "Paused")
    assert virsh("domstate", domain) == "paused"
    patch({"runStrategy": "Always"})
    wait_until("running again", lambda: ready(cloud.instance("verbs")), BOOT_TIMEOUT)
    assert virsh("domstate", domain) == "running"

    before = virsh("domid", domain)
    token = "2026-11-27T08:00:00Z"
    patch({"restartRequestedAt": token})

    def restarted() -> bool:
        found = cloud.instance("verbs")
        return found["status"].get("lastRestartRequestHandled") == token and ready(found)

    wait_until("the restart done", restarted, BOOT_TIMEOUT)
    after = virsh("domid", domain)
    assert after != before  # a new QEMU process: the guest was power-cycled
    # A later spec change with the same token restarts nothing; a requested restart is not
    # one of the crash restarts runStrategy counts.
    patch({"userData": "#!/bin/sh\necho edited\n"})
    wait_until("the edit applied", lambda: (found := cloud.instance("verbs"))["status"].get(
        "observedGeneration") == found["metadata"]["generation"] and ready(found))  # fmt: skip
    assert virsh("domid", domain) == after
    assert not cloud.instance("verbs")["status"].get("restarts")
    cloud.kubectl("delete", "instance", "verbs", "--timeout=120s")
