"""Columns whose names differ only in case (`a`, `A`) are distinct columns of a dataset, but
DuckDB identifiers ignore case: it reads the copy's `A` as `A_1` (datasets.common.storage_names).
A step on such a dataset runs under the copy's names and its summary gets the dataset's back;
its artifact files keep the copy's names (README, "Column names")."""

from dataclasses import replace
from typing import Any

from schemas.domain.records import ColumnInfo
from services.processing.datasets.common import storage_names
from services.processing.processors.base import StepOutput


def copy_renames(columns: list[ColumnInfo]) -> dict[str, str]:
    """Dataset name -> copy name, for the columns whose names differ (usually none)."""
    names = [c.name for c in columns]
    return {d: s for d, s in zip(names, storage_names(names), strict=True) if d != s}


def copy_columns(columns: list[ColumnInfo], renames: dict[str, str]) -> list[ColumnInfo]:
    return [c.model_copy(update={"name": renames.get(c.name, c.name)}) for c in columns]


def renamed(value: Any, renames: dict[str, str]) -> Any:
    """`value` (JSON: params or a summary) with every key and string in `renames` replaced."""
    if isinstance(value, str):
        return renames.get(value, value)
    if isinstance(value, dict):
        return {renamed(k, renames): renamed(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v, renames) for v in value]
    return value


def with_dataset_names(output: StepOutput, renames: dict[str, str]) -> StepOutput:
    back = {s: d for d, s in renames.items()}
    return replace(output, summary=renamed(output.summary, back))
