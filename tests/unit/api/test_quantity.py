from __future__ import annotations

import pytest
from pydantic import BaseModel

from stratus_api.quantity import ByteQuantity, QuantityError, parse_quantity


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
        ("1.5", "whole number of bytes"),
        ("100m", "whole number of bytes"),
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
