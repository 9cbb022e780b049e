"""H3 cells of the events' positions: h3.latlng_to_cell once per distinct (lat, lon).

DuckDB finds the distinct valid positions (latitude in [-90, 90], longitude in [-180, 180])
and numbers them; they are read back a batch at a time, each batch mapped by the h3 library
(its integer API: the same cells as the string one) and appended to the temp table
`cells (lat, lon, cell)`, which the counting query joins on the position. So the library runs
once per distinct position, never per row, and Python holds one batch of positions at a time.
Imported only by a running step.
"""

import itertools

import duckdb
import h3.api.basic_int as h3_int
import numpy as np
import pyarrow as pa

from services.processing.processors.arrays import to_arrow
from services.processing.processors.base import StepInput
from services.processing.processors.duck import run_with_progress

BATCH = 65_536  # positions mapped between two progress reports (~40 ms)


def build_cells(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    positions: str,
    resolution: int,
    *,
    start: float,
    end: float,
) -> int:
    """Create the temp table `cells` for the (lat, lon) rows of the query `positions`;
    returns how many distinct valid positions it holds."""
    middle = start + (end - start) * 0.25
    run_with_progress(
        con,
        "CREATE TEMP TABLE coords AS SELECT row_number() OVER () - 1 AS i, lat, lon FROM"
        f" (SELECT DISTINCT lat, lon FROM ({positions})"
        " WHERE lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180)",
        step.report,
        "finding the distinct positions",
        start=start,
        end=middle,
    )
    con.execute("CREATE TEMP TABLE cells (lat DOUBLE, lon DOUBLE, cell UBIGINT)")
    row = con.execute("SELECT count(*) FROM coords").fetchone()
    total = int(row[0]) if row else 0
    for first in range(0, total, BATCH):
        # `i` rises with the table's row groups: their min/max skip all but this batch's.
        fetched = con.execute(
            "SELECT lat, lon FROM coords WHERE i >= ? AND i < ?", [first, first + BATCH]
        ).fetchnumpy()
        lat, lon = np.asarray(fetched["lat"]), np.asarray(fetched["lon"])
        cells = np.fromiter(
            map(h3_int.latlng_to_cell, lat.tolist(), lon.tolist(), itertools.repeat(resolution)),
            dtype=np.uint64,
            count=len(lat),
        )
        batch = pa.table({"lat": to_arrow(lat), "lon": to_arrow(lon), "cell": to_arrow(cells)})
        con.register("cells_batch", batch)
        try:
            con.execute("INSERT INTO cells SELECT * FROM cells_batch")
        finally:
            con.unregister("cells_batch")
        done = min(first + BATCH, total)
        step.report(middle + (end - middle) * done / total, "mapping positions to H3 cells")
    con.execute("DROP TABLE coords")
    return total
