"""kopf against the real API: create handler patches status, delete runs under a finalizer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport import REPO_ROOT, Cluster

IMAGE = """
apiVersion: stratus.io/v1alpha1
kind: Image
metadata: {name: probe}
spec: {source: {http: {url: "http://127.0.0.1:8480/probe.qcow2"}}}
"""


@pytest.fixture
def kopf_operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "probe.log"
    log.touch()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            f"--namespace={namespace}",
            str(Path(__file__).with_name("kopf_probe.py")),
        ],
        env={**cluster.env, "PROBE_LOG": str(log)},
        stdout=(tmp_path / "kopf.out").open("w"),
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    try:
        yield log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode in (0, -15), (tmp_path / "kopf.out").read_text()


def test_create_and_delete_handlers(cluster: Cluster, namespace: str, kopf_operator: Path) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=IMAGE)
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", "--timeout=60s", "image/probe"
    )
    image = cluster.get_json("image", "probe", "-n", namespace)
    assert image["status"]["phase"] == "Ready"
    assert "stratus.io/kopf-probe" in image["metadata"]["finalizers"]

    cluster.kubectl("delete", "-n", namespace, "image", "probe", "--timeout=60s")
    assert kopf_operator.read_text().splitlines() == ["deleted probe while-pending=True"]
    gone = cluster.kubectl("get", "-n", namespace, "image", "probe", check=False)
    assert "NotFound" in gone.stderr
