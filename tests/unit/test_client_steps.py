"""The CLI's step syntax read against the real processors' params schemas, and the SSE parser."""

import pytest

from client.models import Processor
from client.sse import parse_sse
from client.steps import StepSyntaxError, parse_step, read_steps_file
from services.processing.processors.registry import PROCESSORS

CATALOGUE = {
    p.name: Processor(name=p.name, params_schema=p.params_model.model_json_schema())
    for p in PROCESSORS.values()
}


def test_values_are_read_by_the_schema_types():
    assert parse_step("metrics", CATALOGUE) == {"processor": "metrics", "params": {}}
    step = parse_step("anomalies method=iqr columns=a,b threshold=2.5", CATALOGUE)
    assert step == {
        "processor": "anomalies",
        "params": {"method": "iqr", "columns": ["a", "b"], "threshold": 2.5},
    }
    # A one-item list is still a list; a column named like a number stays a string.
    assert parse_step("metrics columns=2024", CATALOGUE)["params"] == {"columns": ["2024"]}
    # JSON lists and objects are taken as written, spaces and quotes included.
    step = parse_step('normalize scale={"method": "zscore", "columns": ["a"]}', CATALOGUE)
    assert step["params"] == {"scale": {"method": "zscore", "columns": ["a"]}}
    assert parse_step('metrics columns="a b",c', CATALOGUE)["params"] == {"columns": ["a b", "c"]}
    step = parse_step(
        """normalize 'fill_nulls={"strategy": "median", "columns": ["a b"]}'""", CATALOGUE
    )
    assert step["params"]["fill_nulls"] == {"strategy": "median", "columns": ["a b"]}
    assert parse_step('metrics \'columns=["x","y"]\'', CATALOGUE)["params"] == {
        "columns": ["x", "y"]
    }
    assert parse_step('metrics columns=["x","y"]', CATALOGUE)["params"] == {"columns": ["x", "y"]}
    step = parse_step("nmf columns=a,b n_components=3", CATALOGUE)
    assert step["params"] == {"columns": ["a", "b"], "n_components": 3}


def test_mistakes_are_named():
    with pytest.raises(StepSyntaxError, match="unknown processor 'metric'"):
        parse_step("metric", CATALOGUE)
    with pytest.raises(StepSyntaxError, match="anomalies has no parameter 'colums'"):
        parse_step("anomalies colums=a", CATALOGUE)
    with pytest.raises(StepSyntaxError, match="not key=value"):
        parse_step("anomalies zscore", CATALOGUE)
    with pytest.raises(StepSyntaxError, match="empty step"):
        parse_step("  ", CATALOGUE)


def test_without_a_catalogue_values_are_json_when_they_parse():
    step = parse_step("custom n=3 flag=true name=abc list=[1,2]")
    assert step["params"] == {"n": 3, "flag": True, "name": "abc", "list": [1, 2]}


def test_steps_file():
    steps = read_steps_file(
        '[{"processor": "metrics"}, {"processor": "anomalies", "params": {"method": "zscore"}}]'
    )
    assert steps == [
        {"processor": "metrics", "params": {}},
        {"processor": "anomalies", "params": {"method": "zscore"}},
    ]
    with pytest.raises(StepSyntaxError):
        read_steps_file('{"processor": "metrics"}')


def test_sse_messages_and_a_cut_one():
    lines = [
        ": keep-alive",
        "id: 1",
        "event: created",
        'data: {"a": 1}',
        "",
        "id: 2",
        "event: progress",
        "data: {",  # the connection drops here: no closing blank line
    ]
    messages = list(parse_sse(lines))
    assert [(m.id, m.event, m.data) for m in messages] == [("1", "created", '{"a": 1}')]
