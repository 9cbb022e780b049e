"""ObjectStorage contract, run against every adapter, plus adapter-specific behaviour."""

import errno
import io
import os
import socket
import time
import urllib.request
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import pytest

import services.adapters.storage.s3 as s3_module
from ports.storage import ObjectNotFound, ObjectStorage, StorageUnavailable
from services.adapters.storage.local import LocalObjectStorage
from services.adapters.storage.s3 import S3ObjectStorage
from tests.fixtures.storage import make_s3_storage

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MiB = 1024 * 1024
# Above the 16 MiB multipart threshold, and not a multiple of any chunk size.
BIG_SIZE = 17 * MiB + 123


def one_way(data: bytes) -> BinaryIO:
    """A socket-like stream where the ports expect a binary file: reads are all it offers."""
    return cast(BinaryIO, OneWayStream(data))


class OneWayStream(io.RawIOBase):
    """Non-seekable stream that, like a socket, returns at most 64 KiB per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        view = memoryview(buffer)  # io passes a memoryview already: the same bytes
        chunk = self._data.read(min(len(view), 64 * 1024))
        view[: len(chunk)] = chunk
        return len(chunk)


@pytest.fixture(scope="module")
def big_payload() -> bytes:
    return os.urandom(BIG_SIZE)


def read_all(storage: ObjectStorage, key: str, chunk_size: int = MiB) -> bytes:
    return b"".join(storage.iter_chunks(key, chunk_size))


def put_bytes(storage: ObjectStorage, key: str, data: bytes) -> None:
    storage.put_stream(key, io.BytesIO(data))


# --- contract: every adapter --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_put_file_round_trip(object_storage: ObjectStorage, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    source = tmp_path / "source.bin"
    source.write_bytes(data)

    object_storage.put_file("datasets/a.bin", source, "application/octet-stream")

    assert read_all(object_storage, "datasets/a.bin", chunk_size=4096) == data
    assert object_storage.size("datasets/a.bin") == size
    assert source.read_bytes() == data, "the caller's file must be left in place"


def test_put_file_round_trip_above_multipart_threshold(
    object_storage: ObjectStorage, tmp_path: Path, big_payload: bytes
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(big_payload)

    object_storage.put_file("big/file.bin", source)

    chunks = list(object_storage.iter_chunks("big/file.bin"))
    assert b"".join(chunks) == big_payload
    assert max(len(c) for c in chunks) <= MiB
    assert object_storage.size("big/file.bin") == BIG_SIZE


@pytest.mark.parametrize("size", [10, BIG_SIZE])
def test_put_stream_from_non_seekable_stream(
    object_storage: ObjectStorage, big_payload: bytes, size: int
) -> None:
    data = big_payload[:size]

    object_storage.put_stream("streams/x.csv", one_way(data), "text/csv")

    assert read_all(object_storage, "streams/x.csv") == data
    assert object_storage.size("streams/x.csv") == size


def test_overwrite_replaces_the_object(object_storage: ObjectStorage) -> None:
    put_bytes(object_storage, "k", b"a much longer first version")
    put_bytes(object_storage, "k", b"second")

    assert read_all(object_storage, "k") == b"second"
    assert object_storage.size("k") == 6


def test_missing_key_raises_object_not_found(object_storage: ObjectStorage, tmp_path: Path) -> None:
    # Raised by the call itself, so a caller can answer 404 before sending any bytes.
    with pytest.raises(ObjectNotFound):
        object_storage.iter_chunks("nope/missing.csv")
    with pytest.raises(ObjectNotFound):
        object_storage.size("nope/missing.csv")
    with pytest.raises(ObjectNotFound):
        object_storage.download_file("nope/missing.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_exists_before_and_after(object_storage: ObjectStorage) -> None:
    assert not object_storage.exists("a/b.txt")
    put_bytes(object_storage, "a/b.txt", b"x")
    assert object_storage.exists("a/b.txt")
    assert not object_storage.exists("a"), "a key prefix is not an object"
    object_storage.delete("a/b.txt")
    assert not object_storage.exists("a/b.txt")


def test_delete_is_idempotent(object_storage: ObjectStorage) -> None:
    put_bytes(object_storage, "gone.txt", b"x")
    object_storage.delete("gone.txt")
    object_storage.delete("gone.txt")
    object_storage.delete("never/existed.txt")
    assert not object_storage.exists("gone.txt")


def test_delete_prefix_removes_only_that_prefix(object_storage: ObjectStorage) -> None:
    keys = ["jobs/1/a.csv", "jobs/1/deep/b.csv", "jobs/10/c.csv", "jobs/2/d.csv", "other.csv"]
    for key in keys:
        put_bytes(object_storage, key, key.encode())

    object_storage.delete_prefix("jobs/1/")

    assert {k for k in keys if object_storage.exists(k)} == {
        "jobs/10/c.csv",
        "jobs/2/d.csv",
        "other.csv",
    }
    object_storage.delete_prefix("jobs/1/")  # nothing left: still fine
    object_storage.delete_prefix("no/such/prefix/")


def test_delete_prefix_is_a_plain_string_prefix(object_storage: ObjectStorage) -> None:
    keys = ["a/b.csv", "a/b1/x", "a/b/c", "a/c"]
    for key in keys:
        put_bytes(object_storage, key, b"x")

    object_storage.delete_prefix("a/b")

    assert [k for k in keys if object_storage.exists(k)] == ["a/c"]


def test_download_file(object_storage: ObjectStorage, tmp_path: Path) -> None:
    put_bytes(object_storage, "results/out.parquet", b"PAR1 data")
    target = tmp_path / "out.parquet"
    target.write_bytes(b"old content that is longer")

    object_storage.download_file("results/out.parquet", target)

    assert target.read_bytes() == b"PAR1 data"


def test_download_is_not_changed_by_a_later_put_or_delete(
    object_storage: ObjectStorage, tmp_path: Path
) -> None:
    put_bytes(object_storage, "d/original.csv", b"first version")
    downloaded = tmp_path / "copy.csv"
    object_storage.download_file("d/original.csv", downloaded)

    source = tmp_path / "second.csv"
    source.write_bytes(b"second, longer version")
    object_storage.put_file("d/original.csv", source)
    assert downloaded.read_bytes() == b"first version"
    put_bytes(object_storage, "d/original.csv", b"third")
    assert downloaded.read_bytes() == b"first version"
    object_storage.delete("d/original.csv")
    assert downloaded.read_bytes() == b"first version"


def test_put_file_object_outlives_the_callers_file(
    object_storage: ObjectStorage, tmp_path: Path
) -> None:
    source = tmp_path / "spool.bin"
    source.write_bytes(b"uploaded bytes")
    object_storage.put_file("u/a.bin", source)

    # What callers do afterwards: delete their file, or replace it with a new one.
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(b"something else")
    replacement.replace(source)
    assert read_all(object_storage, "u/a.bin") == b"uploaded bytes"
    source.unlink()
    assert read_all(object_storage, "u/a.bin") == b"uploaded bytes"


def test_nested_keys_are_independent(object_storage: ObjectStorage) -> None:
    keys = ["x/y/z/1.json", "x/y/2.json", "x/3.json"]
    for key in keys:
        put_bytes(object_storage, key, key.encode())

    for key in keys:
        assert read_all(object_storage, key) == key.encode()
    object_storage.delete("x/y/2.json")
    assert object_storage.exists("x/y/z/1.json")
    assert object_storage.exists("x/3.json")


def test_check_passes_when_ready(object_storage: ObjectStorage) -> None:
    object_storage.check()


# --- local files ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "", "a\\..\\b"])
def test_local_rejects_keys_outside_the_root(local_storage: LocalObjectStorage, key: str) -> None:
    with pytest.raises(ValueError):
        put_bytes(local_storage, key, b"x")
    with pytest.raises(ValueError):
        local_storage.iter_chunks(key)


def test_local_has_no_presigned_url(local_storage: LocalObjectStorage) -> None:
    put_bytes(local_storage, "a.csv", b"x")
    assert local_storage.presigned_url("a.csv", filename="a.csv") is None


def test_local_leaves_no_temp_files_or_empty_dirs(local_storage: LocalObjectStorage) -> None:
    put_bytes(local_storage, "d/e/f.bin", b"1")
    put_bytes(local_storage, "d/e/f.bin", b"2")
    assert [p.name for p in local_storage.root.rglob("*") if p.is_file()] == ["f.bin"]

    local_storage.delete_prefix("d/")
    assert list(local_storage.root.iterdir()) == []
    assert local_storage.root.is_dir()


def test_local_ensure_ready_creates_root_and_check_fails_without_it(tmp_path: Path) -> None:
    storage = LocalObjectStorage(tmp_path / "not" / "yet")
    with pytest.raises(StorageUnavailable):
        storage.check()
    storage.ensure_ready()
    storage.ensure_ready()
    storage.check()

    blocked = LocalObjectStorage(tmp_path / "file")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageUnavailable):
        blocked.ensure_ready()


def test_local_put_file_links_instead_of_copying(
    local_storage: LocalObjectStorage, tmp_path: Path
) -> None:
    source = tmp_path / "big.csv"
    source.write_bytes(b"a,b\n1,2\n")

    local_storage.put_file("d/original.csv", source)

    stored = local_storage.root / "d" / "original.csv"
    assert stored.samefile(source), "same filesystem: the object is a hard link, not a copy"
    assert source.stat().st_nlink == 2
    assert [p.name for p in stored.parent.iterdir()] == ["original.csv"]


def test_local_download_file_links_and_replaces_the_target(
    local_storage: LocalObjectStorage, tmp_path: Path
) -> None:
    put_bytes(local_storage, "d/data.parquet", b"PAR1 data")
    target = tmp_path / "scratch" / "data.parquet"
    target.parent.mkdir()
    target.write_bytes(b"an older download")

    local_storage.download_file("d/data.parquet", target)

    assert target.samefile(local_storage.root / "d" / "data.parquet")
    assert target.read_bytes() == b"PAR1 data"
    assert [p.name for p in target.parent.iterdir()] == ["data.parquet"]
    target.unlink()  # the caller cleaning up its scratch directory
    assert read_all(local_storage, "d/data.parquet") == b"PAR1 data"


@pytest.mark.parametrize("error", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_local_falls_back_to_a_copy_when_linking_fails(
    local_storage: LocalObjectStorage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    big_payload: bytes,
    error: int,
) -> None:
    def no_link(src: object, dst: object, **_: object) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "link", no_link)
    source = tmp_path / "source.bin"
    source.write_bytes(big_payload)

    local_storage.put_file("x/file.bin", source)
    target = tmp_path / "download.bin"
    local_storage.download_file("x/file.bin", target)

    stored = local_storage.root / "x" / "file.bin"
    assert not stored.samefile(source)
    assert not target.samefile(stored)
    assert stored.read_bytes() == big_payload
    assert target.read_bytes() == big_payload
    assert source.read_bytes() == big_payload
    assert [p.name for p in stored.parent.iterdir()] == ["file.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.bin", "objects", "source.bin"]


def test_local_copy_without_sendfile(
    local_storage: LocalObjectStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sendfile(*_: object) -> int:
        raise OSError(errno.EINVAL, "sendfile not supported here")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    monkeypatch.setattr(os, "link", lambda *_, **__: (_ for _ in ()).throw(OSError(errno.EXDEV)))
    source = tmp_path / "source.bin"
    source.write_bytes(b"0123456789" * 1000)

    local_storage.put_file("k.bin", source)

    assert read_all(local_storage, "k.bin") == b"0123456789" * 1000


def test_local_put_stream_from_a_file_starts_at_its_position(
    local_storage: LocalObjectStorage, tmp_path: Path
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"header|payload")
    with source.open("rb") as stream:
        assert stream.read(7) == b"header|"
        local_storage.put_stream("k.bin", stream)
        assert stream.read() == b"", "the stream is consumed, as with any other reader"

    assert read_all(local_storage, "k.bin") == b"payload"


def test_local_download_of_an_object_replaced_meanwhile_copies_the_open_version(
    local_storage: LocalObjectStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_bytes(local_storage, "k.csv", b"version 1")
    real_link = os.link

    def replace_then_link(src: str | Path, dst: str | Path, **kwargs: Any) -> None:
        local_storage.put_stream("k.csv", io.BytesIO(b"version 2"))
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", replace_then_link)
    target = tmp_path / "out.csv"
    local_storage.download_file("k.csv", target)

    assert target.read_bytes() == b"version 1"
    assert read_all(local_storage, "k.csv") == b"version 2"
    assert [p.name for p in local_storage.root.iterdir()] == ["k.csv"]


# --- S3 -------------------------------------------------------------------------------------


def http_get(url: str) -> tuple[bytes, Message]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers


def test_s3_private_store_presigns_nothing_so_the_api_streams(moto_s3_endpoint: str) -> None:
    private = make_s3_storage(moto_s3_endpoint, presign_downloads=False)
    assert private.presigned_url("k.bin", filename="k.bin") is None


def test_the_app_presigns_only_for_a_store_clients_can_reach(tmp_path: Path) -> None:
    from main import make_storage
    from schemas.settings import Settings

    def presigns(**settings: Any) -> bool:
        storage = make_storage(
            Settings(_env_file=None, data_dir=tmp_path, storage_backend="s3", **settings), "b"
        )
        assert isinstance(storage, S3ObjectStorage)
        return storage.presign_downloads

    assert presigns()  # AWS itself
    assert not presigns(s3_endpoint_url="http://minio:9000")  # private MinIO: the API streams
    assert presigns(
        s3_endpoint_url="http://minio:9000", s3_public_endpoint_url="https://s3.example"
    )


def test_s3_presigned_url_downloads_with_plain_get(s3_storage: S3ObjectStorage) -> None:
    s3_storage.put_stream("d/data.csv", io.BytesIO(b"a,b\n1,2\n"), "text/csv")

    url = s3_storage.presigned_url("d/data.csv", expires_s=60, filename='résumé "1".csv')
    assert url is not None
    body, headers = http_get(url)

    assert body == b"a,b\n1,2\n"
    assert headers.get("Content-Type") == "text/csv"
    disposition = headers.get("Content-Disposition", "")
    assert disposition.startswith('attachment; filename="r_sum_ _1_.csv"')
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.csv" in disposition


def test_s3_presigned_url_is_signed_for_the_public_endpoint(
    s3_storage: S3ObjectStorage, moto_s3_endpoint: str
) -> None:
    public = moto_s3_endpoint.replace("127.0.0.1", "localhost")
    presigner = make_s3_storage(moto_s3_endpoint, s3_storage.bucket, public_endpoint_url=public)
    s3_storage.put_stream("k.bin", io.BytesIO(b"payload"))

    url = presigner.presigned_url("k.bin")

    assert url is not None
    assert url.startswith(f"{public}/{s3_storage.bucket}/k.bin?")
    assert http_get(url)[0] == b"payload"


def test_s3_ensure_ready_creates_missing_bucket_idempotently(moto_s3_endpoint: str) -> None:
    storage = make_s3_storage(moto_s3_endpoint)
    with pytest.raises(StorageUnavailable, match="does not exist"):
        storage.check()

    storage.ensure_ready()
    storage.ensure_ready()

    storage.check()
    put_bytes(storage, "k", b"x")
    assert storage.exists("k")
    storage.delete("k")
    storage.client.delete_bucket(Bucket=storage.bucket)


def test_s3_ensure_ready_outside_us_east_1(moto_s3_endpoint: str) -> None:
    storage = make_s3_storage(moto_s3_endpoint, region="eu-west-1")
    storage.ensure_ready()
    storage.ensure_ready()
    location = storage.client.get_bucket_location(Bucket=storage.bucket)
    assert location["LocationConstraint"] == "eu-west-1"
    storage.client.delete_bucket(Bucket=storage.bucket)


def test_s3_non_seekable_stream_uses_multipart(
    s3_storage: S3ObjectStorage, big_payload: bytes
) -> None:
    # Short reads must not make the transfer manager fall back to one in-memory PUT.
    s3_storage.put_stream("big.bin", one_way(big_payload))

    etag = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-2")


def test_s3_delete_prefix_in_batches(
    s3_storage: S3ObjectStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_DELETE_BATCH", 2)
    for i in range(5):
        put_bytes(s3_storage, f"p/{i}", b"x")
    put_bytes(s3_storage, "q/keep", b"x")

    s3_storage.delete_prefix("p/")

    listed = s3_storage.client.list_objects_v2(Bucket=s3_storage.bucket)
    assert [item["Key"] for item in listed["Contents"]] == ["q/keep"]


@pytest.fixture
def unreachable_s3() -> S3ObjectStorage:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    return make_s3_storage(f"http://127.0.0.1:{port}", connect_timeout=1, max_attempts=1)


def test_s3_check_on_unreachable_endpoint_fails_fast(unreachable_s3: S3ObjectStorage) -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        unreachable_s3.check()

    assert time.monotonic() - started < 5
    assert unreachable_s3.bucket in str(raised.value)
    assert str(unreachable_s3.endpoint_url) in str(raised.value)


def test_s3_operations_on_unreachable_endpoint_raise_storage_unavailable(
    unreachable_s3: S3ObjectStorage, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    calls = [
        lambda: unreachable_s3.put_file("k", source),
        lambda: put_bytes(unreachable_s3, "k", b"x"),
        lambda: unreachable_s3.iter_chunks("k"),
        lambda: unreachable_s3.download_file("k", tmp_path / "out"),
        lambda: unreachable_s3.size("k"),
        lambda: unreachable_s3.exists("k"),
        lambda: unreachable_s3.delete("k"),
        lambda: unreachable_s3.delete_prefix("k/"),
        unreachable_s3.ensure_ready,
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable):
            call()


def test_s3_builds_no_client_until_first_use() -> None:
    storage = S3ObjectStorage("lazy-bucket", endpoint_url="http://127.0.0.1:1")
    assert storage._client is None
    assert storage._presign_client is None


def test_s3_delete_prefix_aborts_unfinished_multipart_uploads(s3_storage: S3ObjectStorage) -> None:
    client = s3_storage.client
    bucket = s3_storage.bucket
    dead = client.create_multipart_upload(Bucket=bucket, Key="jobs/1/attempt-1/big.csv")
    client.upload_part(
        Bucket=bucket,
        Key="jobs/1/attempt-1/big.csv",
        UploadId=dead["UploadId"],
        PartNumber=1,
        Body=b"x" * 1024,
    )
    other = client.create_multipart_upload(Bucket=bucket, Key="jobs/2/attempt-1/big.csv")

    s3_storage.delete_prefix("jobs/1/")

    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]
