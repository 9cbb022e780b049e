"""Dataset routes: upload, list, detail, content, preview, failed rows, delete."""

import json
from pathlib import PurePath, PurePosixPath
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, WriterDep
from api.deps import DatasetsStorageDep, FetcherDep, QueueDep, SettingsDep, UowDep
from api.downloads import OCTET_STREAM, attachment
from api.errors import clip
from api.openapi import READ, WRITE, errors, file_response, upload_body
from api.pagination import fetch_size, page_of
from api.upload import ParsedUpload, receive_upload
from schemas.api import (
    DatasetImport,
    DatasetImported,
    DatasetLinks,
    DatasetOut,
    DatasetPage,
    FailedRowOut,
    FailedRowPage,
    PreviewOut,
    parse_null_values,
)
from schemas.domain.records import Dataset, DatasetFormat, DatasetStatus, Principal
from schemas.settings import Settings
from use_cases.datasets import delete_dataset, preview_key, register_dataset
from use_cases.errors import Conflict, InvalidParams, NotFound, PayloadTooLarge, UnsupportedFormat
from use_cases.imports import check_import_url, submit_import
from use_cases.quotas import SizeIs, check_quota, quota_exceeded, storage_used

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
# (method, path) of the routes that read their body as a stream, under limits of their own.
STREAMED_BODIES = frozenset({("POST", router.prefix)})

FORMAT_BY_EXTENSION = {
    ".csv": DatasetFormat.csv,
    ".tsv": DatasetFormat.csv,
    ".json": DatasetFormat.json,
    ".ndjson": DatasetFormat.ndjson,
    ".jsonl": DatasetFormat.ndjson,
    ".parquet": DatasetFormat.parquet,
    ".pq": DatasetFormat.parquet,
}
CONTENT_TYPES = {
    DatasetFormat.csv: "text/csv",
    DatasetFormat.json: "application/json",
    DatasetFormat.ndjson: "application/x-ndjson",
    DatasetFormat.parquet: "application/vnd.apache.parquet",
}
# Every error status a dataset route may answer (each route documents its own).
ERRORS: dict[int | str, dict[str, Any]] = errors(400, 404, 409, 413, 415, *WRITE)


def dataset_out(dataset: Dataset) -> DatasetOut:
    base = f"/api/v1/datasets/{dataset.id}"
    return DatasetOut(
        **dataset.model_dump(exclude={"owner_id", "storage_key", "parquet_key"}),
        links=DatasetLinks(
            self=base,
            content=f"{base}/content",
            preview=f"{base}/preview",
            failed_rows=f"{base}/failed-rows",
        ),
    )


def format_suffix(filename: str | None) -> str:
    """The extension that names the format, after a `.gz` (gzip is decompressed when read)."""
    path = PurePath(filename or "")
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.suffix.lower()


def resolve_format(declared: str | None, filename: str | None) -> DatasetFormat:
    """The format from the form field, else from the file name's extension."""
    supported = sorted(f.value for f in DatasetFormat)
    if declared:
        try:
            return DatasetFormat(declared.lower())
        except ValueError:
            shown = clip(declared)
            raise UnsupportedFormat(
                f"unsupported format {shown!r}; use one of {', '.join(supported)}",
                {"field": "format", "value": shown, "supported": supported},
            ) from None
    suffix = format_suffix(filename)
    if suffix in FORMAT_BY_EXTENSION:
        return FORMAT_BY_EXTENSION[suffix]
    shown_name = clip(filename) if filename is not None else None
    raise UnsupportedFormat(
        f"cannot tell the format of {shown_name!r}: unsupported extension "
        f"{clip(suffix, 16) or '(none)'}; name the file .csv, .json, .ndjson or .parquet "
        "(gzipped or not), or send a `format` field",
        {"field": "file", "filename": shown_name, "supported": supported},
    )


def dataset_name(declared: str | None, filename: str | None) -> str:
    """The `name` field, else the file name; at most 255 characters, no NUL."""
    name = (declared or PurePath(filename or "dataset").name).replace("\x00", "")
    if len(name) > 255:
        raise InvalidParams(
            f"name is {len(name)} characters long; at most 255 are allowed", {"field": "name"}
        )
    return name or "dataset"


def null_values_field(value: str | None) -> list[str] | None:
    """The `null_values` form field as tokens (None when not sent: the default list)."""
    if value is None:
        return None
    try:
        return parse_null_values(value)
    except ValueError as exc:
        raise InvalidParams(str(exc), {"field": "null_values"}) from None


def _get_dataset(uow: UowDep, dataset_id: UUID, principal: Principal) -> Dataset:
    """One of the caller's datasets; 404 for another owner's, exactly as for a missing one."""
    with uow:
        dataset = uow.datasets.get(dataset_id, principal)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found", {"dataset_id": str(dataset_id)})
    return dataset


async def receive_within_quota(
    request: Request, uow: UowDep, principal: Principal, settings: Settings
) -> ParsedUpload:
    """The upload, refused (413) as soon as it passes the upload limit or the room left in the
    owner's storage quota, whichever is smaller."""
    quota = settings.owner_quota_bytes
    if not quota:
        return await receive_upload(request, settings.tmp_dir, settings.max_upload_bytes)
    used = await run_in_threadpool(storage_used, uow, principal)
    room = max(quota - used, 0)
    if room >= settings.max_upload_bytes:
        return await receive_upload(request, settings.tmp_dir, settings.max_upload_bytes)
    try:
        return await receive_upload(request, settings.tmp_dir, room)
    except PayloadTooLarge as exc:
        if "max_upload_bytes" not in exc.details:  # a form field or header over its own cap
            raise
        size_is: SizeIs = "request_body" if "request_bytes" in exc.details else "received_so_far"
        size = exc.details.get("request_bytes", exc.details.get("received_bytes", 0))
        raise quota_exceeded(
            principal, used=used, quota=quota, size=size, size_is=size_is
        ) from None


@router.post(
    "",
    status_code=201,
    responses=errors(400, 413, 415, *WRITE),
    openapi_extra=upload_body(sorted(f.value for f in DatasetFormat)),
)
async def upload_dataset(
    request: Request,
    uow: UowDep,
    storage: DatasetsStorageDep,
    queue: QueueDep,
    settings: SettingsDep,
    principal: WriterDep,
) -> DatasetOut:
    """Upload a dataset (multipart `file`, optional `name`, `format`, `null_values`); a worker
    validates it."""
    quota = settings.owner_quota_bytes
    upload = await receive_within_quota(request, uow, principal, settings)
    try:
        if quota:  # counted again now that the size is known: other uploads may have landed
            await run_in_threadpool(
                check_quota, uow, principal, size=upload.received.size_bytes, quota=quota
            )
        fmt = resolve_format(upload.format, upload.filename)
        name = dataset_name(upload.name, upload.filename)
        null_values = null_values_field(upload.null_values)
        dataset = await run_in_threadpool(
            register_dataset,
            uow,
            storage,
            queue,
            principal=principal,
            name=name,
            fmt=fmt,
            received=upload.received,
            null_values=null_values,
        )
    finally:
        upload.received.path.unlink(missing_ok=True)
    return dataset_out(dataset)


@router.get("", responses=errors(*READ))
def list_datasets(
    uow: UowDep,
    principal: PrincipalDep,
    status: DatasetStatus | None = None,
    cursor: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DatasetPage:
    """Datasets, newest first; pass `next_cursor` back as `cursor` for the next page."""
    with uow:
        fetched = uow.datasets.list(
            principal, status=status, before=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda d: str(d.id))
    return DatasetPage(items=[dataset_out(d) for d in page.items], next_cursor=page.next_cursor)


@router.get("/{dataset_id}", responses=errors(404, *READ))
def get_dataset(dataset_id: UUID, uow: UowDep, principal: PrincipalDep) -> DatasetOut:
    """One dataset with its status, schema and counts."""
    return dataset_out(_get_dataset(uow, dataset_id, principal))


@router.get(
    "/{dataset_id}/content",
    response_class=StreamingResponse,
    responses=file_response("The original file", [*CONTENT_TYPES.values(), OCTET_STREAM])
    | errors(404, *READ),
)
def get_dataset_content(
    dataset_id: UUID, uow: UowDep, storage: DatasetsStorageDep, principal: PrincipalDep
) -> StreamingResponse:
    """The original file, byte for byte: typed by its format once validated (`ready`), until
    then application/octet-stream (an upload named .json need not be JSON)."""
    dataset = _get_dataset(uow, dataset_id, principal)
    chunks = storage.iter_chunks(dataset.storage_key)
    ready = dataset.status == DatasetStatus.ready
    return StreamingResponse(
        chunks,
        media_type=CONTENT_TYPES[dataset.format] if ready else OCTET_STREAM,
        headers={
            "Content-Length": str(dataset.size_bytes),
            "Content-Disposition": attachment(dataset.name),
            "ETag": f'"{dataset.sha256}"',
        },
    )


@router.get("/{dataset_id}/preview", responses=errors(404, 409, *READ))
def preview_dataset(
    dataset_id: UUID,
    uow: UowDep,
    storage: DatasetsStorageDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> PreviewOut:
    """The first rows of a ready dataset as JSON (at most 100)."""
    dataset = _get_dataset(uow, dataset_id, principal)
    if dataset.status != DatasetStatus.ready:
        raise Conflict(
            f"dataset {dataset_id} is {dataset.status.value}; a preview exists once it is ready",
            {"status": dataset.status.value},
        )
    rows = json.loads(b"".join(storage.iter_chunks(preview_key(dataset_id))))
    return PreviewOut(dataset_id=dataset_id, columns=dataset.columns or [], rows=rows[:limit])


@router.get("/{dataset_id}/failed-rows", responses=errors(404, *READ))
def list_failed_rows(
    dataset_id: UUID,
    uow: UowDep,
    principal: PrincipalDep,
    cursor: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="line number to continue after")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FailedRowPage:
    """Rows that could not be parsed, with line number, raw text and reason."""
    dataset = _get_dataset(uow, dataset_id, principal)
    with uow:
        fetched = uow.failed_rows.list(
            principal, dataset_id, after_line=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda r: r.line_number)
    return FailedRowPage(
        dataset_id=dataset_id,
        total=dataset.failed_row_count,
        items=[
            FailedRowOut(**r.model_dump(include={"line_number", "raw_text", "reason"}))
            for r in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.delete("/{dataset_id}", status_code=204, responses=errors(404, 409, *WRITE))
def remove_dataset(
    dataset_id: UUID, uow: UowDep, storage: DatasetsStorageDep, principal: WriterDep
) -> Response:
    """Delete a dataset and its stored objects (409 while a job or an export uses it)."""
    delete_dataset(uow, storage, dataset_id, principal)
    return Response(status_code=204)


@router.post("/import", status_code=202, responses=errors(400, 413, 415, 422, *WRITE))
def import_dataset(
    body: DatasetImport,
    uow: UowDep,
    queue: QueueDep,
    fetcher: FetcherDep,
    settings: SettingsDep,
    principal: WriterDep,
) -> DatasetImported:
    """Import a dataset from an http(s) URL; a worker downloads and validates it.

    The URL and the addresses of its host are checked now (422 naming `url` when refused);
    the download (redirects re-checked, size and time limited) runs in a worker, and the
    dataset ends `ready` or `failed` with the reason in `error`, as an upload does.
    """
    check_import_url(fetcher, body.url)  # resolves the host: this route runs in a thread
    # A full quota refuses now; the worker's download is cut at the room that is left.
    check_quota(uow, principal, size=1, quota=settings.owner_quota_bytes)
    filename = url_filename(body.url)
    dataset = submit_import(
        uow,
        queue,
        principal=principal,
        url=body.url,
        name=dataset_name(body.name, filename),
        fmt=import_format(body.format, filename),
        null_values=None if body.null_values is None else parse_null_values(body.null_values),
    )
    return DatasetImported(**dataset_out(dataset).model_dump())


def url_filename(url: str) -> str | None:
    """The last segment of a URL's path, decoded ("weather.csv"), if there is one."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    return PurePosixPath(unquote(path)).name or None


def import_format(declared: str | None, filename: str | None) -> DatasetFormat:
    """The `format` field, else the extension of the URL's file name."""
    if declared or format_suffix(filename) in FORMAT_BY_EXTENSION:
        return resolve_format(declared, filename)
    supported = sorted(f.value for f in DatasetFormat)
    shown_name = clip(filename) if filename is not None else None
    raise UnsupportedFormat(
        f"cannot tell the format from the URL's path ({shown_name or 'no file name'}); "
        f"send a `format` field: one of {', '.join(supported)}",
        {"field": "format", "filename": shown_name, "supported": supported},
    )
