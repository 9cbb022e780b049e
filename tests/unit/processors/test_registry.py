"""The registry: lookup, params validation with field paths, JSON schemas."""

import pytest

from schemas.domain.records import ColumnInfo
from services.processing.processors import registry
from services.processing.processors.base import ParamsError, UnknownProcessor, artifact_name
from services.processing.processors.tables.anomalies import AnomaliesParams
from services.processing.processors.tables.normalize import NormalizeParams

COLUMNS = [
    ColumnInfo(name="price", type="float", null_count=0),
    ColumnInfo(name="qty", type="integer", null_count=1),
    ColumnInfo(name="city", type="string", null_count=0),
    ColumnInfo(name="at", type="timestamp", null_count=0),
]


def test_registry_lists_the_processors() -> None:
    assert list(registry.PROCESSORS) == [
        "metrics",
        "anomalies",
        "normalize",
        "count_anomalies",
        "count_model",
        "count_comparison",
        "latent_classes",
        "nmf",
        "correspondence",
        "factor_analysis",
    ]
    for name, processor in registry.PROCESSORS.items():
        assert registry.get_processor(name) is processor
        assert processor.description
        schema = processor.params_model.model_json_schema()
        assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert registry.PROCESSORS["anomalies"].artifacts == ["anomalies.csv"]
    assert "normalized.parquet" in registry.PROCESSORS["normalize"].artifacts
    assert registry.get_processor("nope") is None


def test_valid_params_return_the_model() -> None:
    model = registry.validate_step("anomalies", {"method": "iqr", "columns": ["qty"]}, COLUMNS)
    assert isinstance(model, AnomaliesParams) and model.columns == ["qty"]
    model = registry.validate_step("normalize", {"drop_duplicates": True}, COLUMNS)
    assert isinstance(model, NormalizeParams) and model.drop_duplicates is not None
    model = registry.validate_step("normalize", {"drop_duplicates": False}, COLUMNS)
    assert isinstance(model, NormalizeParams)


@pytest.mark.parametrize(
    ("name", "params", "field", "text"),
    [
        ("metrics", {"columns": ["nope"]}, "columns[0]", "not in the dataset"),
        ("metrics", {"columns": ["price", "nope"]}, "columns[1]", "'nope'"),
        ("metrics", {"columns": ["price", "price"]}, "columns", "twice"),
        ("metrics", {"columns": []}, "columns", "at least 1"),
        ("metrics", {"colums": ["price"]}, "colums", "Extra inputs"),
        ("anomalies", {}, "method", "required"),
        ("anomalies", {"method": "lof"}, "method", "zscore"),
        ("anomalies", {"method": "zscore", "columns": ["city"]}, "columns[0]", "numeric"),
        ("anomalies", {"method": "zscore", "threshold": -1}, "threshold", "greater than"),
        ("normalize", {"drop_duplicates": "yes"}, "drop_duplicates", "true, false"),
        ("normalize", {"drop_duplicates": {"subset": ["x"]}}, "drop_duplicates.subset[0]", "x"),
        ("normalize", {"drop_duplicates": {"subset": [1]}}, "drop_duplicates.subset[0]", "string"),
        ("normalize", {"fill_nulls": {"strategy": "constant"}}, "fill_nulls.value", "required"),
        ("normalize", {"fill_nulls": {"strategy": "mean", "value": 1}}, "fill_nulls.value", "only"),
        (
            "normalize",
            {"fill_nulls": {"strategy": "mean", "columns": ["city"]}},
            "fill_nulls.columns[0]",
            "numeric",
        ),
        (
            "normalize",
            {"fill_nulls": {"strategy": "constant", "value": 1.5, "columns": ["qty"]}},
            "fill_nulls.columns[0]",
            "cannot be stored",
        ),
        (
            "normalize",
            {"fill_nulls": {"strategy": "constant", "value": "x", "columns": ["at"]}},
            "fill_nulls.columns[0]",
            "timestamp",
        ),
        (
            "normalize",
            {"fill_nulls": {"strategy": "constant", "value": True}},
            "fill_nulls.value",
            "fits no column",
        ),
        (
            "normalize",
            {"scale": {"method": "minmax", "columns": ["at"]}},
            "scale.columns[0]",
            "numeric",
        ),
        ("normalize", {"scale": {"method": "log"}}, "scale.method", "minmax"),
        ("normalize", {"output_format": "xml"}, "output_format", "csv"),
    ],
)
def test_invalid_params_name_the_field(name: str, params: dict, field: str, text: str) -> None:
    with pytest.raises(ParamsError) as info:
        registry.validate_step(name, params, COLUMNS)
    assert info.value.field == field
    assert text in info.value.message
    assert info.value.errors[0]["field"] == field


def test_all_pydantic_errors_are_listed() -> None:
    params = {"method": "lof", "threshold": "big", "extra": 1}
    with pytest.raises(ParamsError) as info:
        registry.validate_step("anomalies", params, COLUMNS)
    assert [e["field"] for e in info.value.errors] == ["method", "threshold", "extra"]


def test_unknown_processor() -> None:
    with pytest.raises(UnknownProcessor) as info:
        registry.validate_step("pca", {}, COLUMNS)
    assert isinstance(info.value, ParamsError)
    assert info.value.field == "processor"
    assert "metrics" in info.value.message and info.value.name == "pca"


def test_artifact_name() -> None:
    assert artifact_name("anomalies.csv", "") == "anomalies.csv"
    assert artifact_name("anomalies.csv", "-2") == "anomalies-2.csv"
    assert artifact_name("normalized.parquet", "-3") == "normalized-3.parquet"


FAMILY_PARAMS = {
    "count_anomalies": {"timestamp_column", "period", "group_column", "h3", "recent_periods"},
    "count_model": {"timestamp_column", "period", "group_column", "features", "family"},
    "count_comparison": {"timestamp_column", "group_column", "period"},
    "latent_classes": {"columns", "n_classes", "n_classes_range", "n_init", "max_iter", "seed"},
    "nmf": {"columns", "n_components", "init", "max_iter", "seed"},
    "correspondence": {"columns", "n_components"},
    "factor_analysis": {"columns", "n_factors", "rotation", "method", "correlation"},
}


def test_the_catalogue_serves_every_processor_with_its_schema(client) -> None:
    response = client.get("/api/v1/processors")
    assert response.status_code == 200
    served = {p["name"]: p for p in response.json()}
    assert list(served) == list(registry.PROCESSORS)
    for name, processor in registry.PROCESSORS.items():
        assert served[name]["description"] == processor.description
        assert served[name]["artifacts"] == processor.artifacts
        assert served[name]["params_schema"] == processor.params_model.model_json_schema()
    for name, params in FAMILY_PARAMS.items():
        assert params <= set(served[name]["params_schema"]["properties"]), name
    assert served["count_model"]["artifacts"] == ["coefficients.csv", "fitted.csv"]
    assert served["latent_classes"]["artifacts"] == ["memberships.parquet"]
