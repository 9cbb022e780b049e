"""Server-Sent Events: lines in, events out (the WHATWG parsing rules the API relies on)."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseMessage:
    id: str | None
    event: str
    data: str


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages of a stream, each once its closing blank line has arrived.

    A message cut off by a dropped connection (no blank line yet) is never yielded: the
    reconnect's Last-Event-ID asks for it again.
    """
    event_id: str | None = None
    event = ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield SseMessage(event_id, event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):  # a comment: the server's keep-alive
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id" and "\x00" not in value:
            event_id = value
