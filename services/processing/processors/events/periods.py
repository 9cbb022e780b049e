"""Period numbers (common.py) as Arrow date/timestamp arrays, and dense series from sparse counts.

Imported only by a running step (numpy).
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from services.processing.processors.columns import quote, value_expr
from services.processing.processors.events.common import PeriodUnit

EPOCH_MONDAY_DAYS = 4  # 1970-01-05 is day 4 of the epoch


def period_days(unit: PeriodUnit, index: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of each period's first day (day, week, month periods)."""
    if unit == "day":
        return index.astype(np.int64)
    if unit == "week":
        return EPOCH_MONDAY_DAYS + 7 * index.astype(np.int64)
    if unit == "month":
        months = np.datetime64("1970-01", "M") + (index.astype(np.int64) - 1970 * 12)
        return months.astype("datetime64[D]").astype(np.int64)
    raise ValueError(f"no day of a {unit} period")


def period_array(unit: PeriodUnit, index: np.ndarray) -> pa.Array:
    """The periods' labels: DATE (day, week, month) or TIMESTAMP (hour)."""
    if unit == "hour":
        micros = np.ascontiguousarray(index.astype(np.int64) * 3_600_000_000)
        return pa.Array.from_buffers(pa.timestamp("us"), len(micros), [None, pa.py_buffer(micros)])
    days = np.ascontiguousarray(period_days(unit, index).astype(np.int32))
    return pa.Array.from_buffers(pa.date32(), len(days), [None, pa.py_buffer(days)])


@dataclass(frozen=True)
class Dense:
    """Series laid end to end: series i holds rows offsets[i]:offsets[i+1], periods
    starts[i]... in order, counts 0 where the sparse input has none."""

    starts: np.ndarray
    offsets: np.ndarray
    series: np.ndarray  # the series (0-based, within the chunk) of each row
    periods: np.ndarray
    counts: np.ndarray


def densify(
    starts: np.ndarray, last: int, sid: np.ndarray, period: np.ndarray, count: np.ndarray
) -> Dense:
    """Series i spans starts[i]..last; (sid, period, count) are its non-zero counts."""
    lengths = (last - starts + 1).astype(np.int64)
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    series = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)
    periods = np.arange(offsets[-1], dtype=np.int64) - offsets[series] + starts[series]
    counts = np.zeros(offsets[-1], dtype=np.int64)
    counts[offsets[sid] + (period - starts[sid])] = count
    return Dense(starts, offsets, series, periods, counts)


def select_with_nulls(view: str, schema: pa.Schema) -> str:
    """SELECT of an Arrow table's columns where a float NaN is NULL and a uint8 (numpy's
    one-byte bool: Arrow's are bits) is a BOOLEAN."""
    columns = []
    for field in schema:
        name = quote(field.name)
        if pa.types.is_floating(field.type):
            name = f"{value_expr(field.name, 'DOUBLE')} AS {name}"
        elif field.type == pa.uint8():
            name = f"CAST({name} AS BOOLEAN) AS {name}"
        columns.append(name)
    return f"SELECT {', '.join(columns)} FROM {view}"
