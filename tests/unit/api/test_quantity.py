from __future__ import annotations

import pytest
from pydantic import BaseModel

from stratus_api.quantity import ByteQuantity, ByteRange, QuantityError, parse_quantity


@pytest.mark.parametrize(
    ("written", "canonical", "count"),
    [
        ("512Mi", "512Mi", 512 * 2**20),
        ("1024Mi", "1Gi", 2**30),
        (1073741824, "1Gi", 2**30),
        ("20Gi", "20Gi", 20 * 2**30),
        ("2G", "2G", 2_000_000_000),
        ("1.5G", "1500M", 1_500_000_000),
        ("1.5Ki", "1536", 1536),
        ("1e3", "1k", 1000),
        ("1E", "1E", 10**18),
        ("0", "0", 0),
        (1024, "1Ki", 1024),
    ],
)
def test_parsed_and_normalised(written: str | int, canonical: str, count: int) -> None:
    quantity = ByteQuantity(written)
    assert (str(quantity), quantity.bytes) == (canonical, count)


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("1.5", "not a whole, non-negative number of bytes"),
        ("100m", "not a whole, non-negative number of bytes"),
        ("1.5Gi" + "0" * 64, "not a quantity"),  # longer than 64 characters
        ("64e4294967296", "not a quantity"),  # an exponent Kubernetes would wrap to int32
        ("9Ei", "not a whole, non-negative number of bytes"),  # above int64
        ("-1Mi", "negative"),
        ("lots", "not a quantity"),
        ("1 Gi", "not a quantity"),
        ("1GB", "not a quantity"),
    ],
)
def test_refused(written: str, why: str) -> None:
    with pytest.raises(QuantityError, match=why):
        ByteQuantity(written)


def test_millis_parse_exactly() -> None:
    assert parse_quantity("1500m") == 1.5


def test_in_a_model_it_serialises_canonically() -> None:
    class Sized(BaseModel):
        size: ByteQuantity

    assert Sized(size="2048Mi").model_dump(mode="json") == {"size": "2Gi"}
    assert Sized.model_validate({"size": 4096}).size.bytes == 4096
    with pytest.raises(ValueError, match="quantity"):
        Sized(size=True)  # type: ignore[arg-type]


MEMORY = ByteRange("64Mi", "16Ti")


@pytest.mark.parametrize(
    ("written", "count"),
    [
        ("16Ti", 16 * 2**40),
        (16 * 2**40, 16 * 2**40),
        ("17592186044416", 16 * 2**40),
        ("0.5Gi", 2**29),  # not isInteger() to the API server, yet a whole number of bytes
        (".5Gi", 2**29),
        ("1e9", 10**9),
        ("1E9", 10**9),
        ("128e6", 128 * 10**6),
        ("64Mi", 64 * 2**20),
        ("1073741823.9999999999", 2**30),  # rounded up to the next nano, as Kubernetes does
        ("+1Gi", 2**30),
    ],
)
def test_a_range_takes_any_spelling_of_a_whole_number_of_bytes(
    written: str | int, count: int
) -> None:
    assert MEMORY.check(written).bytes == count


@pytest.mark.parametrize(
    "written",
    ["1e18", "1Pi", "17Ti", "17592186044417", "63Mi", "0.1Gi", "1073741824.0000000001", "-1Gi",
     "1E3Ti", "lots", "64e4294967296"],
)  # fmt: skip
def test_a_range_refuses_with_one_message(written: str) -> None:
    with pytest.raises(QuantityError) as caught:
        MEMORY.check(written)
    assert str(caught.value) == "must be a whole number of bytes, at least 64Mi and at most 16Ti"


def test_a_range_is_one_cel_rule() -> None:
    rule = MEMORY.rule()
    assert rule["message"] == MEMORY.message
    assert "isInteger" not in rule["rule"]  # spelling-dependent in the API server
    assert "quantity('64Mi')" in rule["rule"] and "quantity('16Ti')" in rule["rule"]


def test_a_range_stays_where_the_cel_whole_number_test_is_exact() -> None:
    with pytest.raises(ValueError, match="1Pi"):
        ByteRange("0", "2Pi")
