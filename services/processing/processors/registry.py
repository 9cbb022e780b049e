"""The processor registry: the extension point (a new processor = one module + one line here)."""

from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.domain.records import ColumnInfo
from services.processing.processors import events, latent
from services.processing.processors.base import ParamsError, Processor, UnknownProcessor
from services.processing.processors.tables import anomalies, metrics, normalize

PROCESSORS: dict[str, Processor] = {
    p.name: p
    for p in [
        Processor(
            name="metrics",
            description="Profile: row/column counts, duplicates, nulls, distinct values;"
            " numeric min/max/mean/std/quartiles/histogram; temporal range; top values.",
            params_model=metrics.MetricsParams,
            artifacts=[],
            run=metrics.run,
            check_columns=metrics.check_columns,
        ),
        Processor(
            name="anomalies",
            description="Flag outliers per numeric column by z-score, modified z-score (MAD)"
            " or IQR fences; writes the flagged values with their scores.",
            params_model=anomalies.AnomaliesParams,
            artifacts=[anomalies.ARTIFACT],
            run=anomalies.run,
            check_columns=anomalies.check_columns,
        ),
        Processor(
            name="normalize",
            description="Drop duplicate rows, fill nulls, scale numeric columns (minmax,"
            " zscore, robust) and write the result as CSV, Parquet, JSON or NDJSON.",
            params_model=normalize.NormalizeParams,
            artifacts=[f"normalized.{fmt}" for fmt in normalize.FORMATS],
            run=normalize.run,
            check_columns=normalize.check_columns,
        ),
        *events.PROCESSORS,
        *latent.PROCESSORS,
    ]
}


def get_processor(name: str) -> Processor | None:
    """The registered processor of that name, if any."""
    return PROCESSORS.get(name)


def validate_step(name: str, params: dict[str, Any], columns: list[ColumnInfo] | None) -> BaseModel:
    """Parse a step's params; check its columns when the dataset schema is known (not None)."""
    processor = PROCESSORS.get(name)
    if processor is None:
        raise UnknownProcessor(name, list(PROCESSORS))
    try:
        model = processor.params_model.model_validate(params)
    except ValidationError as exc:
        errors = [
            {
                "field": field_path(error["loc"]),
                "message": error["msg"].removeprefix("Value error, "),
            }
            for error in exc.errors()
        ]
        first = errors[0]
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        raise ParamsError(message, field=first["field"], errors=errors) from None
    if columns is not None:
        processor.check_columns(model, columns)
    return model


def field_path(loc: tuple[int | str, ...]) -> str:
    """("fill_nulls", "columns", 1) -> "fill_nulls.columns[1]"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "union[")):  # pydantic validator/union tags
            continue
        else:
            path += f".{part}" if path else part
    return path
