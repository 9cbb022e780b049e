"""JSON array and NDJSON ingest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets.ingest import DatasetUnusable, IngestResult
from tests.unit.test_ingest import Ingest, failed_rows, ingester

JSON, NDJSON = DatasetFormat.json, DatasetFormat.ndjson


@pytest.fixture
def run(tmp_path: Path) -> Ingest:
    return ingester(tmp_path)


def columns(result: IngestResult) -> list[tuple[str, str, int]]:
    return [(c.name, c.type, c.null_count) for c in result.columns]


def ndjson(*objects: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def test_array_of_objects(run: Ingest) -> None:
    data = b"""[
      {"id": 1, "name": "a", "tags": ["x", "y"], "pos": {"x": 1.5, "y": 2}},
      {"id": 2, "name": null, "day": "2024-01-02", "at": "2024-01-02T03:04:05Z"}
    ]"""
    result = run(data, JSON)
    assert result.row_count == 2 and result.failed_row_count == 0
    assert columns(result) == [
        ("id", "integer", 0),
        ("name", "string", 1),
        ("tags", "varchar[]", 1),
        ("pos", "struct(x double, y bigint)", 1),
        ("day", "date", 1),
        ("at", "timestamp", 1),
    ]
    assert result.preview[1] == {
        "id": 2,
        "name": None,
        "tags": None,
        "pos": None,
        "day": "2024-01-02",
        "at": "2024-01-02T03:04:05+00:00",
    }
    assert result.preview[0]["pos"] == {"x": 1.5, "y": 2}


def test_array_with_bom_and_leading_blank(run: Ingest) -> None:
    assert run(b'\xef\xbb\xbf\n  [{"a": 1}]', JSON).row_count == 1


def test_truncated_array_is_unusable_with_position(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b'[\n{"a": 1},\n{"a": 2,', JSON)
    assert str(info.value) == "invalid JSON at line 3, column 9: unexpected end of data"


def test_invalid_array_is_unusable_with_position(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b'[\n{"a": 1},\n{"a": tru}\n]', JSON)
    assert str(info.value) == "invalid JSON at line 3, column 7: invalid literal, expected 'true'"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[{"a": 1}, [1]]', "expected a JSON array of objects, found array at element 2"),
        (b"[1, 2]", "expected a JSON array of objects, found number at element 1"),
        (b"[]", "the JSON array holds no object with a field"),
        (b"[{}, {}]", "the JSON array holds no object with a field"),
        (b'[{"a": 1, "": 2}]', 'element 1 has an empty key ""; every field needs a name'),
    ],
)
def test_array_without_usable_objects(run: Ingest, data: bytes, message: str) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(data, JSON)
    assert str(info.value) == message


def test_ndjson_bad_lines_become_failed_rows(run: Ingest) -> None:
    data = (
        b'{"id": 1, "v": "a"}\n'
        b"\n"  # blank: skipped, not failed
        b'{"id": 2, "v": "b",}\n'
        b"[1, 2]\n"
        b'{"id": 3, "v": "c"}\r\n'
        b"42\n"
        b'{"id": 4, "": "no name"}\n'
        b'{"id": 5, "v": "e"}\n'
        b'{"id": 6, "v": "tru'  # truncated last line
    )
    result = run(data, NDJSON)
    assert (result.row_count, result.failed_row_count) == (3, 5)
    assert failed_rows(result) == [
        (3, '{"id": 2, "v": "b",}', "invalid JSON: trailing comma is not allowed at column 19"),
        (4, "[1, 2]", "expected a JSON object, found array"),
        (6, "42", "expected a JSON object, found number"),
        (7, '{"id": 4, "": "no name"}', 'empty key "": every field needs a name'),
        (9, '{"id": 6, "v": "tru', "invalid JSON: unexpected end of data at column 20"),
    ]
    assert columns(result) == [("id", "integer", 0), ("v", "string", 0)]
    assert [r["id"] for r in result.preview] == [1, 3, 5]


def test_json_format_with_object_lines_is_read_as_ndjson(run: Ingest) -> None:
    result = run(b'{"a": 1}\n{"a": 2}\n{"a": \n', JSON)
    assert result.row_count == 2
    reason = "invalid JSON: unexpected end of data at column 7"
    assert failed_rows(result) == [(3, '{"a": ', reason)]


def test_ndjson_where_no_line_parses_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b"\n\n{oops}\nalso not\n", NDJSON)
    assert str(info.value) == (
        "no line could be parsed as a JSON object; first error at line 3: invalid JSON: "
        "unexpected character, expected a string key at column 2"
    )


def test_pretty_printed_object_as_json_is_unusable_with_a_hint(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b'{\n  "rows": [1, 2]\n}\n', JSON)
    assert str(info.value) == (
        "no line could be parsed as a JSON object; first error at line 1: invalid JSON: "
        "unexpected end of data at column 2 (JSON must be an array of objects, or one "
        "object per line)"
    )


def test_json_array_uploaded_as_ndjson_gets_a_hint(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable, match=r"upload a JSON array with format json\)$"):
        run(b'[{"a": 1},\n{"a": 2}]\n', NDJSON)


def test_ndjson_of_empty_objects_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable, match=r"^no JSON object has any field$"):
        run(b"{}\n{}\nnope\n", NDJSON)


def test_keys_and_types_come_from_every_line(run: Ingest) -> None:
    """Past DuckDB's default 20,480-object sample: a new key and a changed type."""
    objects: list[dict[str, object]] = [{"id": i, "n": i} for i in range(25_000)]
    objects[24_000] = {"id": 24_000, "n": "text", "late": True}
    result = run(ndjson(*objects), NDJSON)
    assert result.row_count == 25_000 and result.failed_row_count == 0
    assert columns(result) == [("id", "integer", 0), ("n", "json", 0), ("late", "boolean", 24_999)]


def test_keys_differing_in_case_become_two_columns(run: Ingest) -> None:
    result = run(ndjson({"a": 1}, {"A": 2}), NDJSON)
    assert [c.name for c in result.columns] == ["a", "A_1"]


def test_always_null_key_is_a_float_column_of_nulls(run: Ingest) -> None:
    # As an all-empty CSV column: numeric steps give nulls on it, not "not numeric".
    result = run(ndjson({"a": 1, "b": None}, {"a": 2, "b": None}), NDJSON)
    assert columns(result) == [("a", "integer", 0), ("b", "float", 2)]


def test_duplicate_key_is_unusable_with_physical_line(run: Ingest) -> None:
    data = b'{"a": 1}\n\nbad\n{"a": 2}\n{"a": 3, "a": 4}\n'
    with pytest.raises(DatasetUnusable) as info:
        run(data, NDJSON)
    assert str(info.value).startswith(
        'could not convert the JSON lines: JSON transform error in file "source.ndjson", '
        'in line 5: Object {"a":3,"a":4} has duplicate key "a"'
    )


def test_ndjson_with_bom_and_crlf(run: Ingest) -> None:
    result = run(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n', NDJSON)
    assert [r["a"] for r in result.preview] == [1, 2]


def test_ten_megabyte_line_is_accepted(run: Ingest) -> None:
    big = "x" * 10_000_000
    result = run(ndjson({"id": 1, "blob": big}, {"id": 2, "blob": "y"}), NDJSON)
    assert result.row_count == 2 and result.failed_row_count == 0
    assert result.preview[0]["blob"] == "x" * 1000 + "…"


def test_line_over_16_mib_is_a_failed_row(run: Ingest) -> None:
    huge = b'{"blob": "' + b"x" * 17_000_000 + b'"}'
    result = run(b'{"blob": "a"}\n' + huge + b"\nbad\n", NDJSON)
    assert result.row_count == 1
    (line, raw, reason), (bad_line, _, _) = failed_rows(result)
    assert (line, bad_line) == (2, 3)
    assert reason == f"line is {len(huge)} bytes long; the limit is 16 MiB"
    assert raw == huge[:65_536].decode() + f"… [truncated, {len(huge)} bytes]"


def test_line_over_16_mib_without_newline(run: Ingest) -> None:
    """Past 16 MiB the reader stops holding the line and only measures it."""
    result = run(b'{"a": 1}\nbad\n' + b"x" * 20_000_000, NDJSON)
    assert failed_rows(result)[1] == (
        3,
        "x" * 65_536 + "… [truncated, 20000000 bytes]",
        "line is 20000000 bytes long; the limit is 16 MiB",
    )


def nested(levels: int, innermost: bytes = b"1") -> bytes:
    """An object `levels` deep as DuckDB counts them (the object is 1, a scalar one more)."""
    arrays = levels - 2 if innermost == b"1" else levels - 1
    return (
        b'{"deep": '
        + b"[" * arrays
        + (innermost if innermost == b"1" else b"")
        + b"]" * arrays
        + b"}"
    )


TOO_DEEP = "nested more than 128 levels deep (the limit)"


def test_duckdb_depth_limit_is_128_levels(run: Ingest) -> None:
    """Pins how DuckDB counts: 128 levels load, 129 fail (here as a failed row)."""
    data = nested(128) + b"\n" + nested(128, b"") + b"\n" + nested(129) + b"\n" + nested(129, b"")
    result = run(data + b"\n", NDJSON)
    assert result.row_count == 2
    assert [(line, reason) for line, _, reason in failed_rows(result)] == [
        (3, TOO_DEEP),
        (4, TOO_DEEP),
    ]


def test_ndjson_line_nested_too_deep_is_a_failed_row(run: Ingest) -> None:
    data = b'{"a": 1}\n' + nested(500) + b"\n" + nested(3000) + b'\n{"a": 2}\n'
    result = run(data, NDJSON)
    assert [(line, reason) for line, _, reason in failed_rows(result)] == [
        (2, TOO_DEEP),
        (3, f"invalid JSON: {TOO_DEEP}"),  # past orjson's own limit of 1024
    ]
    assert result.row_count == 2


def test_json_array_nested_too_deep_names_the_limit(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b'[{"a": 1},\n' + nested(200) + b"]", JSON)
    assert str(info.value) == f"element 2 is {TOO_DEEP}"
    with pytest.raises(DatasetUnusable) as info:
        run(b'[{"a": 1},\n' + nested(2000) + b"]", JSON)
    assert str(info.value) == f"invalid JSON at line 2, column 1033: {TOO_DEEP}"
