"""The all-in-one as the e2e tests drive it: the Cloud handle and helpers to make and watch
guests on it (tests/e2e/conftest.py starts one for the whole session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from stratus_devcloud.allinone import DevCloud
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
