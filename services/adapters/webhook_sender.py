"""WebhookSender over httpx: each delivery is one POST to an address the webhook policy allows,
checked as imports are (services/adapters/http_fetcher.py): resolved once, no redirects.

A receiver cannot hold a relay: only the status line and headers are read (never the body),
and the whole attempt has a deadline, after which its connection is shut down from a timer
(a receiver sending a byte every few seconds would never hit a per-read timeout).
"""

import contextlib
import socket
import ssl
import threading
from collections.abc import Sequence

import httpcore
import httpx

from ports.webhooks import WebhookSendFailed
from schemas.domain.addresses import IPNetwork
from services.adapters.http_fetcher import HttpUrlFetcher, Resolver, checked_transport, parse_url
from services.adapters.http_fetcher import resolve as resolve_host

WEBHOOK_ALLOWED_NETWORKS_SETTING = "ASSAY_WEBHOOK_ALLOWED_NETWORKS"
USER_AGENT = "assay-webhooks/1"


class HttpWebhookSender:
    """POSTs deliveries; connects only to addresses the policy lets through."""

    def __init__(
        self,
        allowed_networks: Sequence[IPNetwork] = (),
        *,
        timeout_s: float = 10.0,
        resolver: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = HttpUrlFetcher(
            allowed_networks,
            resolver=resolver,
            who="webhooks",
            allowed_setting=WEBHOOK_ALLOWED_NETWORKS_SETTING,
        )
        self._timeout_s = timeout_s  # the whole attempt: connect, send, status and headers
        self._ssl_context = ssl_context

    def check(self, url: str) -> None:
        """UrlRefused unless the URL is http(s) and its host has an address we may reach."""
        self._policy.check(url)

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST the body; the status code, or WebhookSendFailed (UrlRefused when refused)."""
        target = parse_url(url)
        streams: list[httpcore.NetworkStream] = []
        transport = checked_transport(self._policy.addresses, self._ssl_context, streams.append)
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            for stream in list(streams):
                sock = stream.get_extra_info("socket")
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):  # closed meanwhile
                        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read at once

        deadline = threading.Timer(self._timeout_s, cut_off)
        deadline.daemon = True
        deadline.start()
        try:
            with (
                httpx.Client(
                    transport=transport, timeout=self._timeout_s, trust_env=False
                ) as client,
                client.stream(
                    "POST", target, content=body, headers={"User-Agent": USER_AGENT, **headers}
                ) as response,
            ):
                return response.status_code  # the body is never read
        except httpx.HTTPError as exc:
            if expired.is_set() or isinstance(exc, httpx.TimeoutException):
                raise WebhookSendFailed(
                    f"no answer from {target.host} within {self._timeout_s:g} s"
                ) from None
            raise WebhookSendFailed(
                f"could not deliver to {target.host}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            deadline.cancel()
