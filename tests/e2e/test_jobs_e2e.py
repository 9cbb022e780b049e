"""Jobs as a client runs them: submit, follow the SSE stream, fetch results, compare with pandas."""

import io
import json
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.preprocessing import MinMaxScaler

from tests.e2e.conftest import Stack
from tests.e2e.test_datasets_e2e import upload, wait_for

ROWS = 100_000


def make_frame(rows: int = ROWS, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(50, 10, rows).round(3),
            "b": rng.exponential(2.0, rows).round(4),
            "n": rng.integers(0, 1000, rows),
            "city": rng.choice(["oslo", "lima", "pune", "nuuk"], rows),
        }
    )
    frame.loc[rng.choice(rows, rows // 100, replace=False), "a"] = np.nan
    frame.loc[rng.choice(rows, 5, replace=False), "b"] = 500.0  # outliers
    return frame


def read_sse(client, url: str, headers: dict | None = None, timeout: float = 120) -> list[dict]:
    """Every event of a job's stream until the server ends it."""
    events: list[dict] = []
    current: dict = {}
    with client.stream("GET", url, headers=headers or {}, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                current[field] = value.lstrip(" ")
    if current:
        events.append(current)
    return events


STEPS = [
    {"processor": "metrics"},
    {"processor": "anomalies", "params": {"method": "zscore", "columns": ["a", "b"]}},
    {"processor": "anomalies", "params": {"method": "iqr", "columns": ["a", "b"]}},
    {
        "processor": "normalize",
        "params": {
            "fill_nulls": {"strategy": "median", "columns": ["a"]},
            "scale": {"method": "minmax", "columns": ["a", "b"]},
        },
    },
]


def test_job_results_match_pandas(stack: Stack):
    frame = make_frame()
    csv = frame.to_csv(index=False).encode()
    with stack.client() as client:
        dataset = wait_for(client, upload(client, csv, "measurements.csv")["id"], timeout=60)
        assert dataset["status"] == "ready", dataset
        created = client.post("/api/v1/jobs", json={"dataset_id": dataset["id"], "steps": STEPS})
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["status"] == "queued"

        events = read_sse(client, job["links"]["stream"])
        types = [e["event"] for e in events]
        assert types[-1] == "completed", types
        assert types.count("step_started") == 4 and types.count("step_completed") == 4
        ids = [int(e["id"]) for e in events]
        assert ids == sorted(ids)

        # Reconnecting with Last-Event-ID replays exactly what came after it.
        middle = events[len(events) // 2]
        resumed = read_sse(client, job["links"]["stream"], {"Last-Event-ID": middle["id"]})
        assert [e["id"] for e in resumed] == [
            e["id"] for e in events if int(e["id"]) > int(middle["id"])
        ]

        done = client.get(job["links"]["self"]).json()
        assert (done["status"], done["progress"], done["attempts"]) == ("completed", 1.0, 1)
        result = client.get(job["links"]["result"]).json()
        names = [a["name"] for a in result["artifacts"]]
        assert sorted(names) == ["anomalies-2.csv", "anomalies.csv", "normalized.csv"]
        files = {
            a["name"]: client.get(a["url"], follow_redirects=True) for a in result["artifacts"]
        }
        assert all(r.status_code == 200 for r in files.values())

    metrics = result["steps"][0]["summary"]
    assert metrics["row_count"] == ROWS
    a = (
        metrics["columns"]["a"]
        if isinstance(metrics["columns"], dict)
        else next(c for c in metrics["columns"] if c["name"] == "a")
    )
    assert a["null_count"] == frame["a"].isna().sum()
    assert a["mean"] == pytest.approx(frame["a"].mean(), rel=1e-12)
    assert a["std"] == pytest.approx(frame["a"].std(ddof=1), rel=1e-12)
    assert a["p50"] == pytest.approx(frame["a"].quantile(0.5), rel=1e-12)

    zscore = pd.read_csv(io.BytesIO(files["anomalies.csv"].content))
    for column in ("a", "b"):
        values = frame[column]
        z = pd.Series(stats.zscore(values, nan_policy="omit"), index=values.index)
        expected = sorted((z.abs() > 3.0).to_numpy().nonzero()[0] + 1)
        assert sorted(zscore[zscore["column"] == column]["row_number"]) == expected

    iqr = pd.read_csv(io.BytesIO(files["anomalies-2.csv"].content))
    q1, q3 = frame["b"].quantile(0.25), frame["b"].quantile(0.75)
    outside = frame["b"][(frame["b"] < q1 - 1.5 * (q3 - q1)) | (frame["b"] > q3 + 1.5 * (q3 - q1))]
    assert sorted(iqr[iqr["column"] == "b"]["row_number"]) == sorted(outside.index + 1)

    normalized = pd.read_csv(io.BytesIO(files["normalized.csv"].content))
    filled = frame.copy()
    filled["a"] = filled["a"].fillna(filled["a"].median())
    expected = MinMaxScaler().fit_transform(filled[["a", "b"]])
    np.testing.assert_allclose(normalized[["a", "b"]].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    assert normalized["city"].tolist() == frame["city"].tolist()


def test_job_errors_say_what_and_where(stack: Stack):
    with stack.client() as client:
        dataset = wait_for(client, upload(client, b"x,label\n1,a\n2,b\n", "small.csv")["id"])
        bad = [
            ({"processor": "nope"}, "steps[0].processor"),
            (
                {"processor": "anomalies", "params": {"method": "zscore", "columns": ["missing"]}},
                "steps[0].params.columns",
            ),
            (
                {"processor": "anomalies", "params": {"method": "sideways"}},
                "steps[0].params.method",
            ),
        ]
        for step, field in bad:
            response = client.post(
                "/api/v1/jobs", json={"dataset_id": dataset["id"], "steps": [step]}
            )
            assert response.status_code == 422, response.text
            assert response.json()["error"]["details"]["field"].startswith(field), response.text
        missing = client.post(
            "/api/v1/jobs", json={"dataset_id": "0" * 32, "steps": [{"processor": "metrics"}]}
        )
        assert missing.status_code == 404
        assert client.post("/api/v1/jobs", json={"steps": []}).status_code == 422


def test_idempotency_key_returns_the_same_job(stack: Stack):
    with stack.client() as client:
        dataset = wait_for(client, upload(client, b"x\n1\n2\n", "tiny.csv")["id"])
        body = {"dataset_id": dataset["id"], "steps": [{"processor": "metrics"}]}
        key = {"Idempotency-Key": f"k-{time.time_ns()}"}
        first = client.post("/api/v1/jobs", json=body, headers=key)
        again = client.post("/api/v1/jobs", json=body, headers=key)
        other = client.post("/api/v1/jobs", json=body | {"name": "other"}, headers=key)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        assert other.status_code == 409
        events = read_sse(client, first.json()["links"]["stream"])
        assert events[-1]["event"] == "completed"
        assert json.loads(events[-1]["data"])["job_id"] == first.json()["id"]
        # A finished job: the stream replays and ends at once; cancel is a conflict.
        assert read_sse(client, first.json()["links"]["stream"])[-1]["event"] == "completed"
        assert client.post(first.json()["links"]["cancel"]).status_code == 409
        assert client.delete(first.json()["links"]["self"]).status_code == 204
        assert client.get(first.json()["links"]["self"]).status_code == 404
