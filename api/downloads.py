"""Headers of file downloads."""

from pathlib import PurePath
from urllib.parse import quote

OCTET_STREAM = "application/octet-stream"


def attachment(name: str) -> str:
    """A Content-Disposition naming the file: an ASCII `filename` for old clients and the
    exact name as RFC 5987 `filename*` (header values are Latin-1: a raw `é` cannot be sent)."""
    base = PurePath(name.replace("\\", "/")).name or "download"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in base)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(base, safe='')}"
