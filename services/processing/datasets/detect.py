"""What an upload really is, whatever its name says, and the copies that make it readable.

Before a text format is parsed, the first bytes of the file are looked at:

- gzip (1f 8b) is decompressed into the scratch folder, streaming, and stops with a clear
  message once the output passes `max_expanded_bytes` (a gzip bomb); what it holds is then
  looked at like any upload (so a gzipped Parquet file is read as Parquet). A file declared
  Parquet is left to the Parquet reader, whose refusal then says what the file is.
- Parquet (PAR1) is read as Parquet whatever the declared format.
- UTF-16 and UTF-32 with a byte-order mark are transcoded to UTF-8 in the scratch folder,
  streaming; line numbers stay those of the original.
- ZIP (an .xlsx workbook is one), old Office files, PDF, other compressions, images and
  databases are refused naming what they are; so is text that looks like UTF-16 without a
  byte-order mark, or a file that is mostly NUL bytes.

Also here: `mixes_newlines` and `normalize_newlines`, the copy with LF endings only that
CSV ingest falls back to when DuckDB could not read a file whose line endings are mixed,
and `not_text_hint`, the advice of the "not valid UTF-8" message.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from schemas.domain.records import DatasetFormat
from services.processing.datasets.common import CHUNK_BYTES, DatasetUnusable

HEAD_BYTES = 64 * 1024  # what the binary and UTF-16 guesses look at
EXPANSION_FACTOR = 4  # a decompressed upload may be this many times the upload limit
DEFAULT_UPLOAD_LIMIT = 5 * 1024**3  # the settings' default max_upload_bytes
MAX_EXPANDED_BYTES = EXPANSION_FACTOR * DEFAULT_UPLOAD_LIMIT

GZIP = b"\x1f\x8b"
PARQUET = b"PAR1"
_BOMS = [  # longest first: the UTF-32 LE mark starts like the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
]
_UNZIP_ADVICE = "unzip it and upload the file inside"
_DECOMPRESS_ADVICE = "decompress it (or gzip it instead: gzip is read directly) and upload that"
_MAGIC: list[tuple[bytes, str, str]] = [  # (magic, what it is, what to do)
    (b"PK\x03\x04", "a ZIP archive", _UNZIP_ADVICE),
    (b"PK\x05\x06", "an empty ZIP archive", _UNZIP_ADVICE),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old Microsoft Office file (an .xls workbook?)",
        "save the sheet as CSV (UTF-8) and upload that",
    ),
    (b"BZh", "a bzip2-compressed file", _DECOMPRESS_ADVICE),
    (b"\xfd7zXZ\x00", "an xz-compressed file", _DECOMPRESS_ADVICE),
    (b"(\xb5/\xfd", "a zstd-compressed file", _DECOMPRESS_ADVICE),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract it and upload the file inside"),
    (b"Rar!\x1a\x07", "a RAR archive", "extract it and upload the file inside"),
    (b"%PDF-", "a PDF document", "export the table as CSV and upload that"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image", "upload the data as CSV, JSON or Parquet"),
    (b"\xff\xd8\xff", "a JPEG image", "upload the data as CSV, JSON or Parquet"),
    (b"GIF8", "a GIF image", "upload the data as CSV, JSON or Parquet"),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV and upload that"),
    (b"\x7fELF", "an executable program", "upload the data as CSV, JSON or Parquet"),
]


def prepare(
    source: Path, fmt: DatasetFormat, workdir: Path, max_expanded_bytes: int, made: list[Path]
) -> tuple[Path, DatasetFormat]:
    """The file to parse and its real format; converted copies go to `workdir` and `made`.

    Raises DatasetUnusable for a file that is none of the formats, naming what it is.
    """
    if fmt is DatasetFormat.parquet:
        return source, fmt  # the Parquet reader checks the magic bytes itself
    head = read_head(source)
    if head.startswith(GZIP):
        out = workdir / f"gunzipped.{fmt}"
        made.append(out)
        gunzip(source, out, max_expanded_bytes)
        source, head = out, read_head(out)
        if not head.strip():
            raise DatasetUnusable("file is empty (the gzip file holds no data)")
        if head.startswith(GZIP):
            raise DatasetUnusable(
                "this is a gzip file inside a gzip file: decompress it once and upload that"
            )
    if head.startswith(PARQUET):
        return source, DatasetFormat.parquet
    for bom, codec, name in _BOMS:
        if head.startswith(bom):
            out = workdir / f"utf8.{fmt}"
            made.append(out)
            transcode(source, out, codec, name)
            return out, fmt
    what = binary_kind(head)
    if what is not None:
        kind, advice = what
        raise DatasetUnusable(f"this is {kind}, not {_text_name(fmt)}: {advice}")
    if (order := utf16_without_bom(head)) is not None:
        raise DatasetUnusable(
            f"this looks like UTF-16 text ({order}) without a byte-order mark: save it as "
            "UTF-8 and upload it again"
        )
    if head.count(0) * 10 > len(head):
        raise DatasetUnusable(
            f"this looks like a binary file, not {_text_name(fmt)}: "
            f"{head.count(0)} of its first {len(head)} bytes are NUL"
        )
    return source, fmt


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def _text_name(fmt: DatasetFormat) -> str:
    return {DatasetFormat.csv: "CSV text", DatasetFormat.parquet: "Parquet"}.get(fmt, "JSON text")


def binary_kind(head: bytes) -> tuple[str, str] | None:
    """(what the file is, what to do) when its first bytes are a known binary signature."""
    for magic, kind, advice in _MAGIC:
        if head.startswith(magic):
            if magic == b"BZh" and not (head[3:4].isdigit() and head[4:10] == b"1AY&SY"):
                continue  # "BZh" could start a text file; the block magic after it cannot
            if magic == b"PK\x03\x04":
                return _zip_kind(head)
            return kind, advice
    if head.startswith(GZIP):
        return "a gzip file", "decompress it and upload that"
    return None


def _zip_kind(head: bytes) -> tuple[str, str]:
    """An Office document is a ZIP archive whose first entries name its parts."""
    if b"xl/" in head or (b"[Content_Types].xml" in head and b"word/" not in head):
        return (
            "a ZIP archive (an .xlsx workbook?)",
            "open it and save the sheet as CSV (UTF-8), then upload that",
        )
    if b"word/" in head:
        return "a ZIP archive (a .docx document?)", "upload the data as CSV, JSON or Parquet"
    return "a ZIP archive", _UNZIP_ADVICE


def utf16_without_bom(head: bytes) -> str | None:
    """ "little-endian"/"big-endian" when mostly ASCII text looks encoded as UTF-16."""
    even, odd = head[0::2], head[1::2]
    if len(odd) < 2:
        return None
    if odd.count(0) * 4 >= len(odd) * 3 and even.count(0) * 10 <= len(even):
        return "little-endian"
    if even.count(0) * 4 >= len(even) * 3 and odd.count(0) * 10 <= len(odd):
        return "big-endian"
    return None


def not_text_hint(head: bytes) -> str:
    """The advice of the "not valid UTF-8" message: re-encode text, or what the bytes are."""
    what = binary_kind(head)
    if what is not None:
        return f"this is {what[0]}: {what[1]}"
    if (order := utf16_without_bom(head)) is not None:
        return (
            f"this looks like UTF-16 text ({order}) without a byte-order mark: save it as UTF-8 "
            "and upload it again"
        )
    controls = sum(head.count(b) for b in (*range(9), *range(14, 32), 127))
    if controls * 50 > len(head):  # over 2% control bytes: not text in any 8-bit encoding
        return "this looks like a binary file, not text"
    return (
        "re-encode the file as UTF-8 (for example from Latin-1 or Windows-1252) and upload it again"
    )


def gunzip(source: Path, out: Path, limit: int) -> None:
    """Decompress a gzip file (any number of members) to `out`, at most `limit` bytes."""
    total = 0
    try:
        with gzip.open(source, "rb") as f, out.open("wb") as w:
            while chunk := f.read1(CHUNK_BYTES):  # read() would drop what precedes an error
                total += len(chunk)
                if total > limit:
                    raise DatasetUnusable(
                        f"this is a gzip file that decompresses to more than {limit} bytes (the "
                        f"limit is {EXPANSION_FACTOR} times the upload limit): upload the data "
                        "in smaller files"
                    )
                w.write(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        out.unlink(missing_ok=True)
        raise DatasetUnusable(
            f"this is a gzip file, but it cannot be decompressed after {total} bytes: {exc} "
            "(is it truncated?)"
        ) from None
    except DatasetUnusable:
        out.unlink(missing_ok=True)
        raise


def transcode(source: Path, out: Path, codec: str, name: str) -> None:
    """Write a UTF-16/32 file (with its byte-order mark) as UTF-8, without the mark."""
    decoder = codecs.getincrementaldecoder(codec)("strict")
    offset = 0
    with source.open("rb") as f, out.open("wb") as w:
        while True:
            chunk = f.read(CHUNK_BYTES)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - len(decoder.getstate()[0]) + exc.start
                raise DatasetUnusable(
                    f"this is {name} text (it starts with a {name} byte-order mark), but the "
                    f"bytes at offset {at} are not valid {name} ({exc.reason}): save it as "
                    "UTF-8 and upload it again"
                ) from None
            w.write(text.encode("utf-8"))
            if not chunk:
                break
            offset += len(chunk)


def mixes_newlines(path: Path) -> bool:
    """Whether two or more of CRLF, lone CR and lone LF end lines in the file (one read,
    stopping at the first mix; only run once DuckDB could not read a file)."""
    counts = [0, 0, 0]  # CRLF, lone CR, lone LF
    for data in _newline_blocks(path):
        pairs = data.count(b"\r\n")
        counts[0] += pairs
        counts[1] += data.count(b"\r") - pairs
        counts[2] += data.count(b"\n") - pairs
        if sum(1 for n in counts if n) > 1:
            return True
    return False


def normalize_newlines(source: Path, out: Path) -> None:
    """Copy `source` to `out` with every CRLF, CR and LF as LF (a line break each)."""
    with out.open("wb") as w:
        for data in _newline_blocks(source):
            w.write(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))


def _newline_blocks(path: Path) -> Iterator[bytes]:
    """The file in chunks that never split a CRLF."""
    carry = b""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            data, carry = carry + chunk, b""
            if data.endswith(b"\r"):  # its LF may start the next chunk
                data, carry = data[:-1], b"\r"
            yield data
    if carry:
        yield carry
