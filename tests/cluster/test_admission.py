"""The API server itself refuses bad objects, naming the same field the models name; accepts
the objects at the edges of the rules; gives the same verdict as the models on strings with
look-alike characters in every pattern-bearing field; and refuses the edits the models' twin
of its transition rules refuses (tests/data/bad_updates.yaml), accepting the others."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from stratus_api import validation
from testsupport import REPO_ROOT, Cluster, bad_object_cases, load_yaml_documents

TABLES = load_yaml_documents(REPO_ROOT / "tests/data/bad_objects.yaml")
CASES = bad_object_cases()
GOOD = TABLES[1]
PATTERN_FIELDS = TABLES[2]
PROBE_LABEL = "stratus-probe"

# Characters that Unicode-aware regex classes (\s, \S, \d, `.`) treat unlike Go's RE2, and
# whitespace a sloppy pattern lets through.
LOOK_ALIKES = {
    "nbsp": "\u00a0",
    "line-separator": "\u2028",
    "ideographic-space": "\u3000",
    "tab": "\t",
}
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + digit) for digit in range(10)))


def expand(node: Any) -> Any:
    """{$repeat: S, times: N, prefix: P} -> P + S * N, anywhere in a table object."""
    if isinstance(node, dict) and "$repeat" in node:
        return node.get("prefix", "") + node["$repeat"] * node["times"]
    if isinstance(node, dict):
        return {key: expand(value) for key, value in node.items()}
    if isinstance(node, list):
        return [expand(item) for item in node]
    return node


def wire(case: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", **expand(case["object"])}


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_api_server_refuses_naming_the_field(
    cluster: Cluster, namespace: str, case: dict[str, Any]
) -> None:
    result = cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(wire(case)), check=False
    )
    assert result.returncode != 0, f"API server accepted {case['case']}: {result.stdout}"
    assert f"{case['field']}:" in result.stderr, result.stderr
    if "message" in case:
        assert case["message"] in result.stderr, result.stderr


def dry_run_accepted(cluster: Cluster, namespace: str, objects: list[dict[str, Any]]) -> set[str]:
    """Labels PROBE_LABEL of the objects a server-side dry-run create accepts (one request)."""
    for index, obj in enumerate(objects):
        obj.setdefault("metadata", {}).setdefault("labels", {})[PROBE_LABEL] = str(index)
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    result = cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-",
        "-o", f"jsonpath={{.metadata.labels.{PROBE_LABEL}}}{{' '}}",
        input=items, check=False,
    )  # fmt: skip
    return set(result.stdout.split())


def test_api_server_accepts_objects_at_the_edges(cluster: Cluster, namespace: str) -> None:
    accepted = dry_run_accepted(cluster, namespace, [wire(case) for case in GOOD])
    refused = [case["case"] for index, case in enumerate(GOOD) if str(index) not in accepted]
    assert refused == []


def path_of(field: str) -> list[str | int]:
    """'spec.networks[0].mac' -> ['spec', 'networks', 0, 'mac']."""
    return [int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", field)]


def value_at(obj: dict[str, Any], field: str) -> str:
    node: Any = obj
    for key in path_of(field):
        node = node[key]
    assert isinstance(node, str)
    return node


def variants(value: str) -> dict[str, str]:
    """`value` with a look-alike in the middle, in place of its first space, at its end; a
    trailing newline; its digits in fullwidth form."""
    middle = len(value) // 2
    out = {"trailing-newline": value + "\n", "fullwidth-digits": value.translate(FULLWIDTH)}
    if out["fullwidth-digits"] == value:
        out["fullwidth-digits"] = value + "\uff11"
    for name, char in LOOK_ALIKES.items():
        out[f"{name}-inside"] = value[:middle] + char + value[middle:]
        out[f"{name}-at-end"] = value + char
        if " " in value:
            out[f"{name}-for-space"] = value.replace(" ", char, 1)
    return out


def test_models_and_api_server_agree_on_look_alike_characters(
    cluster: Cluster, namespace: str
) -> None:
    probes: list[tuple[str, dict[str, Any]]] = []
    for case in PATTERN_FIELDS:
        *parents, last = path_of(case["field"])
        for name, value in variants(value_at(wire(case), case["field"])).items():
            obj = wire(case)
            node: Any = obj
            for key in parents:
                node = node[key]
            node[last] = value
            probes.append((f"{obj['kind']} {case['field']} {name}", obj))
    model_accepts = set()
    for index, (_, obj) in enumerate(probes):
        try:
            validation.validate(obj)
        except validation.InvalidObjectError:
            continue
        model_accepts.add(str(index))
    server_accepts = dry_run_accepted(cluster, namespace, [obj for _, obj in probes])
    disagree = {
        what: "server accepts" if str(index) in server_accepts else "models accept"
        for index, (what, _) in enumerate(probes)
        if (str(index) in server_accepts) != (str(index) in model_accepts)
    }
    assert disagree == {}
    assert len(probes) > 100


def test_examples_are_accepted(cluster: Cluster, namespace: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples"))
    assert "instance.stratus.io/demo created" in result.stdout
    cluster.kubectl("delete", "-n", namespace, "-f", str(REPO_ROOT / "examples"))


UPDATES_REFUSED, UPDATES_ACCEPTED = load_yaml_documents(REPO_ROOT / "tests/data/bad_updates.yaml")


def create_then_patch(
    cluster: Cluster, namespace: str, case: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Create the case's object (with its status, if any), then send its merge patch."""
    obj = wire(case)
    kind, name = obj["kind"].lower(), obj["metadata"]["name"]
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))
    if "status" in case:
        cluster.kubectl(
            "patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": case["status"]}),
        )  # fmt: skip
    return cluster.kubectl(
        "patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(case["patch"]),
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("case", UPDATES_REFUSED, ids=[c["case"] for c in UPDATES_REFUSED])
def test_api_server_refuses_edits_naming_the_field(
    cluster: Cluster, namespace: str, case: dict[str, Any]
) -> None:
    result = create_then_patch(cluster, namespace, case)
    assert result.returncode != 0, f"API server accepted {case['case']}: {result.stdout}"
    assert f"{case['field']}:" in result.stderr and case["message"] in result.stderr, result.stderr


@pytest.mark.parametrize("case", UPDATES_ACCEPTED, ids=[c["case"] for c in UPDATES_ACCEPTED])
def test_api_server_accepts_edits_the_node_applies(
    cluster: Cluster, namespace: str, case: dict[str, Any]
) -> None:
    result = create_then_patch(cluster, namespace, case)
    assert result.returncode == 0, result.stderr
