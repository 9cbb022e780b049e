"""Values from DuckDB, pyarrow or numpy as JSON can hold them: one form for preview and results."""

import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy of a value (nested dicts and lists are copied too).

    Floats stay numbers (NaN and infinities become None), dates and times are ISO 8601
    strings, durations str(timedelta), bytes are decoded (invalid UTF-8 as backslash
    escapes), numpy scalars become the Python value, anything else str().

    A decimal becomes a string in plain notation with every digit of its scale:
    DECIMAL(10,2) 1.5 is "1.50", DECIMAL(38,10) -1e-10 is "-0.0000000001". A JSON number
    would not keep it: most JSON parsers (JavaScript's JSON.parse, Python's json by
    default) read every number as a 64-bit float, which keeps ~15 significant digits,
    while a DECIMAL(38, s) column holds up to 38; orjson cannot write a Decimal at all.
    A string of the exact value is the usual JSON form of a decimal (money in most APIs,
    google.type.Decimal), which a client parses into its own decimal type; the dataset
    preview and every step's summary show the same string for the same stored value.
    A NaN or infinite decimal becomes None, as a float's does.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        # Format "f", not str(): str() writes small or large values in scientific notation.
        return format(value, "f") if value.is_finite() else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return str(value)
