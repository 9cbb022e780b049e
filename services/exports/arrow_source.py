"""The rows of an export's source file as Arrow record batches, never the whole file at once.

A dataset's typed copy is read as the dataset's columns: without its line-number column, and
under the dataset's own names where the copy's differ (two names differing only in case).
"""

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

PARQUET_MAGIC = b"PAR1"
# services/processing/datasets/common.py: LINE_COLUMN and NAMES_KEY of the typed copy (not
# imported: that module loads DuckDB, which a loader does not need).
LINE_COLUMN = "__line__"
NAMES_KEY = b"assay.columns"


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == PARQUET_MAGIC


def _columns(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """(the file's columns to read, the names they load as)."""
    stored = [name for name in schema.names if name != LINE_COLUMN]
    names = json.loads((schema.metadata or {}).get(NAMES_KEY, b"null"))
    if isinstance(names, list) and len(names) == len(stored):
        return stored, [str(n) for n in names]
    return stored, stored


def schema_and_rows(path: Path) -> tuple[pa.Schema, int | None]:
    """The columns as they load, and the row count when the format records it (Parquet)."""
    if is_parquet(path):
        metadata = pq.ParquetFile(path).metadata
        schema = metadata.schema.to_arrow_schema()
        read, names = _columns(schema)
        fields = [schema.field(r).with_name(n) for r, n in zip(read, names, strict=True)]
        return pa.schema(fields), metadata.num_rows
    with pa_csv.open_csv(path) as reader:
        return reader.schema, None


def record_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of at most `batch_rows` rows (Parquet is read row group by row group)."""
    if is_parquet(path):
        file = pq.ParquetFile(path)
        read, names = _columns(file.schema_arrow)
        for batch in file.iter_batches(batch_size=batch_rows, columns=read):
            yield batch.rename_columns(names)
        return
    options = pa_csv.ReadOptions(block_size=16 * 1024 * 1024)
    with pa_csv.open_csv(path, read_options=options) as reader:
        for batch in reader:
            for start in range(0, batch.num_rows, batch_rows):
                yield batch.slice(start, batch_rows)
