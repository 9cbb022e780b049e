"""Request dependencies as Annotated aliases: routes name what they need, main.py decides.

Who is calling (the principal, and the scope a route needs) is api/auth.py's.

They are `async def` on purpose: they only pick an object off the app, and FastAPI runs a
plain `def` dependency in the thread pool, a thread hand-off per dependency per request.
"""

from typing import Annotated

from fastapi import Depends, Request

from ports.context import Context
from ports.fetcher import UrlFetcher
from ports.queue import TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from ports.wakeups import JobWakeups
from schemas.settings import Settings


async def get_context(request: Request) -> Context:
    context: Context = request.app.state.context
    return context


async def get_uow(context: Annotated[Context, Depends(get_context)]) -> UnitOfWork:
    return context.new_uow()  # no connection yet: the session connects at its first query


ContextDep = Annotated[Context, Depends(get_context)]
UowDep = Annotated[UnitOfWork, Depends(get_uow)]


async def _datasets_storage(context: ContextDep) -> ObjectStorage:
    return context.datasets_storage


async def _queue(context: ContextDep) -> TaskQueue:
    return context.queue


async def _settings(context: ContextDep) -> Settings:
    return context.settings


async def _results_storage(context: ContextDep) -> ObjectStorage:
    return context.results_storage


async def _fetcher(context: ContextDep) -> UrlFetcher:
    return context.fetcher


async def _wakeups(request: Request) -> JobWakeups:
    wakeups: JobWakeups = request.app.state.job_wakeups
    return wakeups


DatasetsStorageDep = Annotated[ObjectStorage, Depends(_datasets_storage)]
ResultsStorageDep = Annotated[ObjectStorage, Depends(_results_storage)]
QueueDep = Annotated[TaskQueue, Depends(_queue)]
SettingsDep = Annotated[Settings, Depends(_settings)]
WakeupsDep = Annotated[JobWakeups, Depends(_wakeups)]
FetcherDep = Annotated[UrlFetcher, Depends(_fetcher)]
