"""What a file really is: gzip, Parquet under another name, UTF-16/32, archives and binaries."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets import detect
from services.processing.datasets.ingest import DatasetUnusable, ingest
from tests.unit.test_ingest import Ingest, assert_no_row_lost, failed_rows, ingester

CSV_TEXT = b"id,name\n1,x\n2\n3,z\n"  # line 3 is a failed row


@pytest.fixture
def run(tmp_path: Path) -> Ingest:
    return ingester(tmp_path)


def test_gzip_csv_is_decompressed(run: Ingest, tmp_path: Path) -> None:
    result = run(gzip.compress(CSV_TEXT))
    assert failed_rows(result) == [(3, "2", "expected 2 fields, found 1")]
    assert_no_row_lost(result, 3)
    assert [r["name"] for r in result.preview] == ["x", "z"]
    assert not (tmp_path / "work" / "gunzipped.csv").exists()  # removed once read


def test_gzip_with_several_members(run: Ingest) -> None:
    data = gzip.compress(b"id,name\n1,x\n") + gzip.compress(b"2,y\n")
    assert run(data).row_count == 2


def test_gzip_ndjson(run: Ingest) -> None:
    assert run(gzip.compress(b'{"a": 1}\n{"a": 2}\n'), DatasetFormat.ndjson).row_count == 2


def test_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    source = tmp_path / "bomb.csv"
    source.write_bytes(gzip.compress(b"a\n" + b"0\n" * 5_000_000))  # 10 MB from ~10 KB
    with pytest.raises(DatasetUnusable) as info:
        ingest(
            source,
            DatasetFormat.csv,
            tmp_path / "c.parquet",
            tmp_path / "w",
            max_expanded_bytes=2**20,
        )
    assert str(info.value) == (
        "this is a gzip file that decompresses to more than 1048576 bytes (the limit is 4 times "
        "the upload limit): upload the data in smaller files"
    )
    assert not list((tmp_path / "w").glob("gunzipped*"))


def test_truncated_gzip_is_unusable(run: Ingest) -> None:
    data = gzip.compress(b"id,name\n" + b"".join(b"%d,n%d\n" % (i, i) for i in range(5000)))
    with pytest.raises(DatasetUnusable, match=r"^this is a gzip file, but it cannot be "):
        run(data[: len(data) // 2])


def test_parquet_named_csv_is_read_as_parquet(run: Ingest) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int16()), "when": ["a", None]}), buffer)
    result = run(buffer.getvalue())
    assert [(c.name, c.type, c.null_count) for c in result.columns] == [
        ("id", "integer", 0),
        ("when", "string", 1),
    ]
    assert result.row_count == 2


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_with_bom_are_transcoded(run: Ingest, encoding: str) -> None:
    content = "id,name\n1,é\n2\n3,日本\n"
    data = content.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    result = run(data)
    assert [r["name"] for r in result.preview] == ["é", "日本"]
    assert failed_rows(result) == [(3, "2", "expected 2 fields, found 1")]


def test_utf16_without_bom_is_named(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run("id,name\n1,x\n".encode("utf-16-be"))
    assert str(info.value) == (
        "this looks like UTF-16 text (big-endian) without a byte-order mark: save it as UTF-8 "
        "and upload it again"
    )


def xlsx_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


def test_xlsx_is_named(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(xlsx_bytes())
    assert str(info.value) == (
        "this is a ZIP archive (an .xlsx workbook?), not CSV text: open it and save the sheet "
        "as CSV (UTF-8), then upload that"
    )


def test_declared_parquet_that_is_not_names_what_it_is(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(xlsx_bytes(), DatasetFormat.parquet)
    assert str(info.value) == (
        "not a Parquet file: the PAR1 magic bytes are missing at the start of the file; this is "
        "a ZIP archive (an .xlsx workbook?)"
    )


def test_binary_file_gets_no_latin1_advice(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b"\x01\x02\x03\xff\xfe\x10" * 100)
    assert str(info.value) == (
        "file is not valid UTF-8: invalid byte 0xff at line 1, column 4 (byte offset 3); this "
        "looks like a binary file, not text"
    )


def test_newline_mix_and_normalisation(tmp_path: Path) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_bytes(b"a\r\nb\r\nc\r\n")
    assert not detect.mixes_newlines(source)
    # a CRLF split across two reads is one line break
    source.write_bytes(b"a\r\n" + b"x" * (detect.CHUNK_BYTES - 4) + b"\r\nb\r\nc\r\n")
    assert not detect.mixes_newlines(source)
    source.write_bytes(b"a\r\n" + b"x" * (detect.CHUNK_BYTES - 4) + b"\r\nb\nc\rd\r")
    assert detect.mixes_newlines(source)
    detect.normalize_newlines(source, out)
    assert out.read_bytes() == b"a\n" + b"x" * (detect.CHUNK_BYTES - 4) + b"\nb\nc\nd\n"
