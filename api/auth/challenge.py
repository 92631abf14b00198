"""`WWW-Authenticate` challenges: building them, and reading them off an auth error.

A 401 tells the client how to authenticate: `Basic realm="…"` for htpasswd, or
`Bearer realm="…",service="…",scope="…"` (RFC 6750 §3) for token auth, where `scope` names
what the refused request needed (`repository:<name>:pull,push`, `registry:catalog:*`).
`api.auth` attaches the challenge to the `Unauthorized` it raises; the API's error mapper
copies it to the response with `challenge_headers`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.auth.policy import ALL, DELETE, PULL, PUSH
from pipeline.errors import Unauthorized

_ORDER = {PULL: 0, PUSH: 1, DELETE: 2}


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ordered_actions(actions: Iterable[str]) -> list[str]:
    """Actions in the conventional order (pull, push, delete, then anything else sorted)."""
    return sorted(set(actions), key=lambda a: (_ORDER.get(a, 3), a))


def scope_for(repository: str | None, actions: Iterable[str]) -> str:
    """The token scope a request needs: `repository:<name>:<actions>`, `registry:catalog:*`
    for the catalog, or "" for a request that only needs to be authenticated."""
    wanted = ordered_actions(actions)
    if repository is None:
        return "registry:catalog:*" if wanted else ""
    if not wanted:
        return ""
    return f"repository:{repository}:{','.join(wanted)}"


def access_detail(repository: str | None, actions: Iterable[str]) -> list[dict[str, str]]:
    """The error `detail` distribution sends with an auth error: one entry per needed action."""
    if repository is None:
        return [{"Type": "registry", "Name": "catalog", "Action": ALL}] if set(actions) else []
    return [{"Type": "repository", "Name": repository, "Action": a} for a in ordered_actions(actions)]


def basic_challenge(realm: str) -> str:
    return f"Basic realm={_quote(realm)}"


def bearer_challenge(realm: str, service: str, scope: str = "", error: str | None = None) -> str:
    value = f"Bearer realm={_quote(realm)},service={_quote(service)}"
    if scope:
        value += f",scope={_quote(scope)}"
    if error:
        value += f",error={_quote(error)}"
    return value


def unauthorized(challenge: str, detail: Any = None) -> Unauthorized:
    """An `Unauthorized` carrying its challenge. The message is always the same, whatever
    went wrong (no such user, wrong password, bad token), so it reveals nothing."""
    error = Unauthorized(detail)
    error.challenge = challenge
    return error


def challenge_headers(error: BaseException) -> dict[str, str]:
    """The headers an error response must carry for `error`: `WWW-Authenticate` for an
    `Unauthorized` raised by api.auth, nothing for anything else."""
    challenge = getattr(error, "challenge", None) if isinstance(error, Unauthorized) else None
    return {"WWW-Authenticate": challenge} if isinstance(challenge, str) and challenge else {}
