"""The ONE table of what each route requires: route x method -> the actions to authorize.

Handlers never check access themselves. The router looks the matched route up here and,
when the app has an `Access` (api/auth), calls

    await access.authorize(request, repository, actions)

once for the rule's main requirement (raising Unauthorized / Denied stops the request), then
once per *optional* requirement, whose outcome is only recorded in `request.state.grants`
(never raised). Cross-repository mount is the one optional requirement: `pull` on the
repository named by `?from=` lets the handler link the blob; if it is denied the handler
falls back to a plain upload session (202), so a client cannot probe for blobs in
repositories it may not read.

Scopes:
- `repository`: the repository in the URL, with the listed actions (pull, push, delete);
- `registry`:   no repository; empty actions = "any authenticated caller" (GET /v2/);
- `catalog`:    no repository, actions {"catalog"} (distribution's `registry:catalog:*`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from starlette.requests import Request

from api.query import single_or_none
from pipeline.errors import Denied, Unauthorized
from pipeline.formats.names import is_valid_name

PULL = "pull"
PUSH = "push"
DELETE = "delete"
CATALOG = "catalog"

Scope = Literal["repository", "registry", "catalog"]


class Access(Protocol):
    """What the router needs from api.auth: authorize or raise Unauthorized / Denied."""

    async def authorize(self, request: Request, repository: str | None, actions: set[str]) -> Any: ...


@dataclass(frozen=True)
class OptionalGrant:
    """A requirement whose refusal is tolerated: its result lands in request.state.grants[grant].

    `param` names the query parameter holding the repository to check."""

    grant: str
    param: str
    actions: frozenset[str]


@dataclass(frozen=True)
class Rule:
    scope: Scope
    actions: frozenset[str]
    optional: tuple[OptionalGrant, ...] = field(default=())


def _repo(*actions: str, optional: tuple[OptionalGrant, ...] = ()) -> Rule:
    return Rule("repository", frozenset(actions), optional)


MOUNT_SOURCE = "mount_source"
"""Grant name: may the caller read the `?from=` repository of a cross-repository mount."""

_PULL = _repo(PULL)
_PUSH = _repo(PULL, PUSH)
_DELETE = _repo(DELETE)

# Route names are the ones api.routes.router matches; HEAD always needs what GET needs.
TABLE: dict[tuple[str, str], Rule] = {
    ("base", "GET"): Rule("registry", frozenset()),
    ("catalog", "GET"): Rule("catalog", frozenset({CATALOG})),
    ("tags", "GET"): _PULL,
    ("manifest", "GET"): _PULL,
    ("manifest", "PUT"): _PUSH,
    ("manifest", "DELETE"): _DELETE,
    ("blob", "GET"): _PULL,
    ("blob", "DELETE"): _DELETE,
    ("referrers", "GET"): _PULL,
    (
        "upload_start",
        "POST",
    ): _repo(PULL, PUSH, optional=(OptionalGrant(MOUNT_SOURCE, "from", frozenset({PULL})),)),
    ("upload", "GET"): _PUSH,
    ("upload", "PATCH"): _PUSH,
    ("upload", "PUT"): _PUSH,
    ("upload", "DELETE"): _PUSH,
}


def rule_for(route: str, method: str) -> Rule:
    """The rule of a route and method. KeyError means the table misses a served route, a bug
    a test catches (every route x method the router serves must be listed here)."""
    return TABLE[(route, "GET" if method == "HEAD" else method)]


async def enforce(access: Access | None, request: Request, route: str, repository: str | None) -> None:
    """Authorize the request per the table; record optional grants in request.state.grants.

    Without an Access (auth disabled) every optional requirement is granted."""
    rule = rule_for(route, request.method)
    grants: dict[str, bool] = {}
    request.state.grants = grants
    if access is None:
        for opt in rule.optional:
            grants[opt.grant] = True
        return
    target = repository if rule.scope == "repository" else None
    request.state.identity = await access.authorize(request, target, set(rule.actions))
    for opt in rule.optional:
        other = single_or_none(request.query_params, opt.param)  # ambiguous: not granted
        if not other or not is_valid_name(other):
            grants[opt.grant] = False
            continue
        try:
            await access.authorize(request, other, set(opt.actions))
        except (Unauthorized, Denied):
            # Refused for the other repository: the handler falls back, revealing nothing.
            grants[opt.grant] = False
        else:
            grants[opt.grant] = True
