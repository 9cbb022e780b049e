"""Exact order statistics and quantiles out of core equal numpy's, whatever the values."""

import math
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from services.processing.processors.tables import aggregates
from services.processing.processors.tables.aggregates import exact_quantiles, order_statistics
from tests.unit.processors.conftest import StepFactory

RNG = np.random.default_rng(11)
CASES: dict[str, np.ndarray] = {
    "normal": RNG.normal(5.0, 2.0, 5000),
    "ties": np.round(RNG.normal(0.0, 1.0, 5000), 1),
    "constant": np.full(300, 7.25),
    "huge-integers": np.concatenate(
        [RNG.integers(-(2**62), 2**62, 2000), [2**63 - 1, -(2**63), 0, 0, 0]]
    ),
    "small-integers": RNG.integers(0, 3, 4000),
    "infinities": np.concatenate([RNG.normal(0, 1, 1000), [math.inf] * 7, [-math.inf] * 5]),
    "subnormal": np.array([5e-324, 1e-323, 1.5e-323, 5e-324, 0.0, 1e-323] * 50),
    "spread": np.concatenate([np.geomspace(1e-300, 1e300, 3000), -np.geomspace(1e-300, 1e3, 50)]),
}


def relation(values: np.ndarray) -> tuple[duckdb.DuckDBPyConnection, str]:
    con = duckdb.connect()
    con.register("t", pa.table({"x": values}))
    return con, "t"


def quiet(fraction: float, message: str) -> None:
    pass


@pytest.mark.parametrize("buckets", [4, 4096])
@pytest.mark.parametrize("name", list(CASES))
def test_order_statistics_equal_numpy(
    name: str, buckets: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregates, "BUCKETS", buckets)
    values = CASES[name]
    ordered = np.sort(values)
    n = len(values)
    ranks = sorted({0, 1, n // 4, n // 2, n // 2 + 1, 3 * n // 4, n - 2, n - 1})
    con, table = relation(values)
    found = order_statistics(
        con, table, "x", ranks, n, ordered[0].item(), ordered[-1].item(), fetch=8, report=quiet
    )
    assert found == {r: ordered[r].item() for r in ranks}


def test_after_the_last_round_duckdb_sorts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregates, "MAX_ROUNDS", 0)
    sorted_by_duckdb: list[Any] = []
    real = aggregates._sort

    def spy(*args: Any) -> Any:
        sorted_by_duckdb.append(args)
        return real(*args)

    monkeypatch.setattr(aggregates, "_sort", spy)
    values = CASES["normal"]
    ordered = np.sort(values)
    con, table = relation(values)
    ranks = [0, 2500, 4999]
    found = order_statistics(
        con, table, "x", ranks, len(values), ordered[0], ordered[-1], fetch=8, report=quiet
    )
    assert found == {r: ordered[r] for r in ranks} and sorted_by_duckdb


@pytest.mark.parametrize("name", ["normal", "ties", "constant", "small-integers"])
def test_exact_quantiles_equal_numpy_and_duckdb(
    name: str, make_step: StepFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregates, "fetch_limit", lambda step: 8)
    values = CASES[name]
    con, table = relation(values)
    levels = (0.25, 0.5, 0.75)
    got = exact_quantiles(con, table, "x", levels, make_step())
    assert got == pytest.approx(np.quantile(values, levels).tolist(), rel=1e-15, abs=1e-300)
    duck = con.execute("SELECT quantile_cont(x, [0.25, 0.5, 0.75]) FROM t").fetchone()
    assert duck is not None and got == pytest.approx(duck[0], rel=1e-15, abs=1e-300)
    con.execute("CREATE TABLE e AS SELECT x FROM t WHERE false")
    assert exact_quantiles(con, "e", "x", levels, make_step()) == [None, None, None]
