"""Shared pieces of every Stratus resource: the model base, conditions, CRD facts, CEL rules."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

GROUP = "stratus.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "stratus"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MAX = 63


class FieldError(ValueError):
    """A cross-field rule broken by one field, named relative to the model that checks it.

    stratus_api.validation appends `field` to the location pydantic reports, so messages name
    the same path the API server names for the CEL twin of the rule.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Rule:
    """A CEL rule for `x-kubernetes-validations`; `field_path` points the error at a child."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def as_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def rules(*items: Rule) -> Callable[..., None]:
    """`json_schema_extra` adding CEL rules to a model's or a field's schema.

    A callable rather than a dict, so the rules are appended to those the field's type
    already carries (a dict would replace them).
    """

    def extra(schema: JsonSchemaValue, *_: Any) -> None:
        schema["x-kubernetes-validations"] = [
            *schema.get("x-kubernetes-validations", []),
            *(item.as_schema() for item in items),
        ]

    return extra


def add_rules(schema: JsonSchemaValue, *items: Rule) -> JsonSchemaValue:
    """Append CEL rules to a JSON schema, keeping any it already has."""
    out = dict(schema)
    out["x-kubernetes-validations"] = [
        *out.get("x-kubernetes-validations", []),
        *(item.as_schema() for item in items),
    ]
    return out


class WithRules:
    """`Annotated` marker adding CEL rules to a type's schema (no Python-side check)."""

    def __init__(self, *items: Rule) -> None:
        self.items = items

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return handler(source)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return add_rules(handler(schema), *self.items)


def immutable(what: str) -> Callable[..., None]:
    """CEL transition rule refusing any change to a field after creation.

    On the field itself, so the API server runs it only when the field is set both before
    and after the edit: setting or clearing an optional field passes. `unchanged` is the
    rule that refuses those too.
    """
    return rules(Rule("self == oldSelf", immutable_message(what)))


def immutable_message(what: str) -> str:
    return f"{what} is immutable once created"


def unchanged(field: str, message: str, *, equal: str | None = None) -> Rule:
    """CEL transition rule on an object: its child `field` stays set, or stays unset, and
    keeps its value. `equal` compares the two values (default `self.F == oldSelf.F`), for
    values that have more than one spelling, such as quantities.

    On the parent, unlike `immutable()`, because the API server runs a field's own
    transition rule only when the field exists before and after the edit. The models see
    one object at a time: a kind's `refused_changes` is the Python twin.
    """
    same = equal or f"self.{field} == oldSelf.{field}"
    return Rule(
        f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || ({same}))",
        message,
        field_path=f".{field}",
    )


def list_map(*keys: str) -> dict[str, Any]:
    """Schema markers for a list that is a map keyed by `keys` (merges by key under SSA)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class ApiModel(BaseModel):
    """snake_case in Python, camelCase on the wire; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        validate_assignment=True,
        extra="forbid",
        use_enum_values=False,
        use_attribute_docstrings=False,
        # Field patterns run on the Rust regex crate, where `^`/`$` mean the start and end of
        # the text as in Go's RE2 (Python's `re` lets `$` match before a final newline).
        # Patterns use explicit ASCII classes only: `\s`, `\d`, `\w` are Unicode-aware
        # here and ASCII-only in the API server.
        regex_engine="rust-regex",
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of the object's current state, in the standard Kubernetes shape."""

    type: str = Field(description="Condition type in CamelCase, such as Ready or Scheduled.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="One CamelCase word a program can switch on, such as ImagePulled.",
    )
    message: str = Field(default="", description="What happened, for a person to read.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was set for."
    )


class ObjectMeta(BaseModel):
    """The parts of metadata Stratus reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, regex_engine="rust-regex")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class PrinterColumn:
    """An `additionalPrinterColumns` entry for `kubectl get`."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0

    def as_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class CrdInfo:
    """What a CustomResourceDefinition says besides the schema."""

    kind: str
    plural: str
    scope: Literal["Namespaced", "Cluster"]
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = (CATEGORY,)
    root_rules: tuple[Rule, ...] = field(default_factory=tuple)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


class Resource(ApiModel):
    """Root of every Stratus kind. CRD facts are class keyword arguments:

    `class Image(Resource, plural="images", scope="Namespaced", short_names=("img",), ...)`
    """

    crd: ClassVar[CrdInfo]
    model_config = ConfigDict(extra="forbid")

    api_version: Literal["stratus.io/v1alpha1"] = "stratus.io/v1alpha1"
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    def __init_subclass__(
        cls,
        *,
        plural: str | None = None,
        scope: Literal["Namespaced", "Cluster"] = "Namespaced",
        short_names: tuple[str, ...] = (),
        printer_columns: tuple[PrinterColumn, ...] = (),
        root_rules: tuple[Rule, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if plural is not None:
            cls.crd = CrdInfo(
                kind=cls.__name__,
                plural=plural,
                scope=scope,
                short_names=short_names,
                printer_columns=(*printer_columns, AGE),
                root_rules=root_rules,
            )

    def refused_changes(self, old: Self) -> list[FieldError]:
        """What admission refuses in an edit from `old` to this object: the Python twin of
        the kind's CEL transition rules (`oldSelf`), each FieldError naming its field from
        the object's root. A single object cannot tell; stratus_api.validation's
        `validate_update` calls this with both. None here; kinds that have rules override it.
        """
        return []


class DnsLabelObjectMeta(ObjectMeta):
    """Metadata of a kind whose name becomes a node-side name (a guest's hostname)."""

    name: str | None = Field(
        default=None,
        max_length=DNS_LABEL_MAX,
        pattern=DNS_LABEL_PATTERN,
        description="A DNS label: lowercase letters, digits and '-', at most 63 characters.",
    )


MAX_NODE_SELECTOR = 32
LABEL_KEY_MAX = 317  # a DNS subdomain prefix (253), '/', a name (63)
LABEL_VALUE_MAX = 63
NODE_SELECTOR_KEY_MESSAGE = f"nodeSelector keys must be at most {LABEL_KEY_MAX} characters"


def _label_keys(selector: dict[str, str]) -> dict[str, str]:
    if any(len(key) > LABEL_KEY_MAX for key in selector):
        raise ValueError(NODE_SELECTOR_KEY_MESSAGE)
    return selector


# Labels a Hypervisor must have: an Instance's, or a node-local Volume's.
NodeSelector = Annotated[
    dict[str, Annotated[str, Field(max_length=LABEL_VALUE_MAX)]],
    Field(max_length=MAX_NODE_SELECTOR),
    AfterValidator(_label_keys),
    WithRules(Rule(f"self.all(k, size(k) <= {LABEL_KEY_MAX})", NODE_SELECTOR_KEY_MESSAGE)),
]
