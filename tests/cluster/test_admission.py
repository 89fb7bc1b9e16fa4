"""The API server itself refuses bad objects, naming the same field the models name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from testsupport import REPO_ROOT, Cluster, bad_object_cases

CASES = bad_object_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_api_server_refuses_naming_the_field(
    cluster: Cluster, namespace: str, case: dict[str, Any]
) -> None:
    obj = {"apiVersion": "stratus.io/v1alpha1", **case["object"]}
    result = cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False
    )
    assert result.returncode != 0, f"API server accepted {case['case']}: {result.stdout}"
    assert f"{case['field']}:" in result.stderr, result.stderr
    if "message" in case:
        assert case["message"] in result.stderr, result.stderr


def test_examples_are_accepted(cluster: Cluster, namespace: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples"))
    assert "instance.stratus.io/demo created" in result.stdout
    cluster.kubectl("delete", "-n", namespace, "-f", str(REPO_ROOT / "examples"))


@pytest.mark.parametrize(
    ("kind", "name", "patch", "field", "message"),
    [
        ("network", "default", {"spec": {"type": "vlan"}}, "spec.type", "immutable"),
        ("volume", "data", {"spec": {"backend": "ceph"}}, "spec.backend", "immutable"),
        ("volume", "data", {"spec": {"size": "512Mi"}}, "spec.size", "never shrink"),
        (
            "image",
            "stratus-test",
            {"spec": {"source": {"http": {"url": "http://127.0.0.1/other.qcow2"}}}},
            "spec.source",
            "immutable",
        ),
    ],
    ids=["network-type", "volume-backend", "volume-shrink", "image-source"],
)
def test_immutable_fields_refuse_changes(
    cluster: Cluster, namespace: str, kind: str, name: str, patch: Any, field: str, message: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / f"{kind}.yaml"))
    result = cluster.kubectl(
        "patch",
        kind,
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert f"{field}:" in result.stderr and message in result.stderr, result.stderr


def test_volume_can_grow(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "volume.yaml"))
    cluster.kubectl(
        "patch",
        "volume",
        "data",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"size": "2Gi"}}',
    )
    assert cluster.get_json("volume", "data", "-n", namespace)["spec"]["size"] == "2Gi"
