"""Who is making a request, as established by `api.auth.Access.authorize`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from api.auth.tokens import AccessEntry

Source = Literal["anonymous", "basic", "token"]


@dataclass(frozen=True)
class Identity:
    """The caller. `name` is None for anonymous callers (and for anonymous tokens);
    `token_access` is what a bearer token grants (empty for other sources)."""

    name: str | None
    groups: frozenset[str] = field(default_factory=frozenset)
    source: Source = "anonymous"
    token_access: tuple[AccessEntry, ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.name is None


ANONYMOUS = Identity(name=None)
