"""URL fetcher port: download a client-named http(s) URL without reaching internal networks."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class FetchFailed(Exception):
    """The download did not complete; the message says why (status, limit, timeout, refusal)."""


class UrlRefused(FetchFailed):
    """The URL may not be fetched at all: not http(s), malformed, or its host resolves only to
    addresses the policy refuses (schemas/domain/addresses.py)."""


@dataclass(frozen=True)
class FetchedFile:
    """A completed download, written whole to the destination the caller gave."""

    path: Path
    size_bytes: int
    sha256: str
    final_url: str  # after redirects


class UrlFetcher(Protocol):
    """Each connection goes to an address that was resolved once and checked; so does every
    redirect (at most a few)."""

    def check(self, url: str) -> None:
        """Raise UrlRefused unless the URL is http(s) and its host may be reached now (the
        host is resolved); no request is sent."""
        ...

    def fetch(
        self,
        url: str,
        destination: Path,
        *,
        max_bytes: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> FetchedFile:
        """Download the URL into `destination`, reporting the bytes received so far.

        FetchFailed (UrlRefused for a refused address, also after a redirect) when it cannot
        complete, including as soon as more than `max_bytes` arrived; the destination may then
        hold a partial file, which the caller removes.
        """
        ...
