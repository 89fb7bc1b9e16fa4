"""Helpers shared by the test folders (on sys.path through pytest's `pythonpath`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stratus_devcloud import controlplane

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def bad_object_cases() -> list[dict[str, Any]]:
    """tests/data/bad_objects.yaml: objects that break one rule each."""
    cases: list[dict[str, Any]] = load_yaml_documents(REPO_ROOT / "tests/data/bad_objects.yaml")[0]
    return cases


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    local: controlplane.LocalControlPlane | None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            check=False,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this cluster (kopf, kubectl)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
        }


AGENT_TOKEN = "test-token-0123456789abcdef"

AGENT_AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def guest_spec(**overrides: Any) -> dict[str, Any]:
    uid = str(uuid.uuid4())
    spec: dict[str, Any] = {
        "uid": uid,
        "name": "web",
        "namespace": "team-a",
        "generation": 1,
        "cpu": 1,
        "memoryBytes": 256 * 2**20,
        "disks": [
            {
                "name": "root",
                "image": {"uid": str(uuid.uuid4()), "name": "img", "url": "http://127.0.0.1/i"},
            }
        ],
        "nics": [],
        "cloudInit": {
            "instanceId": uid,
            "hostname": "web",
            "userData": base64.b64encode(b"#!/bin/sh\necho password=hunter2-secret").decode(),
        },
    }
    spec.update(overrides)
    return spec


def build_test_image() -> Path:
    """hack/build-test-image's qcow2 (built once, cached between runs)."""
    result = subprocess.run(
        [str(REPO_ROOT / "hack/build-test-image")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(
            f"hack/build-test-image failed ({result.returncode}):\n{result.stderr}"
        )
    image = Path(result.stdout.strip().splitlines()[-1])
    assert image.is_file(), image
    return image


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, poll: float = 0.25) -> Any:
    """`check()`'s first truthy result, polled until `timeout` seconds; else fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
