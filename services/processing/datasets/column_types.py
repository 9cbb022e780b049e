"""Typing rules on top of DuckDB's inference, applied to the staged rows before the copy is
written (README, "How columns are typed"):

- Null tokens (`null_values`; pandas' default list unless the upload gives one) are null where
  a number, date or boolean is read. The sniffer types each column once with the tokens set
  aside and once without: a column that is text only because of tokens is read as text and
  turned into its type here, the tokens becoming NULL. In a text column (one holding a value
  that fits no other type) they stay text: there they may be real values ("NA" for Namibia,
  the word "None"). Empty fields are null in every column.
- A number with a leading "+" ("+3", "+inf") is a number: DuckDB's sniffer reads such a column
  as text, so a text column whose every value is a number (null tokens aside) becomes BIGINT
  (UBIGINT past int64, text past uint64) or DOUBLE. A leading zero ("007", "0042") keeps a
  column text: identifiers, as DuckDB's sniffer decides too.
- Integers past int64 (DuckDB's HUGEINT, which its Parquet writer would round to DOUBLE) are
  UBIGINT when every value fits uint64 (as pandas reads them), otherwise text: exact digits.
- A column with no value at all (empty fields and null tokens only) is DOUBLE, all null, as
  pandas reads it: numeric steps give nulls on it rather than "not numeric". A dataset without
  rows keeps text columns.
- DuckDB reads "epoch", "infinity", "-infinity", "inf" and "-inf" (any case) as dates,
  timestamps and times (1970-01-01, or an infinite date no later step can convert). Such a word
  is not a date: a date, timestamp or time column that holds one is DOUBLE when every value is
  a number ("inf", "-inf", "nan": a column of special floats), else text. The staged values
  show which columns to look at (an infinite value, or the epoch itself), and the source text
  decides (the reader reads such a column again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from services.processing.datasets.common import STAGE, Column, ident, lit, staged_value

# pandas.read_csv's default na_values (pandas._libs.parsers.STR_NA_VALUES), and "".
DEFAULT_NULL_VALUES: tuple[str, ...] = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)
SAMPLE_ROWS = 20480  # rows of a text column looked at before all of it is

# A number as pandas reads one: sign, digits, fraction, exponent, or a special float word.
NUMBER = r"[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|(?i:inf|infinity|nan))"
INTEGER = r"[+-]?\d+"
LEADING_ZERO = r"^[+-]?0\d"
# Words DuckDB takes for a date, timestamp or time (trimmed, any case).
TEMPORAL_WORDS = ("epoch", "infinity", "-infinity", "inf", "-inf")
TEMPORAL = ("DATE", "TIME", "TIMESTAMP")  # type name prefixes
UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
WIDE_INTEGERS = ("HUGEINT", "UHUGEINT")  # integer types DuckDB writes to Parquet as DOUBLE


def null_values(given: Sequence[str] | None) -> list[str]:
    """The null tokens of an upload: `given` (None: the default list), always with ""."""
    values = DEFAULT_NULL_VALUES if given is None else given
    return list(dict.fromkeys(["", *values]))


def nullstr_option(values: Sequence[str]) -> str:
    """The read_csv option for the null tokens."""
    return "nullstr=[" + ", ".join(lit(v) for v in values) + "]"


def parse_as(kind: str, date_format: str | None, timestamp_format: str | None) -> str | None:
    """How text reads as `kind` the way the CSV reader read it ({} is the value; None: a cast):
    dates and timestamps in the format the sniffer found."""
    upper = kind.upper()
    fmt = date_format if upper == "DATE" else timestamp_format
    if not upper.startswith(("DATE", "TIMESTAMP")) or not fmt:
        return None
    return f"strptime({{}}, {lit(fmt).replace('{', '{{').replace('}', '}}')})::{kind}"


def is_temporal(kind: str) -> bool:
    """Whether a DuckDB type is a date, time or timestamp."""
    return kind.upper().startswith(TEMPORAL)


def _not_token(expr: str, tokens: Sequence[str]) -> str:
    listed = [t for t in tokens if t]
    if not listed:
        return f"{expr} IS NOT NULL"
    return f"{expr} IS NOT NULL AND {expr} NOT IN ({', '.join(lit(t) for t in listed)})"


def suspect_temporal(
    con: duckdb.DuckDBPyConnection,
    columns: list[Column],
    relation: str = STAGE,
    value: Callable[[Column], str] = staged_value,
    parquet: Path | None = None,
) -> list[Column]:
    """The date, timestamp and time columns holding an infinite value or the epoch itself:
    values a special word may have been read as (in `relation`, `value` giving a column).
    With `parquet` (the relation is that file, its columns Column.stored), the columns whose
    row-group statistics rule both out are not scanned."""
    watched = [c for c in columns if is_temporal(c.target or c.kind) and not c.dropped]
    if parquet is not None:
        watched = [c for c in watched if _may_hold_epoch(con, parquet, c)]
    if not watched:
        return []
    checks = []
    for c in watched:
        kind = c.target or c.kind
        expr = value(c)
        test = f"{expr} = CAST('epoch' AS {kind})"
        if not kind.upper().startswith("TIME") or kind.upper().startswith("TIMESTAMP"):
            test += f" OR isinf({expr})"
        checks.append(f"count(*) FILTER (WHERE {test})")
    found = con.execute(f"SELECT {', '.join(checks)} FROM {relation}").fetchone()
    assert found is not None  # an aggregate without GROUP BY returns one row
    return [c for c, n in zip(watched, found, strict=True) if n]


def text_checks(
    con: duckdb.DuckDBPyConnection,
    columns: list[Column],
    tokens: Sequence[str],
    relation: str,
    value: Callable[[Column], str],
) -> tuple[list[Column], list[Column]]:
    """Of the text columns of `relation`: those whose first SAMPLE_ROWS values are all numbers
    (text of numbers, to type as numbers), and those with no value at all (to type DOUBLE)."""
    text = [c for c in columns if c.kind == "VARCHAR" and c.target is None and not c.dropped]
    if not text:
        return [], []
    checks = []
    for c in text:
        expr = value(c)
        number = (
            f"regexp_full_match({expr}, {lit(NUMBER)}) "
            f"AND NOT regexp_matches({expr}, {lit(LEADING_ZERO)})"
        )
        filled = _not_token(expr, tokens)
        checks.append(
            f"bool_and({number}) FILTER (WHERE {filled}), count(*) FILTER (WHERE {filled})"
        )
    first = f"(SELECT * FROM {relation} LIMIT {SAMPLE_ROWS})"
    found = con.execute(f"SELECT {', '.join(checks)} FROM {first}").fetchone()
    assert found is not None
    numbers = [c for i, c in enumerate(text) if found[2 * i]]
    blank = [c for i, c in enumerate(text) if not found[2 * i + 1]]
    if not blank:
        return numbers, []
    counts = ", ".join(f"count(*) FILTER (WHERE {_not_token(value(c), tokens)})" for c in blank)
    found = con.execute(f"SELECT {counts} FROM {relation}").fetchone()
    assert found is not None
    return numbers, [c for c, n in zip(blank, found, strict=True) if n == 0]


def _may_hold_epoch(con: duckdb.DuckDBPyConnection, parquet: Path, column: Column) -> bool:
    """Whether a column's row-group statistics leave room for an infinite value or the epoch
    (a row group without statistics leaves room for anything)."""
    kind = column.target or column.kind
    low = f"TRY_CAST(stats_min_value AS {kind})"
    high = f"TRY_CAST(stats_max_value AS {kind})"
    epoch = f"CAST('epoch' AS {kind})"
    test = f"{low} IS NULL OR {high} IS NULL OR ({low} <= {epoch} AND {high} >= {epoch})"
    if not kind.upper().startswith("TIME") or kind.upper().startswith("TIMESTAMP"):
        test += f" OR isinf({low}) OR isinf({high})"
    found = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {test}) FROM parquet_metadata(?) "
        "WHERE path_in_schema = ?",
        [str(parquet), column.stored],
    ).fetchone()
    return found is None or found[0] == 0 or found[1] > 0


def temporal_overrides(
    con: duckdb.DuckDBPyConnection,
    suspects: list[Column],
    as_text: Callable[[list[Column]], str],
    tokens: Sequence[str],
) -> dict[str, str]:
    """Source name -> the type to read it as, for the suspect columns whose text holds a
    special word: DOUBLE when every value is a number, else VARCHAR. `as_text` gives a
    relation of the source with the given columns read as text."""
    if not suspects:
        return {}
    checks = []
    for c in suspects:
        expr = ident(c.source)
        word = f"lower(trim({expr})) IN ({', '.join(lit(w) for w in TEMPORAL_WORDS)})"
        value = _not_token(expr, tokens)
        number = f"regexp_full_match(trim({expr}), {lit(NUMBER)})"
        checks.append(f"bool_or({word}), bool_and({number}) FILTER (WHERE {value})")
    found = con.execute(f"SELECT {', '.join(checks)} FROM {as_text(suspects)}").fetchone()
    assert found is not None
    overrides = {}
    for i, c in enumerate(suspects):
        special, numbers = found[2 * i], found[2 * i + 1]
        if special:
            overrides[c.source] = "DOUBLE" if numbers else "VARCHAR"
    return overrides


def refine(
    con: duckdb.DuckDBPyConnection,
    columns: list[Column],
    tokens: Sequence[str],
    rows: int,
    numbers_in_text: bool = True,
) -> None:
    """Set each column's type in the copy by the rules above (Column.target), from the staged
    rows: wide integers, text that is numbers, dates or booleans, columns without a value.
    `numbers_in_text` False leaves text of numbers text (a JSON string is one on purpose)."""
    if rows == 0 or not columns:
        return
    aggregates: list[str] = []
    for c in columns:
        expr = staged_value(c)
        if c.kind == "VARCHAR":
            aggregates.append(f"count(*) FILTER (WHERE {_not_token(expr, tokens)})")
        else:
            aggregates.append(f"count({expr})")
        if c.kind.upper() in WIDE_INTEGERS:
            aggregates.append(f"min({expr}) >= {INT64_MIN} AND max({expr}) <= {INT64_MAX}")
            aggregates.append(f"min({expr}) >= 0 AND max({expr}) <= {UINT64_MAX}")
    found = con.execute(f"SELECT {', '.join(aggregates)} FROM {STAGE}").fetchone()
    assert found is not None
    values = iter(found)
    text: list[Column] = []
    for c in columns:
        count = next(values)
        if c.kind.upper() in WIDE_INTEGERS:
            signed, unsigned = next(values), next(values)
            c.target = "BIGINT" if signed else "UBIGINT" if unsigned else "VARCHAR"
        if c.dropped:
            continue
        if count == 0:
            c.target = "DOUBLE"  # every field empty or a null token: numeric-compatible nulls
            c.null_tokens = tuple(tokens)
        elif c.kind == "VARCHAR":
            text.append(c)
    typed = _typed_text(con, [c for c in text if c.intended], tokens)
    rest = [c for c in text if c not in typed] if numbers_in_text else []
    numbers = _numbers_read_as_text(con, rest, tokens)
    for c, (target, parse) in {**typed, **numbers}.items():
        c.target, c.parse = target, parse
        c.null_tokens = tuple(tokens)


def _typed_text(
    con: duckdb.DuckDBPyConnection, text: list[Column], tokens: Sequence[str]
) -> dict[Column, tuple[str, str | None]]:
    """The text columns that the sniffer typed otherwise with the null tokens set aside, whose
    every value (tokens aside) reads as that type: (type, how). A date column holding a word
    DuckDB would take for a date follows the rule for those (DOUBLE or text)."""
    if not text:
        return {}
    checks = []
    for c in text:
        expr = staged_value(c)
        value = _not_token(expr, tokens)
        parse = c.intended_parse or f"CAST({{}} AS {c.intended})"
        parsed = f"TRY({parse.format(expr)})"
        word = f"lower(trim({expr})) IN ({', '.join(lit(w) for w in TEMPORAL_WORDS)})"
        number = f"regexp_full_match(trim({expr}), {lit(NUMBER)})"
        checks.append(
            f"count(*) FILTER (WHERE {value} AND {parsed} IS NULL), "
            f"bool_or({word}) FILTER (WHERE {value}), bool_and({number}) FILTER (WHERE {value})"
        )
    found = con.execute(f"SELECT {', '.join(checks)} FROM {STAGE}").fetchone()
    assert found is not None
    targets: dict[Column, tuple[str, str | None]] = {}
    for i, c in enumerate(text):
        unfit, special, numbers = found[3 * i : 3 * i + 3]
        assert c.intended is not None
        if is_temporal(c.intended) and special:
            if numbers:
                targets[c] = ("DOUBLE", None)
        elif unfit == 0:
            targets[c] = (c.intended, c.intended_parse)
    return targets


def _numbers_read_as_text(
    con: duckdb.DuckDBPyConnection, text: list[Column], tokens: Sequence[str]
) -> dict[Column, tuple[str, str | None]]:
    """The text columns whose every value is a number, with the type to store them as: their
    first SAMPLE_ROWS rows first (any other value settles it), then all of them."""
    if not text:
        return {}

    def looks_numeric(c: Column) -> str:
        expr = staged_value(c)
        number = (
            f"regexp_full_match({expr}, {lit(NUMBER)}) "
            f"AND NOT regexp_matches({expr}, {lit(LEADING_ZERO)})"
        )
        return f"bool_and({number}) FILTER (WHERE {_not_token(expr, tokens)})"

    sample = ", ".join(looks_numeric(c) for c in text)
    found = con.execute(f"SELECT {sample} FROM {STAGE} WHERE rowid < {SAMPLE_ROWS}").fetchone()
    assert found is not None
    candidates = [c for c, numeric in zip(text, found, strict=True) if numeric]
    if not candidates:
        return {}
    checks = []
    for c in candidates:
        expr = staged_value(c)
        value = _not_token(expr, tokens)
        wide = f"TRY_CAST({expr} AS HUGEINT)"
        checks.append(
            f"{looks_numeric(c)}, "
            f"bool_and(regexp_full_match({expr}, {lit(INTEGER)})) FILTER (WHERE {value}), "
            f"min({wide}) FILTER (WHERE {value}), max({wide}) FILTER (WHERE {value}), "
            f"count(*) FILTER (WHERE {value} AND {wide} IS NULL)"
        )
    found = con.execute(f"SELECT {', '.join(checks)} FROM {STAGE}").fetchone()
    assert found is not None
    targets: dict[Column, tuple[str, str | None]] = {}
    for i, c in enumerate(candidates):
        numeric, integers, low, high, unfit = found[5 * i : 5 * i + 5]
        if not numeric:
            continue
        if not integers:
            targets[c] = ("DOUBLE", None)
        elif unfit == 0 and low >= INT64_MIN and high <= INT64_MAX:
            targets[c] = ("BIGINT", None)
        elif unfit == 0 and low >= 0 and high <= UINT64_MAX:
            targets[c] = ("UBIGINT", None)
    return targets
