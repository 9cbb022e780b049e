"""json_safe: the one JSON form of values in dataset previews and step summaries."""

import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import numpy as np
import orjson
import pytest

from services.processing.json_values import json_safe


def test_json_safe_converts_nested_values() -> None:
    value = {
        "nan": math.nan,
        "inf": math.inf,
        "dec": Decimal("1.5"),
        "when": datetime(2024, 1, 2, 3, 4, 5),
        "day": date(2024, 1, 2),
        "clock": time(3, 4, 5),
        "span": timedelta(days=1, seconds=5),
        "raw": b"ok\xff",
        "np": np.float64(2.5),
        "int": np.int64(3),
        "flag": np.bool_(True),
        "list": (1, None, math.nan),
        1: "key",
    }
    assert json_safe(value) == {
        "nan": None,
        "inf": None,
        "dec": "1.5",
        "when": "2024-01-02T03:04:05",
        "day": "2024-01-02",
        "clock": "03:04:05",
        "span": "1 day, 0:00:05",
        "raw": "ok\\xff",
        "np": 2.5,
        "int": 3,
        "flag": True,
        "list": [1, None, None],
        "1": "key",
    }


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("1.50"), "1.50"),  # the column's scale is kept
        (Decimal("-2.50"), "-2.50"),
        (Decimal("-1E-10"), "-0.0000000001"),  # plain notation, never scientific
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("12345678901234567890.1234567890"), "12345678901234567890.1234567890"),
        (Decimal("NaN"), None),
        (Decimal("-Infinity"), None),
    ],
)
def test_a_decimal_is_its_exact_value_as_a_string(value: Decimal, shown: str | None) -> None:
    assert json_safe(value) == shown
    if shown is not None:
        assert Decimal(shown) == value  # no digit lost


def test_what_json_safe_returns_serialises() -> None:
    value = json_safe({"dec": Decimal("0.1"), "day": date(2024, 1, 2), "x": [np.int32(1)]})
    assert orjson.loads(orjson.dumps(value)) == json.loads(json.dumps(value)) == value
