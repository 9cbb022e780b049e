"""Job steps written on a command line: `name key=value key=value`.

A value is read by the type its processor's params JSON Schema gives the key: a string stays
as written; an array is split at commas (each item read by the item type) unless written as
JSON (`[...]`); a number, boolean or object is read as JSON. For a key the schema does not
know, the value is JSON when it parses as JSON, else the string.
"""

import json
from collections.abc import Mapping
from typing import Any

from client.models import Processor


class StepSyntaxError(ValueError):
    """A step that cannot be read; the message says which part and why."""


def parse_step(text: str, processors: Mapping[str, Processor] | None = None) -> dict[str, Any]:
    """`anomalies method=iqr columns=a,b` -> {"processor": "anomalies", "params": {...}}."""
    words = split_words(text)
    if not words:
        raise StepSyntaxError("an empty step: write the processor's name first")
    name, *assignments = (unquote(word) for word in words)
    if "=" in name:
        raise StepSyntaxError(f"step {text!r}: it must start with the processor's name")
    schema: dict[str, Any] = {}
    if processors is not None:
        if name not in processors:
            known = ", ".join(sorted(processors))
            raise StepSyntaxError(f"unknown processor {name!r}; available: {known}")
        schema = processors[name].params_schema
    properties = schema.get("properties", {})
    params: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise StepSyntaxError(f"step {text!r}: {assignment!r} is not key=value")
        if properties and key not in properties:
            known = ", ".join(sorted(properties))
            raise StepSyntaxError(f"{name} has no parameter {key!r}; it takes: {known}")
        params[key] = read_value(raw, value_types(properties.get(key, {}), schema))
    return {"processor": name, "params": params}


def split_words(text: str) -> list[str]:
    """Words split at spaces outside quotes, brackets and braces, so that JSON values keep
    their quotes: `normalize scale={"method": "zscore"}` is two words."""
    words: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char.isspace() and depth == 0:
            if current:
                words.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote:
        raise StepSyntaxError(f"step {text!r}: a {quote} quote is not closed")
    if current:
        words.append("".join(current))
    return words


def unquote(value: str) -> str:
    """A value written in quotes, without them: `name="a b"` is a b."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def value_types(prop: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The non-null alternatives of a property's schema (anyOf/oneOf unfolded, $ref resolved)."""
    if "$ref" in prop:
        ref = str(prop["$ref"]).rsplit("/", 1)[-1]
        return value_types(root.get("$defs", {}).get(ref, {"type": "object"}), root)
    for combinator in ("anyOf", "oneOf"):
        if combinator in prop:
            return [t for p in prop[combinator] for t in value_types(p, root)]
    if prop.get("type") == "null":
        return []
    return [prop] if prop else []


def read_value(raw: str, types: list[Mapping[str, Any]]) -> Any:
    """A command-line value as the schema types allow (see the module's docstring)."""
    kinds = {t.get("type", "enum" if "enum" in t else None) for t in types}
    array = next((t for t in types if t.get("type") == "array"), None)
    if array is not None and raw.strip().startswith("["):
        value = _json_or_text(raw)
        if isinstance(value, list):
            return value
        raw = raw.strip()[1:].removesuffix("]")  # [a,b] with its quotes lost to the shell
    if array is not None:
        item_types = value_types(array.get("items", {}), {}) if "items" in array else []
        if "prefixItems" in array:  # a fixed-length tuple, such as n_classes_range=2,4
            return [_json_or_text(unquote(item.strip())) for item in raw.split(",")]
        return [
            read_value(unquote(item.strip()), item_types) for item in raw.split(",") if item.strip()
        ]
    if kinds and kinds <= {"string", "enum"}:
        return unquote(raw)
    if "string" in kinds:  # string or something else: JSON only when it is not plain text
        value = _json_or_text(raw)
        return value if not isinstance(value, str) else unquote(raw)
    value = _json_or_text(raw)
    return unquote(value) if isinstance(value, str) else value


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def read_steps_file(text: str) -> list[dict[str, Any]]:
    """A JSON list of {"processor", "params"} objects (the body's `steps`)."""
    try:
        steps = json.loads(text)
    except ValueError as exc:
        raise StepSyntaxError(f"steps file is not JSON: {exc}") from None
    if isinstance(steps, dict) and "steps" in steps:
        steps = steps["steps"]
    if not isinstance(steps, list) or not all(
        isinstance(s, dict) and isinstance(s.get("processor"), str) for s in steps
    ):
        raise StepSyntaxError('steps file must hold a list of {"processor": ..., "params": {...}}')
    return [{"processor": s["processor"], "params": s.get("params") or {}} for s in steps]
