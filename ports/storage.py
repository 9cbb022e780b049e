"""Object storage port: one instance per bucket (datasets, job results)."""

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class ObjectNotFound(Exception):
    """The key does not exist in the bucket."""


class StorageUnavailable(Exception):
    """The storage backend could not be reached; the operation may be retried."""


class ObjectStorage(Protocol):
    """Keys are '/'-separated strings; values are opaque bytes streamed in chunks.

    An object is never modified in place: a put replaces it as a whole. Adapters may rely on
    that to share data with local files instead of copying it (hard links on the local
    filesystem), so a file handed to put_file or written by download_file must not be
    modified in place afterwards; deleting, renaming or replacing it is fine.
    """

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Store a local file under key, replacing any existing object.

        The caller keeps its file, but must not modify it in place afterwards.
        """
        ...

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None:
        """Store everything read from a binary stream under key."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream an object's bytes; raises ObjectNotFound before the first chunk."""
        ...

    def download_file(self, key: str, path: Path) -> None:
        """Copy an object to a local file, replacing it; not changed by a later put of key.

        The caller must not modify the file in place (it may share data with the object).
        """
        ...

    def size(self, key: str) -> int:
        """Size in bytes; raises ObjectNotFound."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with prefix, and unfinished uploads under it."""
        ...

    def presigned_url(
        self, key: str, expires_s: int = 3600, filename: str | None = None
    ) -> str | None:
        """A time-limited download URL, or None when the backend serves no URLs (local files)."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable when the backend cannot be used."""
        ...

    def ensure_ready(self) -> None:
        """Create the bucket (or folder) when it does not exist yet; idempotent."""
        ...
