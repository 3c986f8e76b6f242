"""Query validation, sorting and pagination for backends that query in Python (public: backend plugins use it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agl_kernel.errors import InvalidQueryError
from agl_kernel.models import PaginatedResult
from agl_kernel.store.base import SORT_FIELDS

T = TypeVar("T")


def check_query(collection: str, sort_by: str | None, sort_order: str, limit: int | None, offset: int) -> None:
    """Raise InvalidQueryError for a sort field, order, limit or offset the contract does not allow."""
    allowed = SORT_FIELDS[collection]
    if sort_by is not None and sort_by not in allowed:
        raise InvalidQueryError(
            f"cannot sort {collection} by {sort_by!r}; sortable fields: {', '.join(sorted(allowed))}"
        )
    if sort_order not in ("asc", "desc"):
        raise InvalidQueryError(f"sort_order must be 'asc' or 'desc', not {sort_order!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidQueryError(f"limit must be a non-negative integer or None, not {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise InvalidQueryError(f"offset must be a non-negative integer, not {offset!r}")


def _sort_key(field: str) -> Callable[[Any], tuple[bool, Any]]:
    def key(item: Any) -> tuple[bool, Any]:
        value = getattr(item, field)
        # None sorts before every value; enums sort by their string value.
        return (value is not None, getattr(value, "value", value) if value is not None else 0)

    return key


def paginate(
    items: Sequence[T],
    collection: str,
    *,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[T]:
    """Sort (stable: ties keep the given order), then cut one page. ``items`` is in creation order."""
    check_query(collection, sort_by, sort_order, limit, offset)
    ordered = list(items)
    if sort_by is not None:
        ordered.sort(key=_sort_key(sort_by), reverse=sort_order == "desc")
    elif sort_order == "desc":
        ordered.reverse()
    end = None if limit is None else offset + limit
    return PaginatedResult(items=ordered[offset:end], total=len(ordered), limit=limit, offset=offset)
