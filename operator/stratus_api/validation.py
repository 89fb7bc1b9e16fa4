"""Validate a wire-format object against its kind, with errors that name the field.

Paths are written the way the API server writes them (`spec.subnets[0].gateway`), so one
test table can check that the models and the CRD schema refuse the same things.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from stratus_api.v1alpha1 import KINDS, Resource
from stratus_api.v1alpha1.base import FieldError

_BY_KIND = {kind.crd.kind: kind for kind in KINDS}


@dataclass(frozen=True)
class FieldProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidObjectError(ValueError):
    """The object breaks one or more rules; `problems` names each field."""

    def __init__(self, kind: str, name: str | None, problems: Sequence[FieldProblem]) -> None:
        self.kind = kind
        self.name = name
        self.problems = tuple(problems)
        detail = "; ".join(str(problem) for problem in self.problems)
        super().__init__(f"{kind} {name or '(unnamed)'} is invalid: {detail}")


def format_path(location: Sequence[int | str]) -> str:
    """('spec', 'subnets', 0, 'gateway') -> 'spec.subnets[0].gateway'."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("["):
            path += part
        else:
            path += f".{part}" if path else part
    return path


def problems_of(error: ValidationError) -> list[FieldProblem]:
    out = []
    for item in error.errors():
        location: list[int | str] = list(item["loc"])
        message = item["msg"]
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            if cause.field:
                location.append(cause.field)
            message = str(cause)
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        out.append(FieldProblem(format_path(location), message))
    return out


def model_for(kind: str) -> type[Resource]:
    try:
        return _BY_KIND[kind]
    except KeyError:
        known = ", ".join(sorted(_BY_KIND))
        problem = FieldProblem("kind", f"unknown kind (one of {known})")
        raise InvalidObjectError(kind, None, [problem]) from None


def validate(obj: Mapping[str, Any]) -> Resource:
    """Parse a wire-format object of any Stratus kind, or raise InvalidObjectError."""
    kind = str(obj.get("kind", ""))
    model = model_for(kind)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        name = (obj.get("metadata") or {}).get("name")
        raise InvalidObjectError(kind, name, problems_of(exc)) from None


def validate_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> Resource:
    """Parse `new` as an edit of `old` (same kind), or raise InvalidObjectError naming every
    field the edit may not change, as the API server's transition rules do.

    `old` is the object as stored, status included (some rules depend on it, such as an
    Instance's nodeSelector once it is placed); `new` the object as sent. An edit the API
    server refuses for `new` alone is refused here by `validate` first.
    """
    before = validate(old)
    after = validate(new)
    if type(after) is not type(before):
        problem = FieldProblem("kind", f"an edit cannot change kind {before.crd.kind}")
        raise InvalidObjectError(after.crd.kind, after.metadata.name, [problem])
    refused = after.refused_changes(before)
    if refused:
        problems = [FieldProblem(error.field, str(error)) for error in refused]
        raise InvalidObjectError(after.crd.kind, after.metadata.name, problems)
    return after
