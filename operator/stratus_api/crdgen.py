"""Generate CustomResourceDefinitions from the stratus_api models.

Pydantic writes a JSON schema; this turns it into a Kubernetes structural schema: `$ref`s
inlined, `X | None` made `nullable`, titles dropped, CEL rules and list-type markers kept,
and keys in a stable order so crds/ only changes when the API does.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from stratus_api.v1alpha1 import GROUP, KINDS, VERSION, Resource

Schema = dict[str, Any]

# Key order of every schema node: what a reader wants first comes first.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-int-or-string",
    "anyOf",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)
_DROPPED = {"title", "examples", "$defs"}


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a `$ref`; keys beside it (a field's description, rules) win over the target's."""
    if "$ref" not in node:
        return node
    target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
    siblings = {key: value for key, value in node.items() if key != "$ref"}
    rules = target.get("x-kubernetes-validations", []) + siblings.pop(
        "x-kubernetes-validations", []
    )
    merged = {**target, **siblings}
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = _resolve(node, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [branch for branch in node["anyOf"] if branch != {"type": "null"}]
        rest = {key: value for key, value in node.items() if key != "anyOf"}
        if len(branches) == 1:
            # `X | None`: the field may be absent or null.
            target = _resolve(branches[0], defs)
            node = {**target, **rest, "nullable": True}
            rules = target.get("x-kubernetes-validations", []) + rest.get(
                "x-kubernetes-validations", []
            )
            if rules:
                node["x-kubernetes-validations"] = rules
        else:
            node = {**rest, "anyOf": branches}
    if node.get("default", 0) is None:
        del node["default"]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _structural(child, defs) for name, child in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
            # `false` (pydantic's extra="forbid") is not structural: the API server prunes
            # unknown fields and kubectl's strict field validation reports them instead.
        elif key == "x-kubernetes-validations":
            order = ("rule", "message", "fieldPath", "reason")
            out[key] = [{k: rule[k] for k in order if k in rule} for rule in value]
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema's `exclusiveMinimum: 0` is OpenAPI v3.0's `minimum: 0` plus
            # `exclusiveMinimum: true`, the only form the API server takes.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    known = [key for key in _KEY_ORDER if key in node]
    other = sorted(key for key in node if key not in _KEY_ORDER)
    return {key: node[key] for key in known + other}


def schema_for(model: type[Resource]) -> Schema:
    """The openAPIV3Schema of one kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    root = _structural(raw, defs)
    props = root["properties"]
    # The API server owns metadata; a CRD may only constrain name and generateName.
    metadata: Schema = {"type": "object"}
    name_schema = props["metadata"].get("properties", {}).get("name", {})
    name_rules = {k: v for k, v in name_schema.items() if k in ("maxLength", "pattern")}
    if name_rules:
        metadata["properties"] = {"name": {"type": "string", **name_rules}}
    props["metadata"] = metadata
    props["apiVersion"] = {
        "description": "stratus.io/v1alpha1",
        "type": "string",
    }
    props["kind"] = {"description": f"{model.crd.kind}", "type": "string"}
    if "status" in props:
        status = props["status"]
        status.pop("nullable", None)
        if "observedGeneration" in status.get("properties", {}):
            # kstatus (helm --wait, Flux) reads an object with no status as Current; one
            # the operator has not looked at yet must read InProgress instead, or a fresh
            # stack is "ready" before anything ran. The API server fills this default in
            # when it reads an object without status: observed 0, never a generation.
            status["default"] = {"observedGeneration": 0}
            props["status"] = _ordered(status)
    root["required"] = ["spec"]
    root["description"] = model.__doc__.strip() if model.__doc__ else model.crd.kind
    if model.crd.root_rules:
        root["x-kubernetes-validations"] = [rule.as_schema() for rule in model.crd.root_rules]
    return _ordered(root)


def crd_for(model: type[Resource]) -> Schema:
    info = model.crd
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "scope": info.scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [col.as_schema() for col in info.printer_columns],
                    "schema": {"openAPIV3Schema": schema_for(model)},
                }
            ],
        },
    }


def render(model: type[Resource]) -> str:
    header = "# GENERATED by `stratus dev gen-crds` from stratus_api: do not edit.\n"
    return header + yaml.safe_dump(crd_for(model), sort_keys=False, width=100)


def file_name(model: type[Resource]) -> str:
    return f"{GROUP}_{model.crd.plural}.yaml"


def generate() -> dict[str, str]:
    """File name -> content for every kind."""
    return {file_name(model): render(model) for model in KINDS}


def write(directory: Path) -> list[Path]:
    """Write every CRD into `directory`, removing stale generated files; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    files = generate()
    for stale in directory.glob(f"{GROUP}_*.yaml"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, content in files.items():
        path = directory / name
        path.write_text(content)
        written.append(path)
    return written


def diff(directory: Path) -> list[str]:
    """Names of files in `directory` that differ from what the generator writes."""
    files = generate()
    out = [
        name
        for name, content in files.items()
        if not (directory / name).exists() or (directory / name).read_text() != content
    ]
    out += [p.name for p in directory.glob(f"{GROUP}_*.yaml") if p.name not in files]
    return sorted(out)
