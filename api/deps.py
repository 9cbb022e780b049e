"""Request dependencies as Annotated aliases: routes name what they need, main.py decides."""

from typing import Annotated

from fastapi import Depends, Request

from ports.context import Context
from ports.queue import TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from schemas.records import DEFAULT_OWNER
from schemas.settings import Settings


def get_context(request: Request) -> Context:
    return request.app.state.context


def get_uow(context: Annotated[Context, Depends(get_context)]) -> UnitOfWork:
    return context.new_uow()


def get_owner() -> str:
    """The caller's identity; a single owner until API keys replace this dependency."""
    return DEFAULT_OWNER


ContextDep = Annotated[Context, Depends(get_context)]
UowDep = Annotated[UnitOfWork, Depends(get_uow)]
OwnerDep = Annotated[str, Depends(get_owner)]


def _datasets_storage(context: ContextDep) -> ObjectStorage:
    return context.datasets_storage


def _queue(context: ContextDep) -> TaskQueue:
    return context.queue


def _settings(context: ContextDep) -> Settings:
    return context.settings


def _results_storage(context: ContextDep) -> ObjectStorage:
    return context.results_storage


DatasetsStorageDep = Annotated[ObjectStorage, Depends(_datasets_storage)]
ResultsStorageDep = Annotated[ObjectStorage, Depends(_results_storage)]
QueueDep = Annotated[TaskQueue, Depends(_queue)]
SettingsDep = Annotated[Settings, Depends(_settings)]
