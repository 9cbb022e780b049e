"""Object storage on the local filesystem: one root directory stands for one bucket.

Objects are never modified in place: every write goes to a temp file next to the target,
is fsynced and renamed over it. That makes hard links safe where a copy would only cost
time: put_file links the caller's file into the root and download_file links the object
to the requested path (a 421 MiB file: about 0.25 s with the fsync instead of 0.5 to 2 s
through a copy). Either falls back to a copy when linking fails (another filesystem,
a filesystem without hard links). The one rule this adds for callers: a file given to
put_file or received from download_file must not be modified in place afterwards (a
rename, replace or delete is fine), since it may share its data with the stored object.
"""

import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ports.storage import ObjectNotFound, StorageUnavailable

_COPY_CHUNK = 1024 * 1024
_SENDFILE_CHUNK = 64 * 1024 * 1024


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
        """Store a local file under key, linked when possible (the caller keeps its file).

        The caller must not modify the file in place afterwards: it may be the object itself.
        """
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if _atomic_link(Path(path), target):
            return
        with open(path, "rb") as source:
            _atomic_copy(source, target)

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
        """Link or copy an object to a local file, atomically replacing it.

        The caller must not modify the file in place: it may share its data with the object.
        A later put of the same key does not change it (a put replaces, never rewrites).
        """
        object_path = self._path(key)
        try:
            source = open(object_path, "rb")  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        with source:
            # If the object is replaced or deleted meanwhile, the open file is copied instead.
            if _atomic_link(object_path, Path(path), same_as=os.fstat(source.fileno())):
                return
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


def _atomic_link(source: Path, target: Path, same_as: os.stat_result | None = None) -> bool:
    """Hard-link source to a temp name next to target, fsync, rename it over target.

    False, with nothing left behind, when the link cannot be made (another filesystem, no
    hard links, the source gone) or, with `same_as`, when the source is no longer that file.
    """
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.link(source, tmp)
    except OSError:
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            linked = os.fstat(fd)
            replaced = same_as is not None and not os.path.samestat(linked, same_as)
            if not replaced:
                # The source's data may not be on disk yet: same durability as a fresh copy.
                os.fsync(fd)
        finally:
            os.close(fd)
        if replaced:
            tmp.unlink()
            return False
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def _atomic_copy(source: BinaryIO, target: Path) -> None:
    """Write source to a temp file next to target, fsync, then rename it over target."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            _copy(source, tmp)
            tmp.flush()
            # Without fsync a crash after the rename can leave a complete-looking empty file.
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    """Copy in the kernel (sendfile) between regular files, else through 1 MiB chunks."""
    try:
        in_fd, out_fd = source.fileno(), target.fileno()
        regular = stat.S_ISREG(os.fstat(in_fd).st_mode)
    except (AttributeError, OSError, ValueError):  # BytesIO and other streams without a file
        regular = False
    if regular:
        target.flush()
        start = offset = source.tell()
        try:
            while sent := os.sendfile(out_fd, in_fd, offset, _SENDFILE_CHUNK):
                offset += sent
        except OSError as exc:  # no sendfile between these files: copy below, unless started
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or offset > start:
                raise
        else:
            source.seek(offset)
            return
    shutil.copyfileobj(source, target, _COPY_CHUNK)


def _read_chunks(file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with file:
        while chunk := file.read(chunk_size):
            yield chunk
