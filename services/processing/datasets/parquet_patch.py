"""Add columns to a Parquet file, or replace flat ones, without re-encoding the others.

A Parquet file is its column chunks followed by a footer (Thrift compact protocol) that says
where each chunk is. Columns written to a second file with the same row groups can therefore
join the first: their chunks are appended after the first file's, and its footer is written
again listing them. The first file's bytes up to its footer stay as they are.

This is how the typed copy gets its line numbers: DuckDB can number rows in file order only by
reading them one thread at a time (a window function) or by holding all of them first, both of
which cost a large CSV's conversion half again its time, while pyarrow writes a row group's
line numbers (DELTA_BINARY_PACKED: a few bytes per group) in a millisecond. A column that a
check after the conversion retypes (a text column with no value becomes DOUBLE) is swapped the
same way. The result is read back before it replaces the copy.

The codec below reads any Thrift compact struct and writes it back byte for byte; only the
fields named in `merge` are changed (parquet.thrift: FileMetaData, SchemaElement, RowGroup,
ColumnChunk, ColumnMetaData, ColumnOrder).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PAR1"

# Compact protocol type codes.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(
    13
)

# FileMetaData
_F_SCHEMA, _F_ROW_GROUPS, _F_KEY_VALUES, _F_COLUMN_ORDERS = 2, 4, 5, 7
# SchemaElement
_S_NAME, _S_CHILDREN = 4, 5
# RowGroup
_G_COLUMNS, _G_BYTES, _G_ROWS, _G_COMPRESSED = 1, 2, 3, 6
# ColumnChunk and its ColumnMetaData
_C_FILE_OFFSET, _C_META, _C_OFFSET_INDEX, _C_COLUMN_INDEX = 2, 3, 4, 6
_M_UNCOMPRESSED, _M_COMPRESSED, _M_DATA_PAGE, _M_INDEX_PAGE, _M_DICTIONARY, _M_BLOOM = (
    6,
    7,
    9,
    10,
    11,
    14,
)
# KeyValue
_K_KEY, _K_VALUE = 1, 2


class PatchError(Exception):
    """The files cannot be joined (another layout than this module handles)."""


@dataclass
class Field:
    """One field of a Thrift struct: its id, compact type and value (a struct is a list of
    Field, a list or set is (element type, [values]), a map (key type, value type, [pairs]))."""

    id: int
    type: int
    value: Any


Struct = list[Field]


@dataclass
class Raw:
    """A struct kept as its bytes: decoded only if needed (a row group's column chunks, which
    are most of a footer and which joining leaves as they are)."""

    data: bytes

    def decoded(self) -> Struct:
        return decode(self.data)


# Lists of structs kept Raw, by field path: FileMetaData.row_groups[*].columns.
_RAW_LISTS: set[tuple[int, ...]] = {(_F_ROW_GROUPS, _G_COLUMNS)}


class _Reader:
    def __init__(self, data: bytes, raw: set[tuple[int, ...]] | None = None) -> None:
        self.data = data
        self.pos = 0
        self.raw = raw or set()

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int) -> None:
        """Move past a value without building it."""
        if kind in (_TRUE, _FALSE, _BYTE):
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            while self.data[self.pos] & 0x80:
                self.pos += 1
            self.pos += 1
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _BINARY:
            size = self.varint()
            self.pos += size
        elif kind in (_LIST, _SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            for _ in range(size):
                self.skip(element)
        elif kind == _MAP:
            size = self.varint()
            if size:
                head = self.byte()
                for _ in range(size):
                    self.skip(head >> 4)
                    self.skip(head & 0x0F)
        elif kind == _STRUCT:
            while True:
                head = self.byte()
                if head & 0x0F == _STOP:
                    return
                if not head >> 4:
                    self.zigzag()
                if head & 0x0F not in (_TRUE, _FALSE):
                    self.skip(head & 0x0F)
        else:
            raise PatchError(f"unknown Thrift compact type {kind}")

    def value(self, kind: int, path: tuple[int, ...] = ()) -> Any:
        if kind in (_TRUE, _FALSE):  # a bool inside a container: one byte
            return self.byte() == _TRUE
        if kind == _BYTE:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            self.pos += 8
            return struct.unpack("<d", self.data[self.pos - 8 : self.pos])[0]
        if kind == _BINARY:
            size = self.varint()
            self.pos += size
            return self.data[self.pos - size : self.pos]
        if kind in (_LIST, _SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            if element == _STRUCT and path in self.raw:
                items: list[Any] = []
                for _ in range(size):
                    start = self.pos
                    self.skip(_STRUCT)
                    items.append(Raw(self.data[start : self.pos]))
                return (element, items)
            return (element, [self.value(element, path) for _ in range(size)])
        if kind == _MAP:
            size = self.varint()
            if size == 0:
                return (0, 0, [])
            head = self.byte()
            k, v = head >> 4, head & 0x0F
            return (k, v, [(self.value(k), self.value(v)) for _ in range(size)])
        if kind == _STRUCT:
            return self.struct(path)
        raise PatchError(f"unknown Thrift compact type {kind}")

    def struct(self, path: tuple[int, ...] = ()) -> Struct:
        fields: Struct = []
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == _STOP:
                return fields
            delta = head >> 4
            last = last + delta if delta else self.zigzag()
            if kind in (_TRUE, _FALSE):
                fields.append(Field(last, kind, kind == _TRUE))
            else:
                # A struct in a list has the list's path: row_groups[*].columns is (4, 1).
                fields.append(Field(last, kind, self.value(kind, (*path, last))))


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                self.out.append(b | 0x80)
            else:
                self.out.append(b)
                return

    def zigzag(self, n: int) -> None:
        self.varint((n << 1) ^ (n >> 63))

    def value(self, kind: int, value: Any) -> None:
        if kind in (_TRUE, _FALSE):
            self.out.append(_TRUE if value else _FALSE)
        elif kind == _BYTE:
            self.out += struct.pack("b", value)
        elif kind in (_I16, _I32, _I64):
            self.zigzag(value)
        elif kind == _DOUBLE:
            self.out += struct.pack("<d", value)
        elif kind == _BINARY:
            self.varint(len(value))
            self.out += value
        elif kind in (_LIST, _SET):
            element, items = value
            if len(items) < 15:
                self.out.append(len(items) << 4 | element)
            else:
                self.out.append(0xF0 | element)
                self.varint(len(items))
            for item in items:
                self.value(element, item)
        elif kind == _MAP:
            k, v, pairs = value
            self.varint(len(pairs))
            if pairs:
                self.out.append(k << 4 | v)
            for key, item in pairs:
                self.value(k, key)
                self.value(v, item)
        elif kind == _STRUCT:
            if isinstance(value, Raw):
                self.out += value.data
            else:
                self.struct(value)
        else:
            raise PatchError(f"unknown Thrift compact type {kind}")

    def struct(self, fields: Struct) -> None:
        last = 0
        for f in fields:
            kind = (_TRUE if f.value else _FALSE) if f.type in (_TRUE, _FALSE) else f.type
            delta = f.id - last
            if 0 < delta <= 15:
                self.out.append(delta << 4 | kind)
            else:
                self.out.append(kind)
                self.zigzag(f.id)
            if f.type not in (_TRUE, _FALSE):
                self.value(f.type, f.value)
            last = f.id
        self.out.append(_STOP)


def decode(data: bytes) -> Struct:
    """A Thrift compact struct."""
    return _Reader(data).struct()


def encode(fields: Struct) -> bytes:
    """The Thrift compact bytes of a struct."""
    writer = _Writer()
    writer.struct(fields)
    return bytes(writer.out)


def _field(fields: Struct, fid: int) -> Field | None:
    return next((f for f in fields if f.id == fid), None)


def _set(fields: Struct, fid: int, kind: int, value: Any) -> None:
    found = _field(fields, fid)
    if found is not None:
        found.value = value
        return
    fields.append(Field(fid, kind, value))
    fields.sort(key=lambda f: f.id)


def read_footer(path: Path, raw: bool = False) -> tuple[Struct, int]:
    """A Parquet file's FileMetaData and the offset where it starts; `raw` keeps the row
    groups' column chunks as Raw."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 12:
            raise PatchError(f"{path.name} is not a Parquet file")
        f.seek(size - 8)
        tail = f.read(8)
        if tail[4:] != MAGIC:
            raise PatchError(f"{path.name} is not a Parquet file")
        length = int.from_bytes(tail[:4], "little")
        start = size - 8 - length
        f.seek(start)
        return _Reader(f.read(length), _RAW_LISTS if raw else None).struct(), start


def _leaves(schema: list[Struct]) -> list[int]:
    """For each top-level column, the index of its leaf column chunk (-1 for a nested one)."""
    places: list[int] = []
    leaf = 0
    i = 1
    while i < len(schema):
        pending = _children(schema[i])
        places.append(-1 if pending else leaf)
        leaf += 0 if pending else 1
        i += 1
        while pending:
            sub = _children(schema[i])
            pending += sub - 1
            leaf += 0 if sub else 1
            i += 1
    return places


def row_group_sizes(path: Path) -> list[int]:
    """The rows of each row group of a Parquet file, from its footer."""
    return group_sizes(read_footer(path, raw=True)[0])


def group_sizes(meta: Struct) -> list[int]:
    """The rows of each row group of a FileMetaData."""
    groups = _field(meta, _F_ROW_GROUPS)
    if groups is None:
        return []
    sizes = []
    for group in groups.value[1]:
        rows = _field(group, _G_ROWS)
        sizes.append(int(rows.value) if rows is not None else 0)
    return sizes


def _shift(chunk: Struct, delta: int) -> None:
    """Move a column chunk's offsets by `delta` bytes."""
    for fid in (_C_FILE_OFFSET, _C_OFFSET_INDEX, _C_COLUMN_INDEX):
        found = _field(chunk, fid)
        if found is not None and found.value:
            found.value += delta
    meta = _field(chunk, _C_META)
    if meta is None:
        raise PatchError("a column chunk without metadata")
    for fid in (_M_DATA_PAGE, _M_INDEX_PAGE, _M_DICTIONARY, _M_BLOOM):
        found = _field(meta.value, fid)
        if found is not None and found.value:
            found.value += delta


def _size(chunk: Struct, fid: int) -> int:
    meta = _field(chunk, _C_META)
    found = _field(meta.value, fid) if meta is not None else None
    return int(found.value) if found is not None else 0


def merge(
    target: Path,
    side: Path,
    key_values: dict[str, str] | None = None,
    footer: tuple[Struct, int] | None = None,
) -> None:
    """Join `side`'s columns to `target`, in place: a flat top-level column of the same name is
    replaced (its old bytes stay, unreferenced), any other is appended. Both files must have the
    same row groups; `key_values` are set in target's footer. `footer` is target's, read with
    read_footer(raw=True), when the caller has it already."""
    meta, target_end = footer or read_footer(target, raw=True)
    extra, side_end = read_footer(side)
    schema = _field(meta, _F_SCHEMA)
    side_schema = _field(extra, _F_SCHEMA)
    groups = _field(meta, _F_ROW_GROUPS)
    side_groups = _field(extra, _F_ROW_GROUPS)
    if schema is None or side_schema is None or groups is None or side_groups is None:
        raise PatchError("a footer without schema or row groups")
    if len(groups.value[1]) != len(side_groups.value[1]):
        raise PatchError("the files have different row groups")
    for group, other in zip(groups.value[1], side_groups.value[1], strict=True):
        rows, other_rows = _field(group, _G_ROWS), _field(other, _G_ROWS)
        if rows is None or other_rows is None or rows.value != other_rows.value:
            raise PatchError("the files have different row groups")
    top = _top_level(schema.value[1])
    leaves = _leaves(schema.value[1])
    side_elements = side_schema.value[1][1:]
    if any(_children(e) for e in side_elements):
        raise PatchError("only flat columns can be joined")
    delta = target_end - len(MAGIC)  # side's chunks move from offset 4 to target's footer
    replaced: dict[int, int] = {}  # side column -> target leaf
    appended: list[int] = []
    for j, element in enumerate(side_elements):
        name = _name(element)
        place = top.get(name)
        if place is not None and leaves[place] >= 0:
            schema.value[1][1 + _schema_index(schema.value[1], place)] = element
            replaced[j] = leaves[place]
        else:
            schema.value[1].append(element)
            appended.append(j)
    root_children = _field(schema.value[1][0], _S_CHILDREN)
    if root_children is None:
        raise PatchError("a schema without a root")
    root_children.value += len(appended)
    for group, other in zip(groups.value[1], side_groups.value[1], strict=True):
        columns = _field(group, _G_COLUMNS)
        side_columns = _field(other, _G_COLUMNS)
        if columns is None or side_columns is None:
            raise PatchError("a row group without columns")
        for j, chunk in enumerate(side_columns.value[1]):
            _shift(chunk, delta)
            if j in replaced:
                old = columns.value[1][replaced[j]]
                columns.value[1][replaced[j]] = chunk
                _grow(group, chunk, old.decoded() if isinstance(old, Raw) else old)
            else:
                columns.value[1].append(chunk)
                _grow(group, chunk, None)
    orders = _field(meta, _F_COLUMN_ORDERS)
    side_orders = _field(extra, _F_COLUMN_ORDERS)
    if orders is not None:
        if side_orders is None:
            raise PatchError("column orders on one side only")
        for j, order in enumerate(side_orders.value[1]):
            if j in replaced:
                orders.value[1][replaced[j]] = order
            else:
                orders.value[1].append(order)
    if key_values:
        _set_key_values(meta, key_values)
    encoded = encode(meta)
    with side.open("rb") as f:
        f.seek(len(MAGIC))
        chunks = f.read(side_end - len(MAGIC))
    with target.open("r+b") as f:
        f.seek(target_end)
        f.write(chunks)
        f.write(encoded)
        f.write(len(encoded).to_bytes(4, "little"))
        f.write(MAGIC)
        f.truncate()


def _name(element: Struct) -> str:
    found = _field(element, _S_NAME)
    return found.value.decode() if found is not None else ""


def _top_level(schema: list[Struct]) -> dict[str, int]:
    """Top-level column name -> its place among the top-level columns."""
    names: dict[str, int] = {}
    place = 0
    i = 1
    while i < len(schema):
        names.setdefault(_name(schema[i]), place)
        place += 1
        pending = _children(schema[i])
        i += 1
        while pending:
            pending += _children(schema[i]) - 1
            i += 1
    return names


def _children(element: Struct) -> int:
    found = _field(element, _S_CHILDREN)
    return int(found.value) if found is not None and found.value else 0


def _schema_index(schema: list[Struct], place: int) -> int:
    """The index (after the root) of the place-th top-level column's element."""
    i = 1
    for _ in range(place):
        pending = _children(schema[i])
        i += 1
        while pending:
            pending += _children(schema[i]) - 1
            i += 1
    return i - 1


def _grow(group: Struct, chunk: Struct, old: Struct | None) -> None:
    """Keep a row group's byte totals right when a chunk joins it (or replaces `old`)."""
    for fid, meta_fid in ((_G_BYTES, _M_UNCOMPRESSED), (_G_COMPRESSED, _M_COMPRESSED)):
        total = _field(group, fid)
        if total is None:
            continue
        total.value += _size(chunk, meta_fid) - (_size(old, meta_fid) if old else 0)


def _set_key_values(meta: Struct, values: dict[str, str]) -> None:
    found = _field(meta, _F_KEY_VALUES)
    pairs: list[Struct] = found.value[1] if found is not None else []
    kept = [p for p in pairs if _key(p) not in values]
    for key, value in values.items():
        kept.append(
            [Field(_K_KEY, _BINARY, key.encode()), Field(_K_VALUE, _BINARY, value.encode())]
        )
    _set(meta, _F_KEY_VALUES, _LIST, (_STRUCT, kept))


def _key(pair: Struct) -> str:
    found = _field(pair, _K_KEY)
    return found.value.decode() if found is not None else ""
