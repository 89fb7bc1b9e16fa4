"""Every refused edit of tests/data/bad_updates.yaml is refused by the models' twin of the
transition rules (validation.validate_update), naming its field; every accepted one passes.

tests/cluster/test_admission.py sends the same edits to the API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stratus_api import validation
from testsupport import REPO_ROOT, load_yaml_documents

REFUSED, ACCEPTED = load_yaml_documents(REPO_ROOT / "tests/data/bad_updates.yaml")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as `kubectl patch --type=merge` applies it: null removes, objects merge,
    anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def before_and_after(case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    old = {"apiVersion": "stratus.io/v1alpha1", **copy.deepcopy(case["object"])}
    if "status" in case:
        old["status"] = case["status"]
    return old, merge_patch(old, case["patch"])


@pytest.mark.parametrize("case", REFUSED, ids=[c["case"] for c in REFUSED])
def test_models_refuse_edits_naming_the_field(case: dict[str, Any]) -> None:
    old, new = before_and_after(case)
    validation.validate(new)  # the new object alone is fine: only the edit is refused
    with pytest.raises(validation.InvalidObjectError) as caught:
        validation.validate_update(old, new)
    paths = {problem.path: problem.message for problem in caught.value.problems}
    assert case["field"] in paths, f"models named {sorted(paths)}, expected {case['field']}"
    assert case["message"] in paths[case["field"]]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c["case"] for c in ACCEPTED])
def test_models_accept_edits_the_node_applies(case: dict[str, Any]) -> None:
    validation.validate_update(*before_and_after(case))


def test_an_edit_cannot_change_the_kind() -> None:
    volume = {"kind": "Volume", "metadata": {"name": "v"}, "spec": {"size": "1Gi"}}
    image = {
        "kind": "Image",
        "metadata": {"name": "v"},
        "spec": {"source": {"http": {"url": "http://images.example/disk.img"}}},
    }
    with pytest.raises(validation.InvalidObjectError, match="kind: an edit cannot change kind"):
        validation.validate_update(volume, image)
