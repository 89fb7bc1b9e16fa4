"""Every bad object of tests/data/bad_objects.yaml is refused by the models, naming its field;
every good one is accepted; every pattern-bearing field is in the look-alike table.

tests/cluster/test_admission.py runs the same tables through the API server.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from stratus_api import crdgen, validation
from stratus_api.v1alpha1 import KINDS
from testsupport import REPO_ROOT, bad_object_cases, load_yaml_documents

TABLES = load_yaml_documents(REPO_ROOT / "tests/data/bad_objects.yaml")
CASES = bad_object_cases()
GOOD = TABLES[1]
PATTERN_FIELDS = TABLES[2]


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
def test_models_refuse_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(validation.InvalidObjectError) as caught:
        validation.validate(wire(case))
    paths = {problem.path: problem.message for problem in caught.value.problems}
    assert case["field"] in paths, f"models named {sorted(paths)}, expected {case['field']}"
    if "message" in case:
        assert case["message"] in paths[case["field"]]


@pytest.mark.parametrize("case", GOOD, ids=[c["case"] for c in GOOD])
def test_models_accept_objects_at_the_edges(case: dict[str, Any]) -> None:
    validation.validate(wire(case))


@pytest.mark.parametrize("case", PATTERN_FIELDS, ids=[c["field"] for c in PATTERN_FIELDS])
def test_pattern_field_samples_are_valid(case: dict[str, Any]) -> None:
    validation.validate(wire(case))


def pattern_paths(node: dict[str, Any], path: str = "") -> list[str]:
    """Paths ('spec.networks[].mac') of every schema node with a pattern."""
    found = [path] if "pattern" in node else []
    for key, child in node.get("properties", {}).items():
        found += pattern_paths(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        found += pattern_paths(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += pattern_paths(node["additionalProperties"], f"{path}{{}}")
    return found


def test_every_pattern_field_is_in_the_look_alike_table() -> None:
    """Status is left out: the operator writes it, and create ignores it."""
    in_crds = {
        (model.crd.kind, path)
        for model in KINDS
        for path in pattern_paths(crdgen.schema_for(model))
        if not path.startswith("status")
    }
    in_table = {
        (case["object"]["kind"], re.sub(r"\[[0-9]+\]", "[]", case["field"]))
        for case in PATTERN_FIELDS
    }
    assert in_crds == in_table


def _in_chart(path: Any) -> bool:
    """Files of a Helm chart (examples/stack) are templates and values, not objects; the
    chart's rendered objects go through admission in tests/e2e/test_stack.py."""
    return any((parent / "Chart.yaml").exists() for parent in path.parents)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (REPO_ROOT / "examples").rglob("*.yaml") if not _in_chart(p)),
    ids=lambda p: p.name,
)
def test_examples_are_valid(path: Any) -> None:
    for doc in load_yaml_documents(path):
        validation.validate(doc)
