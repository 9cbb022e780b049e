"""Cursor pagination of the list routes: one row more than the page tells if another follows."""

from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

Item = TypeVar("Item")
Cursor = TypeVar("Cursor")


class Page(NamedTuple, Generic[Item, Cursor]):
    items: list[Item]
    next_cursor: Cursor | None  # None on the last page


def fetch_size(limit: int) -> int:
    """How many rows to ask the repository for to serve a page of `limit` rows."""
    # The extra row is never shown: its presence alone says a next page exists (no count query).
    return limit + 1


def page_of(
    fetched: Sequence[Item], limit: int, cursor_of: Callable[[Item], Cursor]
) -> Page[Item, Cursor]:
    """The page in rows fetched with fetch_size(limit), and the cursor of the next page.

    The cursor is that of the page's last row: the next page continues after it.
    """
    items = list(fetched[:limit])
    has_more = len(fetched) > limit and bool(items)
    return Page(items, cursor_of(items[-1]) if has_more else None)
