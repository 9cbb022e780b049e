"""The set of ports a process runs with, chosen once by the composition root."""

from collections.abc import Callable
from dataclasses import dataclass

from ports.fetcher import UrlFetcher
from ports.queue import TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from schemas.settings import Settings


@dataclass(frozen=True)
class Context:
    settings: Settings
    new_uow: Callable[[], UnitOfWork]
    datasets_storage: ObjectStorage
    results_storage: ObjectStorage
    queue: TaskQueue
    fetcher: UrlFetcher
