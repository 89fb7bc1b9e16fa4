"""The generated CRDs: in sync with the models, structural, and as useful as the issue asks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from stratus_api import crdgen
from stratus_api.v1alpha1 import KINDS, image
from testsupport import REPO_ROOT


def test_crds_directory_is_in_sync_with_the_models() -> None:
    assert crdgen.diff(REPO_ROOT / "crds") == [], "run `stratus dev gen-crds`"
    # The chart installs the same CRDs.
    assert crdgen.diff(REPO_ROOT / "charts" / "stratus" / "crds") == [], (
        "run `stratus dev gen-crds`"
    )


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
    "VolumeSnapshot": ["Phase", "Volume", "Size", "Age"],
    "CephPool": ["Pool", "User", "Ready", "Provisioned", "Free", "Age"],
    "Image": ["Phase", "Format", "Size", "Age"],
    "Network": ["Type", "CIDR", "Segment", "Age"],
    "Router": ["Ready", "Node", "External", "Age"],
    "FloatingIP": ["Address", "Instance", "Fixed", "Ready", "Age"],
    "SecurityGroup": ["Ports", "Nodes", "Ready", "Age"],
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
    boot = " ".join(rules_at(by_kind["Instance"], "spec", "boot"))
    for field in ("image", "volume", "diskSize"):
        assert f"has(self.{field}) == has(oldSelf.{field})" in boot
    nics = crdgen.schema_for(by_kind["Instance"])["properties"]["spec"]["properties"]["networks"]
    nic_rules = " ".join(rule["rule"] for rule in nics["items"]["x-kubernetes-validations"])
    assert "self.ip == oldSelf.ip" in nic_rules and "self.mac == oldSelf.mac" in nic_rules
    root = crdgen.schema_for(by_kind["Instance"])["x-kubernetes-validations"]
    assert [rule["fieldPath"] for rule in root] == [".spec.nodeSelector"]


def test_optional_fields_become_nullable_not_any_of() -> None:
    by_kind = {m.crd.kind: m for m in KINDS}
    gateway = crdgen.schema_for(by_kind["Network"])["properties"]["spec"]["properties"]["subnets"]
    node = gateway["items"]["properties"]["gateway"]
    assert node["type"] == "string" and node["nullable"] is True and "default" not in node


def test_ratios_are_numbers_with_openapi_v3_0_exclusive_bounds() -> None:
    by_kind = {m.crd.kind: m for m in KINDS}
    spec = crdgen.schema_for(by_kind["Hypervisor"])["properties"]["spec"]
    ratio = spec["properties"]["allocationRatio"]
    assert ratio["default"] == {}  # the API server then fills in each ratio's default
    cpu = ratio["properties"]["cpu"]
    assert cpu["type"] == "number" and cpu["default"] == 4.0
    assert cpu["minimum"] == 0 and cpu["exclusiveMinimum"] is True and cpu["maximum"] == 64
    assert spec["properties"]["reserved"]["properties"]["memory"]["default"] == "512Mi"


def test_wide_hypervisor_columns_show_what_is_allocatable() -> None:
    by_kind = {m.crd.kind: m for m in KINDS}
    columns = crdgen.crd_for(by_kind["Hypervisor"])["spec"]["versions"][0]
    wide = {c["name"]: c for c in columns["additionalPrinterColumns"] if c.get("priority")}
    assert wide["Allocatable CPU"]["jsonPath"] == ".status.allocatable.cpu"
    assert wide["Allocatable Memory"]["jsonPath"] == ".status.allocatable.memory"


def engine_dependent(pattern: str) -> list[str]:
    """The parts of a regex that Python/Rust and Go's RE2 read differently: class escapes
    (Unicode-aware in one, ASCII in the other) and `.` outside a character class."""
    found, index, in_class = [], 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            escape = pattern[index : index + 2]
            if escape[1:] in "sSdDwWbBAzZ":
                found.append(escape)
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "." and not in_class:
            found.append(".")
        index += 1
    return found


def schema_patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in schema_patterns(value)]
    if isinstance(node, list):
        return [p for item in node for p in schema_patterns(item)]
    return []


def test_patterns_use_explicit_ascii_classes() -> None:
    patterns = [p for model in KINDS for p in schema_patterns(crdgen.schema_for(model))]
    patterns += [image.HOST_NAME_PATTERN, *image.URL_HOST_STEPS]  # CEL matches()/find()
    assert len(patterns) > 10
    for pattern in patterns:
        assert engine_dependent(pattern) == [], pattern
    assert engine_dependent(r"^\S+ [.]\.x.$") == ["\\S", "."]
