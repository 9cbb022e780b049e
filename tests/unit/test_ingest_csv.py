"""CSV ingest: failed rows with physical line numbers, sniffing, quoting, long lines."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets import csv_reader
from services.processing.datasets.ingest import DatasetUnusable, IngestResult
from tests.unit.test_ingest import Ingest, assert_no_row_lost, failed_rows, ingester

QUOTE = csv_reader.QUOTE_REASON
UNCLOSED = csv_reader.UNCLOSED_REASON


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
    # Only exact repeats are renamed: "A" differs from "a" (DuckDB alone reads it as A_2).
    assert names == ["a", "a_1", "column2", "A", "column4", "b"]
    assert len(set(names)) == len(names) and all(n.strip() for n in names)
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
    """DuckDB reads the quoted value up to the quote of line 4004 and rejects lines 4001-4004 as
    one record; the reader cuts that record after line 4001 and reads on from line 4002."""
    lines = numbered(5000)
    lines[4000] = b'4000,"oops,1'
    lines[4003] = b'4003,"closes"here,1'
    result = run(joined(lines))
    assert rows(result) == [
        (4001, '4000,"oops,1', UNCLOSED.format(line=4001)),
        (4004, '4003,"closes"here,1', QUOTE),
    ]
    assert result.row_count == 4998


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


def copy_ids(tmp_path: Path) -> list[int]:
    ids: list[int] = pq.read_table(tmp_path / "copy.parquet", columns=["id"])["id"].to_pylist()
    return ids


def test_duckdb_reads_an_unterminated_quote_up_to_the_next_quote(tmp_path: Path) -> None:
    """Pins what the segment cuts rely on: the rest of the file up to the next quote is one
    rejected record, and byte_position is where its quoted field starts."""
    source = tmp_path / "q.csv"
    data = b'a,b\n1,x\n2,"oops\n3,y\n4,"z"w\n5,v\n'
    source.write_bytes(data)
    con = duckdb.connect()
    options = "header=true, auto_detect=false, columns={'a': 'BIGINT', 'b': 'VARCHAR'}"
    kept = con.sql(f"SELECT a FROM read_csv('{source}', {options}, store_rejects=true)").fetchall()
    assert kept == [(1,), (5,)]  # rows 3 and 4 are gone into the rejected record
    rejected = con.execute(
        "SELECT line_byte_position, byte_position, error_type, csv_line FROM reject_errors"
    ).fetchall()
    assert rejected == [(9, 11, "UNQUOTED VALUE", '2,"oops\n3,y\n4,"z"w')]
    assert data[10:11] == b'"'  # byte_position: 1-based offset of the opening quote


def test_unterminated_quote_costs_only_its_line(run: Ingest, tmp_path: Path) -> None:
    """The issue's case: a quote that never closes at row 25,000 of 30,000."""
    lines = numbered(30_000)
    lines[25_000] = b'25000,"oops,250000'
    result = run(joined(lines))
    assert rows(result) == [(25_001, '25000,"oops,250000', UNCLOSED.format(line=25_001))]
    assert_no_row_lost(result, 30_000)
    assert copy_ids(tmp_path) == [*range(1, 25_000), *range(25_001, 30_001)]  # in file order
    assert not list((tmp_path / "work").glob("segments*"))


def test_unterminated_quotes_past_the_line_size_limit(run: Ingest, small_sample: None) -> None:
    """Over 2 MB after the quote DuckDB also reports LINE SIZE OVER MAXIMUM for the record."""
    lines = numbered(200_000)
    lines[3_000] = b'3000,"oops,1'
    lines[180_000] = b'180000,"x"y,1'  # where DuckDB's swallowed record ends
    lines[190_000] = b'190000,"again,1'  # never closes: runs to the end of the file
    result = run(joined(lines))
    assert rows(result) == [
        (3_001, '3000,"oops,1', UNCLOSED.format(line=3_001)),
        (180_001, '180000,"x"y,1', QUOTE),
        (190_001, '190000,"again,1', UNCLOSED.format(line=190_001)),
    ]
    assert_no_row_lost(result, 200_000)


def test_quote_opening_on_a_later_line_of_a_record(run: Ingest, small_sample: None) -> None:
    """A record whose first field legitimately spans two lines, then a quote that never closes:
    the failed row starts with the record and names the line the broken quote opens on."""
    lines = numbered(3_000)
    lines[2_500:2_501] = [b'2500,"two', b'lines","oops']
    result = run(joined(lines))
    assert rows(result) == [(2_501, '2500,"two\nlines","oops', UNCLOSED.format(line=2_502))]
    assert_no_row_lost(result, 3_000)


def test_too_many_unterminated_quotes_is_unusable(
    run: Ingest, small_sample: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_reader, "MAX_QUOTE_CUTS", 2)
    lines = numbered(3_000)
    for i in (2_100, 2_200, 2_300):
        lines[i] = b'%d,"open,1' % i
    with pytest.raises(DatasetUnusable) as info:
        run(joined(lines))
    assert str(info.value) == (
        "more than 2 quoted fields never close (the first at line 2101): is '\"' really this "
        "file's quote character?"
    )


MIXED_ENDINGS = {
    "crlf header, lf rows": [b"\r\n"] + [b"\n"] * 20,
    "lf header, crlf rows": [b"\n"] + [b"\r\n"] * 20,
    "crlf and lf rows": [b"\r\n", b"\n"],
    "cr and lf rows": [b"\r", b"\n"],
    "crlf, cr and lf rows": [b"\r\n", b"\r", b"\n"],
}


@pytest.mark.parametrize("endings", MIXED_ENDINGS.values(), ids=MIXED_ENDINGS.keys())
def test_mixed_line_endings_load_clean(run: Ingest, tmp_path: Path, endings: list[bytes]) -> None:
    lines = [b"id,score,name"] + [b"%d,%d,n%d" % (i, i, i) for i in range(1, 21)]
    lines[7] = b"7,70"  # still a failed row, on its physical line
    data = b"".join(line + endings[i % len(endings)] for i, line in enumerate(lines))
    result = run(data)
    assert rows(result) == [(8, "7,70", "expected 3 fields, found 2")]
    assert_no_row_lost(result, 20)
    names = pq.read_table(tmp_path / "copy.parquet").column("name").to_pylist()
    assert names == [f"n{i}" for i in range(1, 21) if i != 7]  # no stray "\r"


def test_one_lf_late_in_a_crlf_file(run: Ingest, small_sample: None) -> None:
    lines = numbered(5_000)
    data = b"".join(line + (b"\n" if i == 4_500 else b"\r\n") for i, line in enumerate(lines))
    result = run(data)
    assert_no_row_lost(result, 5_000)
    assert result.failed_row_count == 0


def test_line_breaks_inside_quotes_of_a_one_ending_file_are_kept(run: Ingest) -> None:
    """Only a file DuckDB cannot read is normalised: a CR or CRLF inside a quoted field of an
    LF file (or an LF inside one of a CRLF file, as Excel writes them) is data."""
    result = run(b'id,note\n1,"a\r\nb"\n2,"c\rd"\n')
    assert [r["note"] for r in result.preview] == ["a\r\nb", "c\rd"]
    result = run(b'id,note\r\n1,"a\nb"\r\n2,x\r\n')
    assert [r["note"] for r in result.preview] == ["a\nb", "x"]


def test_duckdb_on_mixed_line_endings(tmp_path: Path) -> None:
    """Pins why mixed endings are read from an LF copy rather than with strict_mode=false:
    DuckDB fails on them, and strict_mode=false, which reads them, also reads a row with
    too many fields, dropping the extra ones without a reject."""
    source = tmp_path / "m.csv"
    source.write_bytes(b"a,b\r\n1,x\n2,y\r\n")
    con = duckdb.connect()
    with pytest.raises(duckdb.InvalidInputException, match="Error when sniffing file"):
        con.sql(f"SELECT * FROM read_csv('{source}')").fetchall()
    assert con.sql(f"SELECT * FROM read_csv('{source}', strict_mode=false)").fetchall() == [
        (1, "x"),
        (2, "y"),
    ]
    source.write_bytes(b"a,b\n1,x\n2,y,extra\n3,z\n")
    lenient = f"read_csv('{source}', strict_mode=false, store_rejects=true)"
    assert con.sql(f"SELECT * FROM {lenient}").fetchall() == [(1, "x"), (2, "y"), (3, "z")]
    assert con.execute("SELECT count(*) FROM reject_errors").fetchone() == (0,)


def test_many_unterminated_quotes_keep_the_rows_in_file_order(run: Ingest, tmp_path: Path) -> None:
    """Each broken quote is a segment of its own; their rows come out in file order, and
    the second read finds the broken quotes that the first one had swallowed."""
    lines = numbered(60_000)
    broken = range(25_000, 60_000, 1_000)
    for i in broken:
        lines[i] = b'%d,"open,1' % i
    result = run(joined(lines))
    assert [(line, reason) for line, _, reason in rows(result)] == [
        (i + 1, UNCLOSED.format(line=i + 1)) for i in broken
    ]
    assert_no_row_lost(result, 60_000)
    assert copy_ids(tmp_path) == [i for i in range(1, 60_001) if i not in broken]


def test_duckdb_loses_rejects_of_a_file_list_ending_in_open_quotes(tmp_path: Path) -> None:
    """Pins why segments are read by a UNION ALL of read_csv calls rather than read_csv of a
    list: with five files that end inside a quote, the list's rejects are all lost."""
    files = []
    for k in range(5):
        files.append(tmp_path / f"{k}.csv")
        files[-1].write_bytes(b'a,b\n1,x\n2,"open\n')
    options = "header=true, auto_detect=false, columns={'a': 'BIGINT', 'b': 'VARCHAR'}"
    con = duckdb.connect()
    listed = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    con.sql(f"SELECT * FROM read_csv({listed}, {options}, store_rejects=true)").fetchall()
    assert con.execute("SELECT count(*) FROM reject_errors").fetchall() == [(0,)]
    union = " UNION ALL ".join(
        f"SELECT * FROM read_csv('{f}', {options}, store_rejects=true, rejects_table='e', "
        "rejects_scan='s')"
        for f in files
    )
    assert len(con.sql(union).fetchall()) == 5
    assert con.execute("SELECT count(*) FROM e").fetchall() == [(5,)]


def test_quote_reject_among_more_than_a_batch_of_rejects(run: Ingest, small_sample: None) -> None:
    """Failed rows are read in batches of 10,000: nothing queried in between may end them."""
    lines = numbered(30_000)
    lines[3_000] = b'3000,"x"y,1'
    for i in range(5_000, 17_000):
        lines[i] = b"%d" % i
    result = run(joined(lines))
    assert result.failed_row_count == 12_001
    assert rows(result)[0] == (3_001, '3000,"x"y,1', QUOTE)
    assert_no_row_lost(result, 30_000)
