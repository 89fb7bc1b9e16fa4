"""Kubernetes resource quantities ("512Mi", "20Gi", "1.5G", 1024), parsed and normalised.

Stratus sizes are byte counts, so a quantity must come to a whole number of bytes. The
canonical form is the shortest exact spelling, binary suffixes winning ties: "1Gi" for
1073741824 and for "1024Mi", "2G" for 2000000000, "1536" for "1.5Ki".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

# The same grammar the API server accepts for resource.Quantity.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)

_BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity, or not a whole number of bytes."""


def parse_quantity(value: str | int) -> Decimal:
    """Return the numeric value of a Kubernetes quantity."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    text = str(value).strip()
    if not _QUANTITY_RE.match(text):
        raise QuantityError(
            f"{value!r} is not a quantity (examples: 512Mi, 20Gi, 1.5G, 1073741824)"
        )
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    match = re.match(r"^(.*?)([eE][+-]?[0-9.]+)$", text)
    if match:
        try:
            return Decimal(text)
        except InvalidOperation as exc:  # e.g. "1e1.5"
            raise QuantityError(f"{value!r} is not a quantity") from exc
    suffix = text[-1] if text[-1] in _DECIMAL and not text[-1].isdigit() else ""
    number = text[: -len(suffix)] if suffix else text
    return Decimal(number) * _DECIMAL[suffix]


def format_bytes(count: int) -> str:
    """Canonical text for a byte count: the shortest exact form, binary suffixes first."""
    candidates = [str(count)]
    for suffix, factor in _BINARY.items():
        if count and count % factor == 0:
            candidates.append(f"{count // factor}{suffix}")
    for suffix in ("k", "M", "G", "T", "P", "E"):
        factor = int(_DECIMAL[suffix])
        if count and count % factor == 0:
            candidates.append(f"{count // factor}{suffix}")
    binary_first = sorted(candidates, key=lambda text: (len(text), not text.endswith("i")))
    return binary_first[0]


class ByteQuantity(str):
    """A non-negative whole number of bytes written as a Kubernetes quantity.

    It is a `str` holding the canonical text, so it serialises as users write it; `.bytes`
    gives the number.
    """

    __slots__ = ("bytes",)
    bytes: int

    def __new__(cls, value: str | int) -> ByteQuantity:
        number = parse_quantity(value)
        if number < 0:
            raise QuantityError(f"{value!r} is negative")
        if number != number.to_integral_value():
            raise QuantityError(f"{value!r} is not a whole number of bytes")
        count = int(number)
        obj = super().__new__(cls, format_bytes(count))
        obj.bytes = count
        return obj

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> ByteQuantity:
            if isinstance(value, ByteQuantity):
                return value
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise QuantityError("must be a quantity such as 512Mi or 20Gi")
            return cls(value)

        return core_schema.no_info_plain_validator_function(
            validate, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "isQuantity(string(self)) && quantity(string(self)).isInteger() "
                    "&& quantity(string(self)).compareTo(quantity('0')) >= 0",
                    "message": "must be a whole, non-negative number of bytes",
                }
            ],
        }
