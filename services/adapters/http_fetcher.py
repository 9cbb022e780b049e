"""UrlFetcher over httpx: every connection goes to an address that was resolved once and checked.

How: httpx sends each request through `_CheckedTransport`, whose httpcore connection pool opens
its sockets through `_CheckedBackend`. Asked for a connection to (host, port), the backend
resolves the host once, checks every address with schemas/domain/addresses.py, and connects to
the first that passed by its IP literal. There is no second lookup, so a DNS answer that
changes between check and connect (rebinding) cannot send the connection elsewhere, and a
refused address never sees a single packet. The URL itself is untouched, so the Host header,
TLS SNI and certificate verification use the host name as usual.

Redirects are followed here, not by httpx: at most MAX_REDIRECTS, each to an http(s) URL whose
connection is checked the same way. Environment proxies are ignored (a proxy would resolve the
host itself). The body is counted as it arrives and reading stops as soon as it passes the
limit; gzip and deflate bodies are counted decoded, other content encodings are refused.
"""

import hashlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpcore
import httpx

from ports.fetcher import FetchedFile, FetchFailed, UrlRefused
from schemas.domain.addresses import (
    ALLOWED_NETWORKS_SETTING,
    IPAddress,
    IPNetwork,
    check_address,
)

MAX_REDIRECTS = 5
SCHEMES = ("http", "https")
# What a body may be encoded with; the limit applies to the decoded bytes.
ACCEPTED_ENCODINGS = ("identity", "gzip", "deflate")
USER_AGENT = "assay-import/1"

Resolver = Callable[[str, int], Sequence[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of a host name (or the address an IP literal is), in the system's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:  # (family, type, proto, canonname, (address, port, ...))
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def parse_url(url: str) -> httpx.URL:
    """The URL if an import may request it (http or https, a host, no credentials)."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host
    except (httpx.InvalidURL, UnicodeError) as exc:  # UnicodeError: a malformed IDNA host
        raise UrlRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        scheme = f"{parsed.scheme}:" if parsed.scheme else "a URL without a scheme"
        raise UrlRefused(f"only http and https URLs can be imported, not {scheme}")
    if not host:
        raise UrlRefused("the URL names no host")
    if parsed.userinfo:
        raise UrlRefused("credentials in the URL are not accepted")
    return parsed


class HttpUrlFetcher:
    """Downloads http(s) URLs; connects only to addresses `check_address` lets through."""

    def __init__(
        self,
        allowed_networks: Sequence[IPNetwork] = (),
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        max_redirects: int = MAX_REDIRECTS,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
        who: str = "imports",
        allowed_setting: str = ALLOWED_NETWORKS_SETTING,
    ) -> None:
        self._who = who  # named in a refusal, with the setting that widens the policy
        self._allowed_setting = allowed_setting
        self._allowed = tuple(allowed_networks)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_redirects = max_redirects
        self._resolver = resolver
        self._ssl_context = ssl_context

    def check(self, url: str) -> None:
        """UrlRefused unless the URL is http(s) and its host has an address we may reach."""
        parsed = parse_url(url)
        # The ASCII (IDNA) form, as the connection resolves it.
        self.addresses(parsed.raw_host.decode("ascii"), parsed.port or _default_port(parsed))

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Resolve the host (once) and keep the addresses the policy allows, in order.

        UrlRefused when it does not resolve or none is allowed, with the first one's reason.
        """
        try:
            found = list(self._resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(f"cannot resolve host {host!r}: {exc}") from None
        if not found:
            raise UrlRefused(f"host {host!r} has no address")
        reasons = [check_address(address, self._allowed) for address in found]
        allowed = [address for address, reason in zip(found, reasons, strict=True) if not reason]
        if not allowed:
            reason = reasons[0]
            if host.strip("[]") != str(found[0]):
                reason = f"host {host!r}: {reason}"
            raise UrlRefused(
                f"{reason}; {self._who} reach only public addresses and the networks listed "
                f"in {self._allowed_setting}"
            )
        return allowed

    def fetch(
        self,
        url: str,
        destination: Path,
        *,
        max_bytes: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> FetchedFile:
        current = parse_url(url)
        timeout = httpx.Timeout(
            connect=self._connect_timeout_s,
            read=self._read_timeout_s,
            write=self._read_timeout_s,
            pool=self._connect_timeout_s,
        )
        ssl_context = self._ssl_context or httpx.create_ssl_context()
        transport = _CheckedTransport(_CheckedBackend(self.addresses), ssl_context)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"}
        with httpx.Client(
            transport=transport, timeout=timeout, headers=headers, trust_env=False
        ) as client:
            for hop in range(self._max_redirects + 1):
                try:
                    with client.stream("GET", current) as response:
                        if not response.is_redirect:
                            _expect_content(response, max_bytes, redirected=hop > 0)
                            return _save(response, destination, max_bytes, on_progress)
                        location = response.headers["location"]
                except UrlRefused as exc:
                    if hop == 0:
                        raise
                    raise UrlRefused(f"redirect {hop} to {current} refused: {exc}") from None
                except httpx.HTTPError as exc:
                    raise FetchFailed(self._describe(exc, current)) from None
                current = self._redirect_target(current, location, hop + 1)
        raise AssertionError("unreachable: the last hop returns or raises")

    def _redirect_target(self, current: httpx.URL, location: str, redirect: int) -> httpx.URL:
        """The URL redirect number `redirect` leads to, if it may be followed."""
        if redirect > self._max_redirects:
            raise FetchFailed(
                f"more than {self._max_redirects} redirects (the last one from {current})"
            )
        try:
            target = current.join(location)
        except httpx.InvalidURL as exc:
            raise FetchFailed(
                f"redirect {redirect} to an invalid URL {location!r}: {exc}"
            ) from None
        try:
            return parse_url(str(target))
        except UrlRefused as exc:
            shown = location if "://" in location else target  # as sent, when absolute
            raise UrlRefused(f"redirect {redirect} to {shown} refused: {exc}") from None

    def _describe(self, exc: httpx.HTTPError, url: httpx.URL) -> str:
        where = f"{url.host}:{url.port or _default_port(url)}"
        if isinstance(exc, httpx.ConnectTimeout):
            return (
                f"could not connect to {where} within {self._connect_timeout_s:g} s "
                "(ASSAY_IMPORT_CONNECT_TIMEOUT_S)"
            )
        if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
            return (
                f"{where} sent nothing for {self._read_timeout_s:g} s (ASSAY_IMPORT_READ_TIMEOUT_S)"
            )
        if isinstance(exc, httpx.ConnectError):
            return f"could not connect to {where}: {exc}"
        if isinstance(exc, httpx.DecodingError):
            return f"the body from {url} could not be decoded: {exc}"
        return f"the download from {url} broke off: {type(exc).__name__}: {exc}"


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _expect_content(response: httpx.Response, max_bytes: int, *, redirected: bool) -> None:
    """FetchFailed for an error status, an encoding we do not decode, or a declared size over
    the limit (refused before reading the body)."""
    if response.status_code != 200:
        where = f" for {response.request.url}" if redirected else ""
        raise FetchFailed(
            f"the server answered {response.status_code} {response.reason_phrase}{where}"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower() or "identity"
    if encoding not in ACCEPTED_ENCODINGS:
        raise FetchFailed(f"the server sent the body with an unsupported encoding: {encoding}")
    length = response.headers.get("content-length", "")
    if encoding == "identity" and length.isdigit() and int(length) > max_bytes:
        raise FetchFailed(
            f"the file is {int(length)} bytes, over the import limit of {max_bytes} bytes "
            "(ASSAY_MAX_UPLOAD_BYTES)"
        )


def _save(
    response: httpx.Response,
    destination: Path,
    max_bytes: int,
    on_progress: Callable[[int], None] | None,
) -> FetchedFile:
    digest = hashlib.sha256()
    size = 0
    with open(destination, "wb") as out:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchFailed(
                    f"the file is over the import limit of {max_bytes} bytes "
                    f"(ASSAY_MAX_UPLOAD_BYTES); stopped after receiving {size} bytes"
                )
            digest.update(chunk)
            out.write(chunk)
            if on_progress is not None:
                on_progress(size)
    return FetchedFile(
        path=destination,
        size_bytes=size,
        sha256=digest.hexdigest(),
        final_url=str(response.request.url),
    )


def checked_transport(
    addresses: Callable[[str, int], list[IPAddress]],
    ssl_context: ssl.SSLContext | None = None,
    on_connect: Callable[[httpcore.NetworkStream], None] | None = None,
) -> httpx.BaseTransport:
    """An httpx transport that connects only to the addresses `addresses(host, port)` gives
    (HttpUrlFetcher.addresses: resolved once and allowed by the policy); `on_connect` sees
    each connection it opens (to cut it off from another thread)."""
    backend = _CheckedBackend(addresses, on_connect)
    return _CheckedTransport(backend, ssl_context or httpx.create_ssl_context())


class _CheckedBackend(httpcore.NetworkBackend):
    """Opens TCP connections only to addresses `addresses(host, port)` resolved and allowed."""

    def __init__(
        self,
        addresses: Callable[[str, int], list[IPAddress]],
        on_connect: Callable[[httpcore.NetworkStream], None] | None = None,
    ) -> None:
        self._addresses = addresses
        self._on_connect = on_connect
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self._addresses(host, port):  # UrlRefused when none is allowed
            try:
                # An IP literal: the socket layer does no lookup of its own.
                stream = self._sockets.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
                if self._on_connect is not None:
                    self._on_connect(stream)
                return stream
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("imports connect over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# httpcore's errors as httpx's, most specific first (what httpx's own transport does).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class _CheckedStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _CheckedTransport(httpx.BaseTransport):
    """httpx's transport contract over an httpcore pool that connects through a backend."""

    def __init__(self, backend: httpcore.NetworkBackend, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CheckedStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
