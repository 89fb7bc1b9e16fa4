"""The generated CRDs: in sync with the models, structural, and as useful as the issue asks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from stratus_api import crdgen
from stratus_api.v1alpha1 import KINDS
from testsupport import REPO_ROOT


def test_crds_directory_is_in_sync_with_the_models() -> None:
    assert crdgen.diff(REPO_ROOT / "crds") == [], "run `stratus dev gen-crds`"


def test_diff_notices_an_edit_and_a_stray_file(tmp_path: Any) -> None:
    crdgen.write(tmp_path)
    assert crdgen.diff(tmp_path) == []
    edited = tmp_path / "stratus.io_images.yaml"
    edited.write_text(edited.read_text().replace("Glance", "Swift"))
    (tmp_path / "stratus.io_servers.yaml").write_text("{}")
    assert crdgen.diff(tmp_path) == ["stratus.io_images.yaml", "stratus.io_servers.yaml"]
    crdgen.write(tmp_path)
    assert crdgen.diff(tmp_path) == []


def walk(node: Any, path: str = "") -> Any:
    yield path, node
    if isinstance(node, dict):
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.crd.kind)
def test_schema_is_structural_and_documented(model: Any) -> None:
    schema = crdgen.schema_for(model)
    for path, node in walk(schema):
        text = yaml.safe_dump(node)
        assert "$ref" not in text and "title:" not in text, path
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path} has no type"
        assert "anyOf" not in node, path
        if (
            path.startswith((".spec", ".status"))
            and path.count(".") == 2
            and not path.endswith(("[]", "{}"))
        ):
            assert node.get("description"), f"{path} has no description for kubectl explain"


EXPECTED_COLUMNS = {
    "Instance": ["Phase", "Node", "IP", "Age"],
    "Volume": ["Phase", "Size", "Backend", "AttachedTo", "Age"],
    "Image": ["Phase", "Format", "Size", "Age"],
    "Network": ["Type", "CIDR", "Segment", "Age"],
    "Hypervisor": ["Ready", "VirtType", "CPU", "Memory", "Age"],
    "InstanceType": ["CPU", "Memory", "Disk", "Age"],
}


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.crd.kind)
def test_names_columns_and_status_subresource(model: Any) -> None:
    crd = crdgen.crd_for(model)
    names = crd["spec"]["names"]
    assert names["shortNames"] and names["categories"] == ["stratus"]
    version = crd["spec"]["versions"][0]
    default_columns = [
        c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c
    ]
    assert default_columns == EXPECTED_COLUMNS[model.crd.kind]
    assert version["subresources"] == {"status": {}}


def rules_at(model: Any, *path: str) -> list[str]:
    node = crdgen.schema_for(model)
    for key in path:
        node = node["properties"][key]
    return [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]


def test_fields_fixed_at_creation_have_transition_rules() -> None:
    by_kind = {m.crd.kind: m for m in KINDS}
    assert "self == oldSelf" in rules_at(by_kind["Network"], "spec", "type")
    assert "self == oldSelf" in rules_at(by_kind["Network"], "spec", "segmentationId")
    assert "self == oldSelf" in rules_at(by_kind["Volume"], "spec", "backend")
    assert "self == oldSelf" in rules_at(by_kind["Image"], "spec", "source")


def test_optional_fields_become_nullable_not_any_of() -> None:
    by_kind = {m.crd.kind: m for m in KINDS}
    gateway = crdgen.schema_for(by_kind["Network"])["properties"]["spec"]["properties"]["subnets"]
    node = gateway["items"]["properties"]["gateway"]
    assert node["type"] == "string" and node["nullable"] is True and "default" not in node
