"""Kubernetes resource quantities ("512Mi", "20Gi", "1.5G", 1024), parsed and normalised.

Stratus sizes are byte counts, so a quantity must come to a whole number of bytes. The
canonical form is the shortest exact spelling, binary suffixes winning ties: "1Gi" for
1073741824 and for "1024Mi", "2G" for 2000000000, "1536" for "1.5Ki".

The value is the one the API server's resource.ParseQuantity gives, computed exactly: the
same grammar, and magnitudes below a nano rounded up to the next nano as it does, so a
quantity is whole here exactly when it is whole there. Whether a quantity is whole is
decided from its value, never from its spelling: the API server's own `isInteger()` says
false for "1Pi", "100Ti" or "0.5Gi" (they do not fit its fast int64 path), so the CEL rules
below do not use it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal, localcontext
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

# The API server's quantity grammar, with the exponent limited to three digits: Kubernetes
# reads a longer one as int64 and then truncates it to int32, so "64e4294967296" would be
# 64 bytes to it and a huge number to anyone else. Nobody writes a byte count with an
# exponent above 999, and the limit keeps both sides' arithmetic small.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,3}))?$"
)
QUANTITY_MAX_LENGTH = 64
_QUANTITY_RE = re.compile(QUANTITY_PATTERN.removeprefix("^").removesuffix("$"))
_NUMBER_RE = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)")

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
_NANO = Decimal("1e-9")
# Digits enough for any value the grammar above can spell, exactly.
_PRECISION = 2 * QUANTITY_MAX_LENGTH + 1100
INT64_MAX = 2**63 - 1
# Above this the CEL twin's whole-number test (the float it gets from the API server is
# within 0.5 of the exact value) would no longer be exact; every byte bound stays below.
CEL_EXACT_MAX = 2**50  # 1Pi


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity, or not a whole number of bytes."""


def parse_quantity(value: str | int) -> Decimal:
    """Return the numeric value of a Kubernetes quantity, as the API server reads it."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    text = str(value)
    if len(text) > QUANTITY_MAX_LENGTH or not _QUANTITY_RE.fullmatch(text):
        raise QuantityError(
            f"{value!r} is not a quantity (examples: 512Mi, 20Gi, 1.5G, 1073741824)"
        )
    match = _NUMBER_RE.fullmatch(text)
    assert match is not None  # the grammar above guarantees it
    number, suffix = match.groups()
    with localcontext() as context:
        context.prec = _PRECISION
        amount = Decimal(number)
        if suffix in _BINARY:
            amount *= _BINARY[suffix]
        elif suffix in _DECIMAL:
            amount *= _DECIMAL[suffix]
        else:  # an exponent: e3, E-2, e+9
            amount = amount.scaleb(int(suffix[1:]))
        if amount != 0:
            # resource.ParseQuantity rounds magnitudes up to the next nano.
            rounded = abs(amount).quantize(_NANO, rounding=ROUND_UP)
            amount = rounded.copy_sign(amount)
        return amount


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


def whole_bytes(number: Decimal) -> int | None:
    """The byte count `number` is, or None when it is negative, fractional or above int64."""
    if number < 0 or number > INT64_MAX or number != number.to_integral_value():
        return None
    return int(number)


class ByteQuantity(str):
    """A non-negative whole number of bytes written as a Kubernetes quantity.

    It is a `str` holding the canonical text, so it serialises as users write it; `.bytes`
    gives the number. In a model, a field of this type accepts 0 to 1Pi; `ByteRange` narrows
    that per field kind, with the same rule in the CRD.
    """

    __slots__ = ("bytes",)
    bytes: int

    def __new__(cls, value: str | int) -> ByteQuantity:
        count = whole_bytes(parse_quantity(value))
        if count is None:
            raise QuantityError(f"{value!r} is not a whole, non-negative number of bytes")
        obj = super().__new__(cls, format_bytes(count))
        obj.bytes = count
        return obj

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return ANY_SIZE.validator_schema()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return ANY_SIZE.json_schema()


# Every watch event re-validates the same few spellings ("128Mi", "20Gi"): parsed once.
# Both are pure, and ByteQuantity is immutable, so sharing the results is safe.
@functools.lru_cache(maxsize=1024)
def _byte_count(value: str | int) -> int | None:
    return whole_bytes(parse_quantity(value))


@functools.lru_cache(maxsize=1024)
def _byte_quantity(count: int) -> ByteQuantity:
    return ByteQuantity(count)


@dataclass(frozen=True)
class ByteRange:
    """`Annotated` marker: the byte quantities one kind of field accepts, as one rule.

    `Annotated[ByteQuantity, ByteRange("64Mi", "16Ti")]` accepts whole numbers of bytes from
    64Mi to 16Ti however they are spelled ("17179869184", "16Ti", "0.5Gi", "1e9"), and
    refuses anything else with the same message here and in the API server.
    """

    minimum: str
    maximum: str

    def __post_init__(self) -> None:
        low, high = ByteQuantity(self.minimum).bytes, ByteQuantity(self.maximum).bytes
        if not low <= high <= CEL_EXACT_MAX:
            raise ValueError(f"ByteRange({self.minimum}, {self.maximum}): need min <= max <= 1Pi")

    @property
    def message(self) -> str:
        if ByteQuantity(self.minimum).bytes == 0:
            return f"must be a whole, non-negative number of bytes, at most {self.maximum}"
        return (
            f"must be a whole number of bytes, at least {self.minimum} and at most {self.maximum}"
        )

    @functools.cached_property
    def _bounds(self) -> tuple[int, int]:
        return ByteQuantity(self.minimum).bytes, ByteQuantity(self.maximum).bytes

    def check(self, value: Any) -> ByteQuantity:
        if isinstance(value, ByteQuantity):
            count: int | None = value.bytes
        elif isinstance(value, str | int) and not isinstance(value, bool):
            try:
                count = _byte_count(value)
            except QuantityError:
                raise QuantityError(self.message) from None
        else:
            raise QuantityError("must be a quantity such as 512Mi or 20Gi")
        low, high = self._bounds
        if count is None or not low <= count <= high:
            raise QuantityError(self.message)
        return value if isinstance(value, ByteQuantity) else _byte_quantity(count)

    def rule(self) -> dict[str, str]:
        """The CEL twin of `check`. `q.isInteger()` depends on the spelling, so the rule asks
        whether q minus the integer below its float value, or minus the next one, is zero:
        below 1Pi the float is within 0.5 of q, so that is exact. `[x].all(q, ...)` names x
        once (this CEL has no cel.bind)."""
        return {
            "rule": "isQuantity(string(self)) && [quantity(string(self))].all(q, "
            f"q.compareTo(quantity('{self.minimum}')) >= 0 && "
            f"q.compareTo(quantity('{self.maximum}')) <= 0 && "
            "[0, 1].exists(d, "
            "q.sub(int(q.asApproximateFloat()) + d).compareTo(quantity('0')) == 0))",
            "message": self.message,
        }

    def validator_schema(self) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.check, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    def json_schema(self) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": QUANTITY_MAX_LENGTH,
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [self.rule()],
        }

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return self.validator_schema()

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self.json_schema()


# What a plain ByteQuantity field accepts (sizes the operator reports in status).
ANY_SIZE = ByteRange("0", "1Pi")
