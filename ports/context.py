"""The set of ports a process runs with, chosen once by the composition root."""

from collections.abc import Callable
from dataclasses import dataclass

from ports.exports import TableLoader
from ports.fetcher import UrlFetcher
from ports.queue import TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from ports.webhooks import WebhookSender
from schemas.settings import Settings


@dataclass(frozen=True)
class Context:
    settings: Settings
    new_uow: Callable[[], UnitOfWork]
    datasets_storage: ObjectStorage
    results_storage: ObjectStorage
    queue: TaskQueue
    fetcher: UrlFetcher
    webhook_sender: WebhookSender
    # Exports' loader (ASSAY_DESTINATIONS); None in processes that run no export.
    exports_loader: TableLoader | None = None
