"""CSV ingest: failed rows with physical line numbers, sniffing, quoting, long lines."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets import csv_reader
from services.processing.datasets.ingest import DatasetUnusable, IngestResult
from tests.unit.test_ingest import Ingest, failed_rows, ingester

QUOTE = csv_reader.QUOTE_REASON


@pytest.fixture
def run(tmp_path: Path) -> Ingest:
    return ingester(tmp_path)


def rows(result: IngestResult) -> list[tuple[int, str, str]]:
    return failed_rows(result)


def columns(result: IngestResult) -> list[tuple[str, str, int]]:
    return [(c.name, c.type, c.null_count) for c in result.columns]


@pytest.fixture
def small_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sniff like a big file: only the first rows (DuckDB reads at least 2048)."""
    monkeypatch.setattr(csv_reader, "FULL_SNIFF_BYTES", 0)
    monkeypatch.setattr(csv_reader, "SAMPLE_ROWS", 10)


def numbered(n: int) -> list[bytes]:
    """A header and n rows of three fields: id, a name, a number."""
    return [b"id,name,score"] + [b"%d,n%d,%d" % (i, i, i * 10) for i in range(1, n + 1)]


def joined(lines: list[bytes], newline: bytes = b"\n") -> bytes:
    return newline.join(lines) + newline


def test_ragged_rows_become_failed_rows(run: Ingest) -> None:
    lines = numbered(10)
    lines[3] = b"3,n3"
    lines[6] = b"6,n6,60,extra"
    lines[9] = b"9"

    result = run(joined(lines))

    assert (result.row_count, result.failed_row_count) == (7, 3)
    assert rows(result) == [
        (4, "3,n3", "expected 3 fields, found 2"),
        (7, "6,n6,60,extra", "expected 3 fields, found 4"),
        (10, "9", "expected 3 fields, found 1"),
    ]
    assert columns(result) == [("id", "integer", 0), ("name", "string", 0), ("score", "integer", 0)]
    assert [r["id"] for r in result.preview] == [1, 2, 4, 5, 7, 8, 10]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_line_numbers_are_physical_after_multiline_field_and_blank_lines(
    run: Ingest, newline: bytes
) -> None:
    data = newline.join(
        [
            b"id,note,score",
            b'1,"two\nlines",10',  # line 2-3
            b"2,n,20",  # 4
            b"3,short",  # 5: bad
            b"",  # 6: blank lines are skipped, not failed
            b"",  # 7
            b'4,"a\nb\nc",40,x',  # 8-10: bad, itself spanning lines
            b"5,n,50",  # 11
            b"6,n",  # 12: bad
        ]
    )
    result = run(data + newline)
    assert [(line, reason) for line, _, reason in rows(result)] == [
        (5, "expected 3 fields, found 2"),
        (8, "expected 3 fields, found 4"),
        (12, "expected 3 fields, found 2"),
    ]
    assert [raw for _, raw, _ in rows(result)] == ["3,short", '4,"a\nb\nc",40,x', "6,n"]
    assert result.row_count == 3
    assert result.preview[0]["note"] == "two\nlines"


def test_duckdb_reject_positions_quirk(tmp_path: Path) -> None:
    """Pins what DuckDB reports, which the physical line numbers above are derived from."""
    source = tmp_path / "q.csv"
    source.write_bytes(b'a,b\r\n1,"x\r\ny"\r\n2\r\n')  # bad row "2" is on physical line 4
    con = duckdb.connect()
    con.sql(f"SELECT * FROM read_csv('{source}', header=true, store_rejects=true)").fetchall()
    rejected = con.execute(
        "SELECT line, line_byte_position, csv_line FROM reject_errors"
    ).fetchone()
    assert rejected is not None
    line, position, csv_line = rejected
    assert line == 3  # records, not lines: the quoted line break is not counted
    assert csv_line == "\n2"  # starts at the "\n" of the previous CRLF
    assert source.read_bytes()[position - 1 : position + 1] == b"\n2"  # 1-based offset


def test_blank_lines_before_the_header_are_skipped(run: Ingest) -> None:
    """DuckDB would take names from line 3 but read line 3 again as data: skip is set."""
    result = run(b"\r\n  \r\nid,name\r\n1,x\r\n2\r\n")
    assert [c.name for c in result.columns] == ["id", "name"]
    assert rows(result) == [(5, "2", "expected 2 fields, found 1")]


def test_old_mac_line_endings(run: Ingest) -> None:
    result = run(b"id,name\r1,x\r2\r3,z\r")
    assert result.row_count == 2
    assert rows(result) == [(3, "2", "expected 2 fields, found 1")]
    with pytest.raises(DatasetUnusable, match=r"invalid byte 0xe9 at line 3, column 6 "):
        run(b"id,name\r1,x\r2,caf\xe9\r")


def test_bom_is_stripped(run: Ingest) -> None:
    result = run(b"\xef\xbb\xbfid,name\n1,x\n2\n")
    assert [c.name for c in result.columns] == ["id", "name"]
    assert rows(result) == [(3, "2", "expected 2 fields, found 1")]


def test_header_only_is_usable(run: Ingest) -> None:
    result = run(b"id,name,when\n")
    assert result.row_count == 0 and result.failed_row_count == 0
    assert columns(result) == [("id", "string", 0), ("name", "string", 0), ("when", "string", 0)]
    assert result.preview == []


def test_header_without_newline(run: Ingest) -> None:
    assert [c.name for c in run(b"a,b").columns] == ["a", "b"]


def test_duplicate_and_empty_header_names_become_unique(run: Ingest) -> None:
    result = run(b"a,a,,A, ,b\n1,2,3,4,5,6\n")
    names = [c.name for c in result.columns]
    assert names == ["a", "a_1", "column2", "A_2", "column4", "b"]
    assert len({n.lower() for n in names}) == len(names) and all(n.strip() for n in names)
    assert result.preview == [dict(zip(names, range(1, 7), strict=True))]


@pytest.mark.parametrize("delimiter", [b";", b"\t", b"|"])
def test_delimiter_is_detected(run: Ingest, delimiter: bytes) -> None:
    data = b"\n".join(
        delimiter.join(fields)
        for fields in [[b"id", b"price", b"label"], [b"1", b"2,5", b"x y"], [b"2", b"3", b"z"]]
    )
    result = run(data + b"\n")
    assert columns(result) == [("id", "integer", 0), ("price", "string", 0), ("label", "string", 0)]
    assert result.preview[0] == {"id": 1, "price": "2,5", "label": "x y"}


def test_types_nulls_and_preview(run: Ingest) -> None:
    data = (
        b"i,f,b,d,ts,t,s\n"
        b"1,1.5,true,2024-01-02,2024-01-02 03:04:05,10:30:00,x\n"
        b",2.5,false,,2024-01-03 00:00:00,,\n"
        b"3,,,2024-01-04,,11:00:00,z\n"
    )
    result = run(data)
    assert columns(result) == [
        ("i", "integer", 1),
        ("f", "float", 1),
        ("b", "boolean", 1),
        ("d", "date", 1),
        ("ts", "timestamp", 1),
        ("t", "time", 1),
        ("s", "string", 1),
    ]
    assert result.preview[0] == {
        "i": 1,
        "f": 1.5,
        "b": True,
        "d": "2024-01-02",
        "ts": "2024-01-02T03:04:05",
        "t": "10:30:00",
        "s": "x",
    }


def test_small_file_types_come_from_every_row(run: Ingest) -> None:
    lines = numbered(5000)
    lines[4000] = b"4000,n,not a number"
    result = run(joined(lines))
    assert result.failed_row_count == 0
    assert columns(result)[2] == ("score", "string", 0)


def test_values_not_fitting_the_sampled_type_are_failed_rows(
    run: Ingest, small_sample: None
) -> None:
    lines = numbered(5000)
    lines[4000] = b"4000,n,not a number"
    lines[4500] = b"x,n,y"
    result = run(joined(lines))
    assert columns(result)[2] == ("score", "integer", 0)
    assert rows(result) == [
        (4001, "4000,n,not a number", 'column "score": cannot convert "not a number" to integer'),
        (
            4501,
            "x,n,y",
            'column "id": cannot convert "x" to integer; '
            'column "score": cannot convert "y" to integer',
        ),
    ]
    assert result.row_count == 4998


def test_quoted_field_after_the_sample_is_read(run: Ingest, small_sample: None) -> None:
    """With no quote in its sample DuckDB would not unquote; the reader forces quote='"'."""
    lines = numbered(5000)
    lines[4000] = b'4000,"last, first",1'
    result = run(joined(lines))
    assert result.failed_row_count == 0 and result.row_count == 5000


def test_unterminated_quote_in_sample_is_unusable(run: Ingest) -> None:
    lines = numbered(10)
    lines[1] = b'1,"quoted",10'
    lines[4] = b'4,"oops,40'
    with pytest.raises(DatasetUnusable) as info:
        run(joined(lines))
    assert str(info.value) == f"malformed quoting at line 5: {QUOTE}; the row starts '4,\"oops,40'"


def test_misplaced_quote_in_sample_is_unusable(run: Ingest) -> None:
    lines = numbered(10)
    lines[6] = b'6,"n6"x,60'
    with pytest.raises(DatasetUnusable, match=r"^malformed quoting at line 7: "):
        run(joined(lines))


def test_quote_inside_a_field_is_text(run: Ingest) -> None:
    result = run(b'name,height\nbob,5\'11"\nann,"6\'0"""\n')
    assert [r["height"] for r in result.preview] == ["5'11\"", "6'0\""]


def test_unterminated_quote_after_sample_is_a_failed_row(run: Ingest, small_sample: None) -> None:
    lines = numbered(5000)
    lines[4000] = b'4000,"oops,1'
    lines[4003] = b'4003,"closes"here,1'  # DuckDB reads the quoted value up to this quote
    result = run(joined(lines))
    ((line, raw, reason),) = rows(result)
    assert (line, reason) == (4001, QUOTE)
    assert raw.startswith('4000,"oops,1\n4001,n4001,40010\n') and raw.endswith('"closes"here,1')
    assert result.row_count == 4996


def test_ten_megabyte_field_is_accepted(run: Ingest) -> None:
    big = b"x" * 10_000_000
    result = run(b"id,blob\n1," + big + b"\n2,y\n")
    assert result.row_count == 2 and result.failed_row_count == 0
    assert result.preview[0]["blob"] == "x" * 1000 + "…"  # preview only; the copy is whole


def test_ten_megabyte_single_line_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b"x" * 10_000_000)
    assert str(info.value) == (
        "line 1 is 10000000 bytes long; a CSV header row must be under 1 MiB "
        "(is it really a header?)"
    )


def test_too_many_columns_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable, match=r"^line 1 \(the header\) has 20001 fields"):
        run(b"c," * 20_000 + b"c\n")


def test_row_over_16_mib_in_sample_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b"id,blob\n1,x\n2," + b"x" * 17_000_000 + b"\n3,y\n")
    assert str(info.value) == ("line 3 is 17000002 bytes long; rows over 16 MiB are not supported")


def test_row_over_16_mib_past_the_first_megabyte_names_its_line(run: Ingest) -> None:
    lines = numbered(5_000)
    lines[1:1] = [b"0,padding," + b"p" * 90] * 15_000  # ~1.5 MB: the long row is in a later chunk
    lines[19_000] = b"1," + b"x" * 17_000_000  # still in the sniffer's sample
    with pytest.raises(DatasetUnusable) as info:
        run(joined(lines))
    message = "line 19001 is 17000002 bytes long; rows over 16 MiB are not supported"
    assert str(info.value) == message


def test_row_over_16_mib_after_sample_is_a_failed_row(run: Ingest, small_sample: None) -> None:
    lines = numbered(3000)
    lines[2500] = b"2500,n," + b"9" * 17_000_000
    result = run(joined(lines))
    ((line, raw, reason),) = rows(result)
    assert line == 2501
    assert reason == "row is 17000007 bytes long; the limit is 16777216 bytes"
    assert raw == "2500,n," + "9" * (65_536 - 7) + "… [truncated, 17000007 bytes]"
    assert result.row_count == 2999


def test_every_row_failing_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b"a,b,c\n1,2\n3,4\n")
    assert str(info.value) == (
        "no row could be parsed; first error at line 2: expected 3 fields, found 2"
    )


def test_csv_reader_used_for_csv_format_only(run: Ingest) -> None:
    """A CSV-looking file uploaded as NDJSON is not sniffed as CSV."""
    with pytest.raises(DatasetUnusable, match="no line could be parsed as a JSON object"):
        run(b"a,b\n1,2\n", DatasetFormat.ndjson)
