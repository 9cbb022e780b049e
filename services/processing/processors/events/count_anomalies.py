"""count_anomalies: events counted per period and series, recent periods tested against a baseline.

Series. Without `group_column` and `h3` there is one series (every event). With
`group_column`, one series per value of the group column (null is a value: the events
without a group). With `h3`, one series per H3 cell at `resolution` of (lat_column,
lon_column) (h3.latlng_to_cell), plus the all-cells series (`h3_cell` null: every event,
those without a valid position included); per group when both are given. Positions with a
null or NaN coordinate, a latitude outside [-90, 90] or a longitude outside [-180, 180] belong
to no cell (`events_without_cell` in the summary).

Periods (common.py): day, ISO week (Monday to Sunday, labelled by its Monday) or month, of the
timestamp column (UTC for a time-zone-aware one); rows with a null timestamp are not events.
The recent periods are the dataset's last `recent_periods` periods (fewer when the dataset
spans fewer), the same for every series. A series runs from its first event to the dataset's
last period (from the first recent period at the latest), periods without events counting 0:
zeros before a series' first event would bias the baseline of a group or cell that starts
late, zeros after its last one are real quiet periods.

Baseline: the series' periods before the recent ones (none: no expected value, nothing
flagged). mean = their mean; var = their sample variance (ddof 1, from two periods on). When
var > mean the model is the negative binomial fitted by the method of moments, r = mean^2 /
(var - mean), p = r / (r + mean) (scipy.stats.nbinom(r, p): mean `mean`, variance `var`),
otherwise Poisson(mean). For each recent period: `expected` = mean, `p_value` = P(X >= count)
(poisson.sf(count - 1, mean) or nbinom.sf(count - 1, r, p)), `z_score` = (count - mean) /
sqrt(model variance) (the mean for Poisson, var for NB; null when it is 0), and `flagged` =
p_value < p_threshold.

Trend: scipy.stats.linregress of the recent counts on 0, 1, ..., k-1 (slope and two-sided
p-value) when the recent periods hold at least `min_events_for_trend` events and k >= 3;
significant when p < p_threshold. It is in the summary (and derivable from the CSV's counts).

Artifacts:
- count_series.parquet: every series' keys (the group column's name, `h3_cell`), `period`, `count`,
  one row per period of its span, ordered by series then period.
- count_anomalies.csv: one row per recent period of every series: keys, `period`, `count`,
  `expected`, `p_value`, `z_score`, `flagged`. Series are ordered by group (nulls last), the
  all-cells series first, then cells.
- count_plot_NNN.png: for up to `max_plots` significant series (a flagged period or a
  significant trend), most significant first: the history, the baseline mean and its 95% band
  (the model's 2.5% and 97.5% quantiles), the recent periods, flagged periods and the trend.

Counting is DuckDB's over the Parquet copy (the columns needed, grouped in one pass, H3 cells
joined on distinct positions: h3cells.py); only per-series figures and the recent counts come
to numpy, a chunk of series at a time.
"""

from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import (
    ArtifactFile,
    StepInput,
    StepOutput,
    artifact_name,
)
from services.processing.processors.columns import quote, value_expr
from services.processing.processors.duck import (
    connect,
    literal,
    parquet_source,
    parquet_types,
    run_with_progress,
)
from services.processing.processors.events.common import (
    MODEL_NAMES,
    check_group,
    check_numeric,
    check_timestamp,
    ends_early,
    group_expr,
    period_index_sql,
    period_label,
    period_label_sql,
    timestamp_expr,
)
from services.processing.processors.output import (
    CSV_TYPE,
    PARQUET_TYPE,
    PNG_TYPE,
    TEXT_TYPES,
    CsvFormulaEscape,
    copy_to_file,
    escape_formula,
    escaped_cells,
    force_quote,
)

SERIES_ARTIFACT = "count_series.parquet"
CSV_ARTIFACT = "count_anomalies.csv"
PLOT_ARTIFACT = "count_plot_{:03d}.png"
ARTIFACTS = [SERIES_ARTIFACT, CSV_ARTIFACT, PLOT_ARTIFACT.replace("{:03d}", "NNN")]
CELL_COLUMN = "h3_cell"
OUTPUT_COLUMNS = {CELL_COLUMN, "period", "count", "expected", "p_value", "z_score", "flagged"}
MAX_DETAIL = 50  # series described in the summary, most significant first
# Memory per row of count_series while a chunk of series is tested and written: the dense
# series and their temporaries, the keys and labels in Arrow, the Parquet writer's pages
# (measured: a chunk of 1.4M rows raised the peak RSS by ~200 MiB). A chunk holds a quarter of
# the step's numpy budget.
BYTES_PER_ROW = 256


class H3Params(BaseModel):
    """Count per H3 cell of the events' positions."""

    model_config = ConfigDict(extra="forbid")
    lat_column: str = Field(description="Latitude in degrees (numeric column).")
    lon_column: str = Field(description="Longitude in degrees (numeric column).")
    resolution: int = Field(ge=0, le=15, description="H3 resolution, 0 (coarsest) to 15.")


class CountAnomaliesParams(BaseModel):
    """Flag recent periods whose event counts exceed their series' baseline."""

    model_config = ConfigDict(extra="forbid", title="count_anomalies")
    timestamp_column: str = Field(description="Timestamp or date of each event (row).")
    period: Literal["day", "week", "month"] = Field(
        default="week", description="Counting period; weeks run Monday to Sunday."
    )
    group_column: str | None = Field(default=None, description="One series per value.")
    h3: H3Params | None = Field(
        default=None, description="One series per H3 cell (and the all-cells series)."
    )
    recent_periods: int = Field(
        default=4, ge=1, le=1000, description="The last periods tested against the baseline."
    )
    p_threshold: float = Field(
        default=0.05, gt=0, lt=1, description="Flag when P(X >= count) < p_threshold."
    )
    min_events_for_trend: int = Field(
        default=4, ge=0, description="Events the recent periods need for a trend test."
    )
    max_plots: int = Field(default=20, ge=0, le=200, description="PNG plots at most.")
    include_partial_period: bool = Field(
        default=False,
        description="Keep the last period when the data end before its last day (by default"
        " it is left out: a partial period would read as a drop).",
    )
    csv_formula_escape: CsvFormulaEscape = False


def check_columns(params: CountAnomaliesParams, columns: list[ColumnInfo]) -> None:
    """A timestamp/date column, a scalar group column, numeric coordinates."""
    check_timestamp(params.timestamp_column, columns)
    if params.group_column is not None:
        check_group(params.group_column, columns, reserved=OUTPUT_COLUMNS)
    if params.h3 is not None:
        check_numeric(params.h3.lat_column, columns, field="h3.lat_column")
        check_numeric(params.h3.lon_column, columns, field="h3.lon_column")


def run(step: StepInput, params: CountAnomaliesParams) -> StepOutput:
    """Count, test the recent periods, write the series, the tests and the plots."""
    check_columns(params, step.columns)
    step.report(0.0, "reading the events")
    with connect(step) as con:
        counter = Counter(con, step, params, parquet_types(con, step.parquet_path))
        counter.count(parquet_source(step.parquet_path), start=0.0, end=0.55)
        analysis = Analysis(counter)
        series_file = analysis.run(start=0.55, end=0.8)
        figures = analysis.figures()
        csv_file = analysis.write_csv(start=0.8, end=0.88)
        detail, plots = analysis.describe(start=0.88, end=1.0)
    label = counter.label
    summary: dict[str, Any] = {
        "period": params.period,
        "events": counter.events,
        "null_timestamps": next(
            c.null_count for c in step.columns if c.name == params.timestamp_column
        ),
        "first_period": label(counter.first) if counter.events else None,
        "last_period": label(counter.last) if counter.events else None,
        "periods": counter.last - counter.first + 1,
        "recent_periods": [label(p) for p in range(counter.recent, counter.last + 1)],
        "partial_period_left_out": None
        if counter.partial is None
        else {"period": label(counter.partial[0]), "events": counter.partial[1]},
        **figures,
        "series_detail": detail,
        "series_detail_truncated": figures["significant_series"] > len(detail),
        "plots": [a.name for a in plots],
    }
    if params.h3 is not None:
        summary["events_without_cell"] = counter.without_cell
    return StepOutput(summary=json_safe(summary), artifacts=[series_file, csv_file, *plots])


class Counter:
    """Counts per series and period in temp tables of the step's connection:
    `series` (sid, keys, first period, events, baseline sums) and `counts` (sid, p, n > 0)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        step: StepInput,
        params: CountAnomaliesParams,
        types: dict[str, str],
    ) -> None:
        self.con, self.step, self.params, self.types = con, step, params, types
        self.keys: list[str] = []  # key columns of `series`: g, then whole and cell
        if params.group_column is not None:
            self.keys.append("g")
        if params.h3 is not None:
            self.keys += ["whole", "cell"]
        # Periods: the first and last counted, the first recent one; without events the
        # ranges are empty.
        self.first, self.last, self.recent = 0, -1, 0
        self.series = self.events = self.without_cell = 0
        self.partial: tuple[int, int] | None = None  # a last period left out, its events

    def label(self, index: int) -> Any:
        return period_label(self.params.period, index)

    def count(self, src: str, *, start: float, end: float) -> None:
        """Fill `series` and `counts`."""
        con, params, types = self.con, self.params, self.types
        ts = timestamp_expr(params.timestamp_column, types[params.timestamp_column])
        select = [f"{period_index_sql(params.period, ts)} AS p"]
        group = []
        if params.group_column is not None:
            select.append(f"{group_expr(params.group_column, types[params.group_column])} AS g")
            group = ["g"]
        h3 = params.h3
        if h3 is not None:
            for axis, name in (("lat", h3.lat_column), ("lon", h3.lon_column)):
                select.append(f"CAST({value_expr(name, types[name])} AS DOUBLE) AS {axis}")
        events = f"SELECT {', '.join(select)} FROM {src} WHERE {ts} IS NOT NULL"
        if h3 is None:
            keys = ", ".join([*group, "p"])
            grouped = f"SELECT {keys}, count(*) AS n FROM ({events}) GROUP BY {keys}"
            middle = start
        else:
            from services.processing.processors.events.h3cells import build_cells

            middle = start + (end - start) * 0.6
            positions = f"SELECT lat, lon FROM ({events})"
            build_cells(con, self.step, positions, h3.resolution, start=start, end=middle)
            sets = f"({', '.join([*group, 'cell', 'p'])}), ({', '.join([*group, 'p'])})"
            grouped = (
                f"SELECT {_lead(group)}grouping(cell) AS whole, cell, p, count(*) AS n"
                f" FROM (SELECT e.*, c.cell FROM ({events}) AS e LEFT JOIN cells AS c"
                " ON c.lat = e.lat AND c.lon = e.lon)"
                f" GROUP BY GROUPING SETS ({sets}) HAVING cell IS NOT NULL OR grouping(cell) = 1"
            )
        counted = start + (end - start) * 0.9
        run_with_progress(
            con,
            f"CREATE TEMP TABLE ev AS {grouped}",
            self.step.report,
            "counting events per period",
            start=middle,
            end=counted,
        )
        if h3 is not None:
            con.execute("DROP TABLE cells")
        self._periods(src, ts)
        self._series(start=counted, end=end)

    def _periods(self, src: str, ts: str) -> None:
        """The periods counted (a partial last period left out), the recent ones, the totals."""
        con, params = self.con, self.params
        h3 = params.h3 is not None
        every = "whole = 1" if h3 else "TRUE"  # the all-cells rows hold each event once
        row = con.execute(f"SELECT min(p), max(p) FROM ev WHERE {every}").fetchone()
        if row is None or row[0] is None:
            return
        first, last = int(row[0]), int(row[1])
        partial = last > first and not params.include_partial_period
        if partial and ends_early(con, src, ts, params.period, last):
            n = con.execute(f"SELECT sum(n) FROM ev WHERE {every} AND p = {last}").fetchone()
            self.partial = (last, int(n[0]) if n else 0)
            con.execute(f"DELETE FROM ev WHERE p = {last}")
            last -= 1
        self.first, self.last = first, last
        self.recent = max(last - params.recent_periods + 1, first)
        in_cells = "whole = 0" if h3 else "FALSE"
        totals = con.execute(
            f"SELECT sum(n) FILTER (WHERE {every}), sum(n) FILTER (WHERE {in_cells}) FROM ev"
        ).fetchone()
        assert totals is not None
        self.events = int(totals[0] or 0)
        if h3:
            self.without_cell = self.events - int(totals[1] or 0)

    def _series(self, *, start: float, end: float) -> None:
        """`series` and `counts` from `ev`, series numbered in output order."""
        con, keys, r0 = self.con, self.keys, literal(self.recent)
        order = {"g": "g ASC NULLS LAST", "whole": "whole DESC", "cell": "cell ASC"}
        window = f"ORDER BY {', '.join(order[k] for k in keys)}" if keys else ""
        grouped = f"GROUP BY {', '.join(keys)}" if keys else ""
        # Both scan every (series, period) count: run with progress and cancel.
        run_with_progress(
            con,
            f"CREATE TEMP TABLE series AS SELECT row_number() OVER ({window}) - 1 AS sid,"
            f" {_lead(keys)}min(p) AS first, sum(n) AS events,"
            f" greatest({r0} - min(p), 0) AS nb,"
            f" coalesce(sum(n) FILTER (WHERE p < {r0}), 0) AS s1,"
            f" coalesce(sum(CAST(n AS HUGEINT) * n) FILTER (WHERE p < {r0}), 0) AS s2"
            f" FROM ev {grouped} HAVING count(*) > 0",
            self.step.report,
            "numbering the series",
            start=start,
            end=start + (end - start) / 2,
        )
        match = " AND ".join(f"e.{k} IS NOT DISTINCT FROM s.{k}" for k in keys) or "TRUE"
        run_with_progress(
            con,
            "CREATE TEMP TABLE counts AS SELECT s.sid, e.p, e.n FROM ev AS e"
            f" JOIN series AS s ON {match}",
            self.step.report,
            "numbering the series",
            start=start + (end - start) / 2,
            end=end,
        )
        con.execute("DROP TABLE ev")
        row = con.execute("SELECT count(*) FROM series").fetchone()
        self.series = int(row[0]) if row else 0


class Analysis:
    """The tests of the recent periods (temp tables `recent`, a row per series and recent
    period, and `verdicts`, a row per series) and the artifacts, from the Counter's tables."""

    def __init__(self, counter: Counter) -> None:
        self.counter, self.params = counter, counter.params
        self.con, self.step = counter.con, counter.step
        self.k = counter.last - counter.recent + 1

    def run(self, *, start: float, end: float) -> ArtifactFile:
        """Test the series a chunk at a time, writing count_series.parquet on the way."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        from services.processing.processors.arrays import to_arrow
        from services.processing.processors.events import anomaly_stats as st
        from services.processing.processors.events.periods import densify, period_array

        con, counter, params, step, k = self.con, self.counter, self.params, self.step, self.k
        con.execute(
            "CREATE TEMP TABLE recent (sid BIGINT, j INTEGER, count BIGINT, expected DOUBLE,"
            " p_value DOUBLE, z_score DOUBLE, flagged BOOLEAN)"
        )
        con.execute(
            "CREATE TEMP TABLE verdicts (sid BIGINT, model TINYINT, mean DOUBLE, size DOUBLE,"
            " prob DOUBLE, flags BIGINT, min_p DOUBLE, slope DOUBLE, trend_p DOUBLE)"
        )
        name = artifact_name(SERIES_ARTIFACT, step.artifact_suffix)
        path = step.output_dir / name
        r0, last = counter.recent, counter.last
        got = con.execute(f"SELECT least(first, {r0}) AS s FROM series ORDER BY sid").fetchnumpy()
        starts = np.asarray(got["s"], dtype=np.int64)
        budget = max(1, step.limits.batch_memory_bytes // 4 // BYTES_PER_ROW)
        chunks = _chunks(last - starts + 1, budget)
        keys, _ = self._keys(escape=False)
        writer: pq.ParquetWriter | None = None
        try:
            for n, (a, b) in enumerate(chunks):
                step.report(start + (end - start) * n / len(chunks), "testing the series")
                got = con.execute(
                    "SELECT nb, CAST(s1 AS DOUBLE) AS s1,"
                    " CAST(CAST(nb AS HUGEINT) * s2 - s1 * s1 AS DOUBLE) AS centred,"
                    " nb >= 2 AND CAST(nb AS HUGEINT) * s2 - s1 * s1 > s1 * (nb - 1) AS over"
                    " FROM series WHERE sid >= ? AND sid < ? ORDER BY sid",
                    [a, b],
                ).fetchnumpy()
                base = st.baselines(
                    np.asarray(got["nb"], dtype=np.float64),
                    np.asarray(got["s1"]),
                    np.asarray(got["centred"]),
                    np.asarray(got["over"], dtype=bool),
                )
                sparse = con.execute(
                    "SELECT sid, p, n FROM counts WHERE sid >= ? AND sid < ?", [a, b]
                ).fetchnumpy()
                dense = densify(
                    starts[a:b],
                    last,
                    np.asarray(sparse["sid"]) - a,
                    np.asarray(sparse["p"]),
                    np.asarray(sparse["n"]),
                )
                counts = dense.counts[dense.offsets[1:, None] - k + np.arange(k)]
                p_value = st.upper_tail(counts, base)
                z = st.z_scores(counts, base)
                flagged = p_value < params.p_threshold  # NaN compares False
                slope, trend_p = st.trends(counts, params.min_events_for_trend)
                sids = np.arange(a, b, dtype=np.int64)
                recent = {
                    "sid": to_arrow(np.repeat(sids, k)),
                    "j": to_arrow(np.tile(np.arange(k, dtype=np.int32), b - a)),
                    "count": to_arrow(counts.ravel()),
                    "expected": to_arrow(np.repeat(base.mean, k)),
                    "p_value": to_arrow(p_value.ravel()),
                    "z_score": to_arrow(z.ravel()),
                    "flagged": to_arrow(flagged.ravel().astype(np.uint8)),
                }
                verdicts = {
                    "sid": to_arrow(sids),
                    "model": to_arrow(base.model),
                    "mean": to_arrow(base.mean),
                    "size": to_arrow(base.size),
                    "prob": to_arrow(base.prob),
                    "flags": to_arrow(flagged.sum(axis=1).astype(np.int64)),
                    "min_p": to_arrow(np.where(flagged, p_value, np.inf).min(axis=1)),
                    "slope": to_arrow(slope),
                    "trend_p": to_arrow(trend_p),
                }
                _insert(con, "recent", pa.table(recent))
                _insert(con, "verdicts", pa.table(verdicts))
                labels = _keys_table(con, keys, f"sid >= {a} AND sid < {b}")
                rows = to_arrow(dense.series.astype(np.int32))
                columns = {
                    column: labels.column(column).combine_chunks().take(rows)
                    for column in labels.column_names
                }
                columns["period"] = period_array(params.period, dense.periods)
                columns["count"] = to_arrow(dense.counts)
                table = pa.table(columns)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(table)
            if writer is None:  # no series: the columns without rows
                empty = _keys_table(con, keys, "false")
                columns = {column: empty.column(column) for column in empty.column_names}
                columns["period"] = period_array(params.period, np.zeros(0, dtype=np.int64))
                columns["count"] = to_arrow(np.zeros(0, dtype=np.int64))
                writer = pq.ParquetWriter(path, pa.table(columns).schema, compression="zstd")
                writer.write_table(pa.table(columns))
        finally:
            if writer is not None:
                writer.close()
        step.report(end, "testing the series")
        return ArtifactFile(name, path, PARQUET_TYPE)

    def figures(self) -> dict[str, Any]:
        """The summary's counts of series, anomalies, trends and models."""
        threshold = literal(self.params.p_threshold)
        trend = f"trend_p < {threshold}"
        row = self.con.execute(
            "SELECT count(*), coalesce(sum(flags), 0), count(*) FILTER (WHERE flags > 0),"
            f" count(*) FILTER (WHERE {trend}), count(*) FILTER (WHERE {trend} AND slope > 0),"
            f" count(*) FILTER (WHERE {trend} AND slope < 0),"
            f" count(*) FILTER (WHERE flags > 0 OR {trend}),"
            " count(*) FILTER (WHERE model = 1), count(*) FILTER (WHERE model = 2),"
            " count(*) FILTER (WHERE model = 0) FROM verdicts"
        ).fetchone()
        assert row is not None
        names = ["series", "anomalies", "anomalous_series", "significant_trends"]
        names += ["increasing_trends", "decreasing_trends", "significant_series"]
        figures: dict[str, Any] = dict(zip(names, (int(v) for v in row[:7]), strict=True))
        figures["models"] = {
            "poisson": int(row[7]),
            "negative_binomial": int(row[8]),
            "no_baseline": int(row[9]),
        }
        return figures

    def _keys(self, *, escape: bool) -> tuple[list[str], list[str]]:
        """SELECT expressions of the series keys over `series AS s`, and the names of the text
        columns among them (CSV quoting)."""
        params, exprs, text = self.params, [], []
        if params.group_column is not None:
            name = params.group_column
            duck_type = self.counter.types[name]
            if escape:
                exprs.append(f"{escaped_cells('s.g', duck_type)} AS {quote(escape_formula(name))}")
                if duck_type in TEXT_TYPES:
                    text.append(escape_formula(name))
            else:
                exprs.append(f"s.g AS {quote(name)}")
        if params.h3 is not None:
            exprs.append(f"CASE WHEN s.whole = 0 THEN lower(hex(s.cell)) END AS {CELL_COLUMN}")
        return exprs, text

    def write_csv(self, *, start: float, end: float) -> ArtifactFile:
        """count_anomalies.csv from `recent`."""
        step, unit = self.step, self.params.period
        escape = self.params.csv_formula_escape
        keys, text = self._keys(escape=escape)
        name = artifact_name(CSV_ARTIFACT, step.artifact_suffix)
        path = step.output_dir / name
        query = (
            f"SELECT {_lead(keys)}{period_label_sql(unit, f'r.j + {self.counter.recent}')}"
            " AS period, r.count, r.expected, r.p_value, r.z_score, r.flagged"
            " FROM recent AS r JOIN series AS s ON s.sid = r.sid ORDER BY r.sid, r.j"
        )
        options = "FORMAT csv, HEADER true" + (force_quote(text) if escape else "")
        sha = copy_to_file(
            self.con, query, path, options, step, f"writing {name}", start=start, end=end
        )
        return ArtifactFile(name, path, CSV_TYPE, sha)

    def describe(
        self, *, start: float, end: float
    ) -> tuple[list[dict[str, Any]], list[ArtifactFile]]:
        """The most significant series for the summary, and their plots."""
        con, params, counter = self.con, self.params, self.counter
        threshold = literal(params.p_threshold)
        keys, _ = self._keys(escape=False)
        top = con.execute(
            f"SELECT v.sid, {_lead(keys)}s.events, v.model, v.mean, v.size, v.prob, v.flags,"
            " v.slope, v.trend_p FROM verdicts AS v JOIN series AS s ON s.sid = v.sid"
            f" WHERE v.flags > 0 OR v.trend_p < {threshold}"
            f" ORDER BY least(v.min_p, CASE WHEN v.trend_p < {threshold} THEN v.trend_p END),"
            f" v.flags DESC, v.sid LIMIT {max(MAX_DETAIL, params.max_plots)}"
        ).fetchall()
        if not top:
            return [], []
        sids = [int(row[0]) for row in top]
        flagged: dict[int, list[dict[str, Any]]] = {sid: [] for sid in sids}
        marks: dict[int, set[int]] = {sid: set() for sid in sids}  # flagged period numbers
        for sid, j, count, p_value, z in con.execute(
            "SELECT sid, j, count, p_value, z_score FROM recent WHERE flagged"
            f" AND sid IN ({', '.join(map(str, sids))}) ORDER BY sid, j"
        ).fetchall():
            marks[sid].add(counter.recent + j)
            flagged[sid].append(
                {
                    "period": counter.label(counter.recent + j),
                    "count": count,
                    "p_value": p_value,
                    "z_score": z,
                }
            )
        names = self._key_names()
        plotted = [Ranked(row, len(names)) for row in top[: params.max_plots]]
        plots = self._plots(plotted, names, marks, start=start, end=end)
        plot_of = {r.sid: plot.name for r, plot in zip(plotted, plots, strict=True)}
        detail: list[dict[str, Any]] = []
        for row in top[:MAX_DETAIL]:
            r = Ranked(row, len(names))
            entry = dict(zip(names, r.keys, strict=True))
            entry |= {"events": r.events, "model": MODEL_NAMES[r.model], "expected": r.mean}
            entry["flagged_periods"] = flagged[r.sid]
            significant = r.significant_trend(params.p_threshold)
            entry["trend"] = {"slope": r.slope, "p_value": r.trend_p} if significant else None
            entry["plot"] = plot_of.get(r.sid)
            detail.append(entry)
        return detail, plots

    def _key_names(self) -> list[str]:
        names = [self.params.group_column] if self.params.group_column is not None else []
        return names + ([CELL_COLUMN] if self.params.h3 is not None else [])

    def _plots(
        self,
        ranked: list["Ranked"],
        names: list[str],
        marks: dict[int, set[int]],
        *,
        start: float,
        end: float,
    ) -> list[ArtifactFile]:
        """One PNG per series of `ranked`, in its order."""
        if not ranked:
            return []
        import numpy as np

        from services.processing.processors.events import anomaly_stats as st
        from services.processing.processors.events import plots as drawing

        con, counter, step = self.con, self.counter, self.step
        listed = ", ".join(str(r.sid) for r in ranked)
        history: dict[int, dict[int, int]] = {r.sid: {} for r in ranked}
        for sid, p, n in con.execute(
            f"SELECT sid, p, n FROM counts WHERE sid IN ({listed})"
        ).fetchall():
            history[sid][p] = n
        first_of = dict(
            con.execute(f"SELECT sid, first FROM series WHERE sid IN ({listed})").fetchall()
        )
        base = st.Baselines(
            np.array([r.model for r in ranked], dtype=np.int8),
            np.array([np.nan if r.mean is None else r.mean for r in ranked]),
            np.full(len(ranked), np.nan),
            np.array([np.nan if r.size is None else r.size for r in ranked]),
            np.array([np.nan if r.prob is None else r.prob for r in ranked]),
        )
        lower, upper = st.band(base)
        artifacts = []
        for i, r in enumerate(ranked):
            span = range(min(int(first_of[r.sid]), counter.recent), counter.last + 1)
            counts = np.array([history[r.sid].get(p, 0) for p in span], dtype=np.int64)
            recent_start = counter.recent - span.start
            trend = None
            if r.significant_trend(self.params.p_threshold):
                recent = counts[recent_start:]
                trend = (r.slope, float(recent.mean() - r.slope * (len(recent) - 1) / 2))
            title = ", ".join(
                f"{name} = {'all cells' if name == CELL_COLUMN and value is None else value}"
                for name, value in zip(names, r.keys, strict=True)
            )
            plot = drawing.SeriesPlot(
                title=title or "all events",
                periods=[counter.label(p) for p in span],
                counts=counts,
                recent_start=recent_start,
                mean=float(base.mean[i]),
                lower=float(lower[i]),
                upper=float(upper[i]),
                flagged=np.array([p in marks[r.sid] for p in span], dtype=bool),
                trend=trend,
            )
            name = artifact_name(PLOT_ARTIFACT.format(i + 1), step.artifact_suffix)
            drawing.draw(plot, step.output_dir / name)
            artifacts.append(ArtifactFile(name, step.output_dir / name, PNG_TYPE))
            step.report(start + (end - start) * (i + 1) / len(ranked), "drawing plots")
        return artifacts


class Ranked:
    """A row of describe()'s query: sid, keys, events, model, mean, size, prob, flags, slope,
    trend_p."""

    def __init__(self, row: tuple[Any, ...], width: int) -> None:
        self.sid = int(row[0])
        self.keys = list(row[1 : 1 + width])
        rest = row[1 + width :]
        self.events, self.model, self.mean, self.size, self.prob = rest[:5]
        self.flags, self.slope, self.trend_p = rest[5:]

    def significant_trend(self, threshold: float) -> bool:
        return self.trend_p is not None and self.slope is not None and self.trend_p < threshold


def _chunks(lengths: Any, budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges of series whose lengths add up to at most `budget` (or one series)."""
    import numpy as np

    ends = np.cumsum(lengths)
    chunks, first, done = [], 0, 0
    while first < len(lengths):
        last = max(first + 1, int(np.searchsorted(ends, done + budget, side="right")))
        chunks.append((first, last))
        first, done = last, int(ends[last - 1])
    return chunks


def _keys_table(con: duckdb.DuckDBPyConnection, keys: list[str], where: str) -> Any:
    """The keys of the series matching `where`, in order, as an Arrow table."""
    import pyarrow as pa

    if not keys:
        return pa.table({})
    sql = f"SELECT {', '.join(keys)} FROM series AS s WHERE {where} ORDER BY sid"
    return con.sql(sql).to_arrow_table()


def _lead(items: list[str]) -> str:
    """Items to put before more of a SELECT list: "a, b, " (or "")."""
    return "".join(f"{item}, " for item in items)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: Any) -> None:
    """Append an Arrow table to a temp table, float NaN as NULL."""
    from services.processing.processors.events.periods import select_with_nulls

    con.register(f"{table}_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} {select_with_nulls(f'{table}_rows', rows.schema)}")
    finally:
        con.unregister(f"{table}_rows")
