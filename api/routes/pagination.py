"""`n` / `last` pagination shared by the tag list and the catalog (RFC 5988 `Link` next)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from api.errors import ApiError
from api.query import single_or_400
from api.streaming import decimal


def page_size(request: Request, maximum: int | None = None) -> int | None:
    """The `n` query parameter (None when absent), capped at `maximum` if given.

    Anything but a non-negative decimal integer that fits an int64 (as distribution parses
    it: `²`, `٣`, 5,000 digits) is a 400 PAGINATION_NUMBER_INVALID."""
    raw = single_or_400(request.query_params, "n", "PAGINATION_NUMBER_INVALID")
    if raw is None or raw == "":
        return maximum
    n = decimal(raw)
    if n is None:
        detail = {"n": raw if len(raw) <= 40 else raw[:40] + "…"}
        raise ApiError("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested", detail)
    return min(n, maximum) if maximum is not None else n


def last_entry(request: Request, code: str) -> str | None:
    """The `last` query parameter (None when absent or empty); given twice with different
    values it is a 400 `code` (NAME_INVALID for repositories, TAG_INVALID for tags)."""
    return single_or_400(request.query_params, "last", code) or None


def paginate(
    fetch: Callable[[int | None, str | None], list[str]], n: int | None, last: str | None
) -> tuple[list[str], bool]:
    """One page from `fetch(limit, last)` and whether more entries follow.

    Asks for one entry more than the page to learn whether a next page exists. n=0 still
    calls fetch (so an unknown repository is reported) but returns nothing."""
    if n is None:
        return fetch(None, last), False
    items = fetch(n + 1, last)
    if n == 0:
        return [], False
    return items[:n], len(items) > n


def next_link(url_for: Callable[[dict[str, str]], str], n: int, items: list[str]) -> str:
    """The Link header pointing at the page after `items`."""
    return f'<{url_for({"n": str(n), "last": items[-1]})}>; rel="next"'
