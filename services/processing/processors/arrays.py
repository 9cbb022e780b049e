"""Primitive columns between Arrow and numpy, through their buffers.

pyarrow's own conversions (Array.to_numpy with nulls, pa.array and pa.table from numpy)
import pandas on first use: slow and large, in a worker process that never needs it.
"""

import numpy as np
import pyarrow as pa


def read_numbers(batches: pa.RecordBatchReader, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first column (BIGINT or DOUBLE) of `rows` rows: its values (anything at nulls) and
    where it holds a number (None: everywhere); a float NaN counts as null, as in pandas.

    Batches are copied into one array as they arrive, so the reader's own memory holds one
    batch, not the column.
    """
    kind = batches.schema.field(0).type
    dtype = np.dtype(np.float64 if pa.types.is_floating(kind) else np.int64)
    values = np.empty(rows, dtype=dtype)
    valid: np.ndarray | None = None
    at = 0
    for batch in batches:
        array = batch.column(0)
        if not len(array):
            continue  # an empty batch may have no data buffer
        end = at + len(array)
        if end > rows:
            raise RuntimeError(f"the column has more than the {rows} rows counted")
        bitmap, data = array.buffers()[:2]
        offset = array.offset
        values[at:end] = np.frombuffer(
            data, dtype=dtype, count=len(array), offset=offset * dtype.itemsize
        )
        if array.null_count:
            if valid is None:
                valid = np.ones(rows, dtype=np.bool_)
            packed = np.frombuffer(bitmap, np.uint8)
            bits = np.unpackbits(packed, count=offset + len(array), bitorder="little")
            valid[at:end] = bits[offset:].view(np.bool_)
        at = end
    if at != rows:
        raise RuntimeError(f"the column has {at} rows, not the {rows} counted")
    if dtype.kind == "f":
        numbers = ~np.isnan(values)
        valid = numbers if valid is None else valid & numbers
    if valid is not None and valid.all():
        valid = None
    return values, valid


def to_arrow(values: np.ndarray) -> pa.Array:
    """A 1-d numpy array of numbers, without nulls, as an Arrow array sharing its memory."""
    values = np.ascontiguousarray(values)
    buffers = [None, pa.py_buffer(values)]
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), buffers)
