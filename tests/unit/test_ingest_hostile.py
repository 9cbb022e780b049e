"""A corpus of small hostile files, generated here (none is stored in the repository).

Each file either ends ready with every record accounted for (a row of the copy or a failed
row, see assert_no_row_lost) and its bad rows kept, or is refused with a reason that says
what is wrong; nothing ends in another exception.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets.ingest import DatasetUnusable, IngestResult, ingest
from tests.unit.test_ingest import assert_no_row_lost, data_records, failed_rows

CSV, JSON, NDJSON, PARQUET = (
    DatasetFormat.csv,
    DatasetFormat.json,
    DatasetFormat.ndjson,
    DatasetFormat.parquet,
)


@dataclass(frozen=True)
class Ready:
    records: int  # rows + failed rows
    failed_lines: list[int] = field(default_factory=list)
    reason_words: tuple[str, ...] = ()  # words every failed row's reason holds


@dataclass(frozen=True)
class Unusable:
    words: tuple[str, ...]  # words the message holds (case-insensitive)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: Ready | Unusable
    fmt: DatasetFormat = CSV
    max_expanded_bytes: int = 1024**3


def lines(n: int) -> list[bytes]:
    """A header and n rows of three fields."""
    return [b"id,name,score"] + [b"%d,n%d,%d" % (i, i, i * 10) for i in range(1, n + 1)]


def text(rows: list[bytes], newline: bytes = b"\n") -> bytes:
    return newline.join(rows) + newline


def replaced(rows: list[bytes], changes: dict[int, bytes]) -> list[bytes]:
    copy = list(rows)
    for index, line in changes.items():
        copy[index] = line
    return copy


def mixed(rows: list[bytes], endings: list[bytes]) -> bytes:
    return b"".join(line + endings[i % len(endings)] for i, line in enumerate(rows))


def parquet_bytes() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["a", "b", None]}), buffer)
    return buffer.getvalue()


def zip_bytes(names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "<xml/>")
    return buffer.getvalue()


def ndjson(*objects: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def nested(depth: int) -> dict[str, object]:
    """An object `depth` levels deep as DuckDB counts (the object 1, the innermost value 1)."""
    value: object = 1
    for _ in range(depth - 2):
        value = [value]
    return {"deep": value}


def cases() -> list[Case]:
    ten = lines(10)
    plain = text(ten)
    late = replaced(lines(24_000), {21_000: b'21000,"oops,1'})
    two_late = replaced(lines(24_000), {21_000: b'21000,"a,1', 23_000: b'23000,"b,1'})
    last = replaced(lines(24_000), {24_000: b'24000,"never closed,1'})
    crlf_late = mixed(lines(3000), [b"\r\n"] * 2999 + [b"\n"])
    garbage = random.Random(7).randbytes(4096)
    deep_array = json.dumps([{"a": 1}, nested(200)]).encode()
    return [
        # structure
        Case(
            "ragged rows",
            text(replaced(ten, {3: b"3,n3", 6: b"6,n6,60,x"})),
            Ready(10, [4, 7], ("expected 3 fields",)),
        ),
        Case("empty", b"", Unusable(("empty",))),
        Case("blank lines only", b"\n \r\n\t\n", Unusable(("empty",))),
        Case("header only", b"id,name,score\n", Ready(0)),
        Case("header only without newline", b"id,name,score", Ready(0)),
        Case("every row bad", b"a,b,c\n1,2\n3\n", Unusable(("no row could be parsed", "line 2"))),
        Case("only delimiters", b",,,\n,,,\n,,,\n", Ready(2)),
        Case("duplicate and empty headers", b"a,a,,A\n1,2,3,4\n5,6,7,8\n", Ready(2)),
        Case("very long field", b"id,blob\n1," + b"x" * 3_000_000 + b"\n2,y\n", Ready(2)),
        Case("header of 20,001 columns", b"c," * 20_000 + b"c\n", Unusable(("columns",))),
        Case(
            "a 2 MB line as header",
            b"x" * 2_000_000,
            Unusable(("header", "bytes long")),
        ),
        # byte-order marks and line endings
        Case("utf-8 bom", b"\xef\xbb\xbf" + plain, Ready(10)),
        Case("utf-8 bom only", b"\xef\xbb\xbf", Unusable(("empty",))),
        Case("crlf", text(ten, b"\r\n"), Ready(10)),
        Case("cr only (old Mac)", text(ten, b"\r"), Ready(10)),
        Case("crlf header, lf rows", mixed(ten, [b"\r\n"] + [b"\n"] * 10), Ready(10)),
        Case("lf header, crlf rows", mixed(ten, [b"\n"] + [b"\r\n"] * 10), Ready(10)),
        Case("crlf, lf and cr rows", mixed(ten, [b"\r\n", b"\n", b"\r"]), Ready(10)),
        Case("one lf row late in a crlf file", crlf_late, Ready(3000)),
        Case(
            "mixed endings and a ragged row",
            mixed(replaced(ten, {5: b"5,n5"}), [b"\r\n", b"\n"]),
            Ready(10, [6], ("expected 3 fields",)),
        ),
        # quotes
        Case(
            "unterminated quote early",
            text(replaced(ten, {2: b'2,"oops,20'})),
            Unusable(("malformed quoting", "line 3")),
        ),
        Case(
            "unterminated quote late",
            text(late),
            Ready(24_000, [21_001], ("never closes", "line 21001")),
        ),
        Case(
            "two unterminated quotes late",
            text(two_late),
            Ready(24_000, [21_001, 23_001], ("never closes",)),
        ),
        Case(
            "unterminated quote on the last line",
            text(last),
            Ready(24_000, [24_001], ("never closes", "line 24001")),
        ),
        Case(
            "unterminated quote, crlf",
            text(late, b"\r\n"),
            Ready(24_000, [21_001], ("never closes",)),
        ),
        # encodings
        Case(
            "latin-1",
            b"id,city\n1,paris\n2,caf\xe9\n",
            Unusable(("not valid utf-8", "line 3", "latin-1")),
        ),
        Case("utf-16 le with bom", "id,name\n1,é\n2,ü\n".encode("utf-16"), Ready(2)),
        Case(
            "utf-16 be with bom",
            b"\xfe\xff" + "id,name\n1,é\n2,ü\n".encode("utf-16-be"),
            Ready(2),
        ),
        Case("utf-32 with bom", "id,name\n1,é\n".encode("utf-32"), Ready(1)),
        Case(
            "utf-16 le without bom",
            "id,name\n1,x\n".encode("utf-16-le"),
            Unusable(("utf-16", "byte-order mark")),
        ),
        Case(
            "utf-16 with a lone surrogate",
            b"\xff\xfe" + "id,x\n1,".encode("utf-16-le") + b"\x00\xd8" + b"\n\x00",
            Unusable(("utf-16", "not valid")),
        ),
        Case("nul byte in a field", b"id,name\n1,a\x00b\n2,c\n", Ready(2)),
        Case("nul padding", b"\x00" * 5000, Unusable(("binary", "nul"))),
        Case("trailing nul line", plain + b"\x00\x00\x00\n", Ready(11, [12], ("expected",))),
        # other kinds of file
        Case("gzip csv", gzip.compress(plain), Ready(10)),
        Case("gzip ndjson", gzip.compress(ndjson({"a": 1}, {"a": 2})), Ready(2), NDJSON),
        Case(
            "gzip truncated",
            gzip.compress(text(lines(2000)))[:5000],
            Unusable(("gzip", "truncated")),
        ),
        Case(
            "gzip bomb",
            gzip.compress(b"id\n" + b"0\n" * 500_000),
            Unusable(("gzip", "more than 100000 bytes")),
            max_expanded_bytes=100_000,
        ),
        Case(
            "gzip inside gzip",
            gzip.compress(gzip.compress(plain)),
            Unusable(("gzip file inside a gzip file",)),
        ),
        Case("parquet named .csv", parquet_bytes(), Ready(3)),
        Case("parquet named .json", parquet_bytes(), Ready(3), JSON),
        Case("gzipped parquet", gzip.compress(parquet_bytes()), Ready(3)),
        Case(
            "truncated parquet named .csv",
            parquet_bytes()[:100],
            Unusable(("parquet", "uploaded as csv")),
        ),
        Case(
            "xlsx (a zip file)",
            zip_bytes(["[Content_Types].xml", "xl/workbook.xml"]),
            Unusable(("zip archive", ".xlsx", "csv")),
        ),
        Case("zip file", zip_bytes(["data.csv"]), Unusable(("zip archive", "unzip"))),
        Case(
            "old excel",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600),
            Unusable((".xls",)),
        ),
        Case("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", Unusable(("pdf",))),
        Case("bzip2", b"BZh91AY&SY" + bytes(range(200)), Unusable(("bzip2",))),
        Case("binary garbage", garbage, Unusable(("binary",))),
        Case(
            "declared parquet, is gzip",
            gzip.compress(plain),
            Unusable(("not a parquet file", "gzip")),
            PARQUET,
        ),
        Case(
            "declared parquet, is xlsx",
            zip_bytes(["[Content_Types].xml", "xl/workbook.xml"]),
            Unusable(("not a parquet file", ".xlsx")),
            PARQUET,
        ),
        Case("declared parquet, is csv", plain, Unusable(("not a parquet file",)), PARQUET),
        # JSON
        Case(
            "ndjson with broken lines",
            b'{"a": 1}\n{"a": 2,\n\n[1]\n{"a": 3}\n{"a": "x\n',
            Ready(5, [2, 4, 6]),
            NDJSON,
        ),
        Case("ndjson, crlf and bom", b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n', Ready(2), NDJSON),
        Case(
            "ndjson nested too deep",
            ndjson({"a": 1}, nested(200), {"a": 2}),
            Ready(3, [2], ("128",)),
            NDJSON,
        ),
        Case(
            "ndjson nested past orjson's limit",
            b'{"a": 1}\n{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}\n",
            Ready(2, [2], ("128",)),
            NDJSON,
        ),
        Case("json array nested too deep", deep_array, Unusable(("element 2", "128")), JSON),
        Case(
            "json array truncated",
            b'[{"a": 1},\n{"a": 2',
            Unusable(("line 2", "unexpected end of data")),
            JSON,
        ),
        Case("json, utf-16 with bom", '[{"a": "é"}]'.encode("utf-16"), Ready(1), JSON),
        Case(
            "ndjson, no line parses",
            b"nope\n{oops}\n",
            Unusable(("no line could be parsed", "line 1")),
            NDJSON,
        ),
        Case(
            "json of scalars",
            b"[1, 2, 3]",
            Unusable(("expected a json array of objects",)),
            JSON,
        ),
    ]


CASES = cases()


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_file(case: Case, tmp_path: Path) -> None:
    source = tmp_path / f"upload.{case.fmt}"
    source.write_bytes(case.data)

    def run() -> IngestResult:
        return ingest(
            source,
            case.fmt,
            tmp_path / "copy.parquet",
            tmp_path / "work",
            max_expanded_bytes=case.max_expanded_bytes,
        )

    if isinstance(case.expect, Unusable):
        with pytest.raises(DatasetUnusable) as info:
            run()
        message = str(info.value).lower()
        missing = [word for word in case.expect.words if word.lower() not in message]
        assert not missing, f"{missing} not in {str(info.value)!r}"
        return
    result = run()
    assert_no_row_lost(result, case.expect.records)
    failed = failed_rows(result)
    assert [line for line, _, _ in failed] == case.expect.failed_lines
    for _, raw, reason in failed:
        assert all(word in reason for word in case.expect.reason_words), reason
        assert not raw.endswith("\r")
    for row in result.preview:
        for value in row.values():
            assert not (isinstance(value, str) and "\r" in value), row
    assert [path.name for path in (tmp_path / "work").iterdir()] in (
        [],
        ["failed_rows.parquet"],
        ["duckdb_tmp"],
        ["duckdb_tmp", "failed_rows.parquet"],
        ["failed_rows.parquet", "duckdb_tmp"],
    )


def test_records_helper_counts_lines_of_any_ending() -> None:
    assert data_records(b"\xef\xbb\xbf\n\nh\r\n1\n\n2\r3\r\n") == 3
