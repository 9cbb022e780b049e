"""normalize equals pandas (drop_duplicates, fillna) followed by sklearn's scalers."""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from schemas.domain.records import ColumnInfo, DatasetFormat
from services.processing.processors.base import JobCancelled
from services.processing.processors.numeric import ProfileCache
from services.processing.processors.tables import metrics, normalize
from tests.unit.processors.conftest import CancelOnCall, StepFactory

NUMERIC = ["normal", "ties", "constant", "mostly_zero", "count", "big_int"]
SCALERS = {"minmax": MinMaxScaler, "zscore": StandardScaler, "robust": RobustScaler}


def run(make_step: StepFactory, params: dict[str, Any], **step: Any) -> tuple[pd.DataFrame, Any]:
    """Run normalize with Parquet output; the result as a DataFrame and the StepOutput."""
    params = {"output_format": "parquet", **params}
    result = normalize.run(make_step(**step), normalize.NormalizeParams.model_validate(params))
    return pd.read_parquet(result.artifacts[0].path), result


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for name in want.columns:
        g, w = got[name], want[name].reset_index(drop=True)
        assert (g.isna() == w.isna()).all(), name
        if name in NUMERIC:
            assert g.dropna().to_numpy(dtype=float) == pytest.approx(
                w.dropna().to_numpy(dtype=float), rel=1e-9, abs=1e-12
            ), name
        else:
            assert g.dropna().tolist() == w.dropna().tolist(), name


@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_dedupe_fill_scale_equals_pandas_and_sklearn(
    make_step: StepFactory,
    dataset: tuple[Path, list[ColumnInfo]],
    method: str,
    strategy: str,
    data_size: str,
) -> None:
    df = pd.read_parquet(dataset[0])
    want = df.drop_duplicates(keep="first").copy()
    fills = {}
    for name in NUMERIC:
        s = want[name].astype(float)
        fills[name] = s.mean() if strategy == "mean" else s.median()
        want[name] = s.fillna(fills[name])
    scaler = SCALERS[method]().fit(want[NUMERIC])
    want[NUMERIC] = scaler.transform(want[NUMERIC])

    got, result = run(
        make_step,
        {
            "drop_duplicates": True,
            "fill_nulls": {"strategy": strategy},
            "scale": {"method": method},
        },
    )
    assert_frames_equal(got, want)
    summary = result.summary
    assert summary["rows_in"] == len(df) and summary["rows_out"] == len(want)
    assert summary["rows_dropped"] == int(df.duplicated().sum()) > 0
    assert list(summary["filled"]) == NUMERIC and list(summary["scaled"]) == NUMERIC
    nulls = df.drop_duplicates()[NUMERIC].isna().sum()
    for name in NUMERIC:
        assert summary["filled"][name]["count"] == nulls[name]
        assert summary["filled"][name]["value"] == pytest.approx(fills[name], rel=1e-9)
        assert got[name].dtype == np.float64  # mean/median-filled and scaled: DOUBLE
    scaled = summary["scaled"]
    for i, name in enumerate(NUMERIC):
        if method == "minmax":
            assert scaled[name]["min"] == pytest.approx(scaler.data_min_[i], rel=1e-12)
            assert scaled[name]["max"] == pytest.approx(scaler.data_max_[i], rel=1e-12)
        elif method == "zscore":
            assert scaled[name]["mean"] == pytest.approx(scaler.mean_[i], rel=1e-9)
            if name != "constant":
                assert scaled[name]["std"] == pytest.approx(scaler.scale_[i], rel=1e-9)
        else:
            assert scaled[name]["median"] == pytest.approx(scaler.center_[i], rel=1e-9)
            assert scaled[name]["scale"] == pytest.approx(scaler.scale_[i], rel=1e-9)
    assert (got["constant"] == 0.0).all()


@pytest.mark.parametrize("warm", [False, True], ids=["alone", "after-metrics"])
@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_fill_scale_from_column_profiles_equals_sklearn(
    make_step: StepFactory,
    dataset: tuple[Path, list[ColumnInfo]],
    method: str,
    strategy: str,
    warm: bool,
    data_size: str,
) -> None:
    """Without dedupe the statistics may come from profiles (a metrics step's, in a job)."""
    df = pd.read_parquet(dataset[0])
    want = df.copy()
    for name in NUMERIC:
        s = want[name].astype(float)
        want[name] = s.fillna(s.mean() if strategy == "mean" else s.median())
    scaler = SCALERS[method]().fit(want[NUMERIC])
    want[NUMERIC] = scaler.transform(want[NUMERIC])
    profiles = ProfileCache()
    if warm:
        metrics.run(make_step(profiles=profiles), metrics.MetricsParams())
        assert all(profiles.get(name) is not None for name in NUMERIC)
    params = {"fill_nulls": {"strategy": strategy}, "scale": {"method": method}}
    got, result = run(make_step, params, profiles=profiles)
    assert_frames_equal(got, want)
    scaled = result.summary["scaled"]
    if method == "minmax":
        for i, name in enumerate(NUMERIC):
            assert scaled[name]["min"] == pytest.approx(scaler.data_min_[i], rel=1e-12)
            assert scaled[name]["max"] == pytest.approx(scaler.data_max_[i], rel=1e-12)


@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
def test_scale_without_fill_ignores_nulls_and_nan(
    make_step: StepFactory, dataset: tuple[Path, list[ColumnInfo]], method: str
) -> None:
    df = pd.read_parquet(dataset[0])
    want = df.copy()
    columns = ["normal", "count"]  # nulls, NaN (normal) and an integer column
    want[columns] = SCALERS[method]().fit_transform(df[columns].astype(float))
    got, result = run(make_step, {"scale": {"method": method, "columns": columns}})
    assert_frames_equal(got, want)
    assert list(result.summary["scaled"]) == columns


def test_mode_fill_keeps_types_and_breaks_ties_by_smallest(
    make_step: StepFactory, dataset: tuple[Path, list[ColumnInfo]]
) -> None:
    df = pd.read_parquet(dataset[0])
    want = df.copy()
    modes = {name: df[name].mode(dropna=True)[0] for name in df.columns}
    for name in df.columns:
        want[name] = df[name].fillna(modes[name])
    got, result = run(make_step, {"fill_nulls": {"strategy": "mode"}})
    assert_frames_equal(got, want)
    assert got["count"].dtype == np.int64 and got["category"].notna().all()
    for name, value in modes.items():
        filled = result.summary["filled"][name]
        assert filled["count"] == int(df[name].isna().sum())
        if name in ("stamp", "day"):
            assert pd.Timestamp(filled["value"]) == pd.Timestamp(value)
        else:
            assert filled["value"] == (pytest.approx(value) if name in NUMERIC else value)


def test_constant_fill_only_where_the_value_fits(make_step: StepFactory) -> None:
    got, result = run(make_step, {"fill_nulls": {"strategy": "constant", "value": 0}})
    # 0 fits the numeric columns only; strings, booleans and times keep their nulls.
    assert list(result.summary["filled"]) == NUMERIC
    assert got[NUMERIC].notna().all().all()
    assert got["category"].isna().any() and got["flag"].isna().any()

    got, result = run(
        make_step,
        {"fill_nulls": {"strategy": "constant", "value": "2024-02-29", "columns": ["day"]}},
    )
    assert got["day"].notna().all() and result.summary["filled"]["day"]["value"] == "2024-02-29"


def test_subset_dedupe_keeps_first_in_original_order(
    make_step: StepFactory, dataset: tuple[Path, list[ColumnInfo]]
) -> None:
    df = pd.read_parquet(dataset[0])
    want = df.drop_duplicates(subset=["category", "flag"], keep="first")
    got, result = run(make_step, {"drop_duplicates": {"subset": ["category", "flag"]}})
    assert_frames_equal(got, want)
    assert result.summary["rows_out"] == len(want)


def test_no_stage_copies_the_dataset(
    make_step: StepFactory, dataset: tuple[Path, list[ColumnInfo]]
) -> None:
    df = pd.read_parquet(dataset[0])
    got, result = run(make_step, {})
    assert_frames_equal(got, df)
    assert result.summary["rows_dropped"] == 0 and result.summary["filled"] == {}


@pytest.mark.parametrize(
    ("dataset_format", "output_format", "name", "content_type"),
    [
        (DatasetFormat.csv, None, "normalized-2.csv", "text/csv"),
        (DatasetFormat.parquet, None, "normalized-2.parquet", "application/vnd.apache.parquet"),
        (DatasetFormat.json, None, "normalized-2.json", "application/json"),
        (DatasetFormat.ndjson, None, "normalized-2.ndjson", "application/x-ndjson"),
        (DatasetFormat.json, "csv", "normalized-2.csv", "text/csv"),
    ],
)
def test_output_formats_and_suffix(
    make_step: StepFactory,
    dataset: tuple[Path, list[ColumnInfo]],
    dataset_format: DatasetFormat,
    output_format: str | None,
    name: str,
    content_type: str,
) -> None:
    df = pd.read_parquet(dataset[0])
    want = df.fillna({"count": 0})
    params = normalize.NormalizeParams.model_validate(
        {
            "fill_nulls": {"strategy": "constant", "value": 0, "columns": ["count"]},
            "output_format": output_format,
        }
    )
    step = make_step(dataset_format=dataset_format, artifact_suffix="-2")
    [artifact] = normalize.run(step, params).artifacts
    assert (artifact.name, artifact.path.name, artifact.content_type) == (name, name, content_type)
    assert artifact.sha256 == hashlib.sha256(artifact.path.read_bytes()).hexdigest()
    if name.endswith(".csv"):
        got = pd.read_csv(artifact.path)
    elif name.endswith(".parquet"):
        got = pq.read_table(artifact.path).to_pandas()
    elif name.endswith(".json"):
        got = pd.DataFrame(json.loads(artifact.path.read_text()))
    else:
        got = pd.read_json(artifact.path, lines=True)
    assert list(got.columns) == list(df.columns) and len(got) == len(df)
    assert got["count"].tolist() == want["count"].astype(int).tolist()
    assert got["normal"].to_numpy(dtype=float) == pytest.approx(
        df["normal"].to_numpy(dtype=float), nan_ok=True
    )


@pytest.mark.parametrize("fail_on_call", [1, 2, 4])
def test_cancel(make_step: StepFactory, fail_on_call: int) -> None:
    report = CancelOnCall(fail_on_call)

    params = normalize.NormalizeParams.model_validate(
        {"drop_duplicates": True, "fill_nulls": {"strategy": "mode"}, "scale": {"method": "robust"}}
    )
    with pytest.raises(JobCancelled):
        normalize.run(make_step(report=report), params)
