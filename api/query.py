"""Query parameters a client may repeat (`?digest=a&digest=b`, `?n=1&n=2`).

Starlette's `query_params.get` silently keeps the last value, distribution's Go `Get` the
first: the same request would mean different things to the two. So a parameter that is
given more than once with *different* values is ambiguous and never guessed at: the routes
answer a 400 naming it (`digest`, `digest-algorithm`, `n`, `last`) or, where the spec
prescribes a fallback, take it (a mount with ambiguous arguments becomes a plain upload
session; an ambiguous referrers filter is not applied). The same value repeated is that
value. `tag` on a manifest PUT is a list by design (end-7b) and not read through here.
"""

from __future__ import annotations

from starlette.datastructures import QueryParams

from api.errors import ApiError

MAX_SHOWN = 5
"""Values echoed back in an error's detail (a query string may repeat a name thousands of times)."""


class Ambiguous(Exception):
    """`name` is given more than once with different values."""

    def __init__(self, name: str, values: list[str]) -> None:
        super().__init__(f"the {name!r} query parameter is given {len(values)} times with different values")
        self.name = name
        self.values = values


def single(params: QueryParams, name: str) -> str | None:
    """The one value of `name` (None when absent); Ambiguous when its values differ."""
    values = params.getlist(name)
    if not values:
        return None
    first = values[0]
    if any(v != first for v in values[1:]):
        raise Ambiguous(name, values)
    return first


def single_or_none(params: QueryParams, name: str) -> str | None:
    """`single`, with an ambiguous parameter read as absent (for spec-defined fallbacks)."""
    try:
        return single(params, name)
    except Ambiguous:
        return None


def single_or_400(params: QueryParams, name: str, code: str) -> str | None:
    """`single`, with an ambiguous parameter answered 400 `code`, its values in the detail."""
    try:
        return single(params, name)
    except Ambiguous as err:
        shown = [v[:100] for v in err.values[:MAX_SHOWN]]
        raise ApiError(code, 400, str(err), {name: shown}) from None
