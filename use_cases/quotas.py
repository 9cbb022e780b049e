"""Per-owner storage quota: the sizes of an owner's datasets, added up, stay under a limit."""

from typing import Literal

from ports.repositories import UnitOfWork
from schemas.domain.records import Principal
from use_cases.errors import QuotaExceeded


def storage_used(uow: UnitOfWork, principal: Principal) -> int:
    """Bytes the principal's datasets take (their size_bytes summed)."""
    with uow:
        return uow.datasets.total_size_bytes(principal)


# What `size_bytes` of a refused upload measures.
SizeIs = Literal["file", "received_so_far", "request_body"]
SIZE_WORDS: dict[str, str] = {
    "file": "a file of {} bytes",
    "received_so_far": "a file of at least {} bytes",
    "request_body": "a request body of {} bytes",
}


def quota_exceeded(
    principal: Principal, *, used: int, quota: int, size: int, size_is: SizeIs = "file"
) -> QuotaExceeded:
    """The 413 for an upload of `size` bytes that would take the owner past `quota`.

    `size_is` says what was measured: the whole file, the part received before it was cut off,
    or the request's declared length (refused before reading it).
    """
    return QuotaExceeded(
        f"{SIZE_WORDS[size_is].format(size)} would take owner {principal.owner_id!r} past its "
        f"storage quota: {used} of {quota} bytes are used, {max(quota - used, 0)} are left",
        {
            "used_bytes": used,
            "quota_bytes": quota,
            "size_bytes": size,
            "size_is": size_is,
        },
    )


def check_quota(uow: UnitOfWork, principal: Principal, *, size: int, quota: int) -> None:
    """QuotaExceeded when `size` more bytes would take the principal past `quota` (0: none)."""
    if quota <= 0:
        return
    used = storage_used(uow, principal)
    if used + size > quota:
        raise quota_exceeded(principal, used=used, quota=quota, size=size)
