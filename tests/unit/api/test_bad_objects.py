"""Every bad object of tests/data/bad_objects.yaml is refused by the models, naming its field.

tests/cluster/test_admission.py runs the same table through the API server.
"""

from __future__ import annotations

from typing import Any

import pytest

from stratus_api import validation
from testsupport import REPO_ROOT, bad_object_cases, load_yaml_documents

CASES = bad_object_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_models_refuse_naming_the_field(case: dict[str, Any]) -> None:
    obj = {"apiVersion": "stratus.io/v1alpha1", **case["object"]}
    with pytest.raises(validation.InvalidObjectError) as caught:
        validation.validate(obj)
    paths = {problem.path: problem.message for problem in caught.value.problems}
    assert case["field"] in paths, f"models named {sorted(paths)}, expected {case['field']}"
    if "message" in case:
        assert case["message"] in paths[case["field"]]


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_examples_are_valid(path: Any) -> None:
    for doc in load_yaml_documents(path):
        validation.validate(doc)
