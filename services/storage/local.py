"""Object storage on the local filesystem: one root directory stands for one bucket."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ports.storage import ObjectNotFound, StorageUnavailable

_COPY_CHUNK = 1024 * 1024


class LocalObjectStorage:
    """ObjectStorage on files under `root`, written atomically; "a/b" and "a/b/c" can't coexist."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure_ready(self) -> None:
        """Create the root directory if it is missing."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create storage root {self.root}: {exc}") from exc

    def check(self) -> None:
        """Raise StorageUnavailable unless the root exists and accepts writes."""
        if not self.root.is_dir():
            raise StorageUnavailable(f"storage root {self.root} is not a directory")
        try:
            # os.access lies for root and on some network filesystems; a real write does not.
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            raise StorageUnavailable(f"storage root {self.root} is not writable: {exc}") from exc

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Copy a local file under key (the caller keeps the source)."""
        with open(path, "rb") as source:
            self._write(key, source)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None:
        """Store everything read from a binary stream under key."""
        self._write(key, stream)

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream an object's bytes; raises ObjectNotFound at call time, not on first next()."""
        try:
            file = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        return _read_chunks(file, chunk_size)

    def download_file(self, key: str, path: Path) -> None:
        """Copy an object to a local file, atomically replacing it."""
        try:
            source = open(self._path(key), "rb")  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        with source:
            _atomic_copy(source, Path(path))

    def size(self, key: str) -> int:
        """Size in bytes; raises ObjectNotFound."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        """Whether a file is stored under key."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with prefix (plain string match, as in S3)."""
        if prefix:
            _check_key(prefix.rstrip("/") or prefix)
        # Only the directory part of the prefix can hold matches; "a/b" matches "a/b1" and "a/b/c".
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return
        dirs: set[Path] = set()
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                path = Path(dirpath, name)
                if path.relative_to(self.root).as_posix().startswith(prefix):
                    path.unlink(missing_ok=True)
                    dirs.add(path.parent)
        for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            self._prune_empty_dirs(directory)

    def presigned_url(
        self, key: str, expires_s: int = 3600, filename: str | None = None
    ) -> str | None:
        """Local files have no URL: callers stream through iter_chunks instead."""
        return None

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write(self, key: str, source: BinaryIO) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_copy(source, target)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove now-empty directories between an object and the root (never the root)."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty, or already gone
                return
            directory = directory.parent


def _check_key(key: str) -> PurePosixPath:
    """Reject keys that could escape the root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or "\\" in key or ".." in path.parts or "\0" in key:
        raise ValueError(f"invalid storage key: {key!r}")
    return path


def _atomic_copy(source: BinaryIO, target: Path) -> None:
    """Write source to a temp file next to target, fsync, then rename it over target."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            shutil.copyfileobj(source, tmp, _COPY_CHUNK)
            tmp.flush()
            # Without fsync a crash after the rename can leave a complete-looking empty file.
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _read_chunks(file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with file:
        while chunk := file.read(chunk_size):
            yield chunk
