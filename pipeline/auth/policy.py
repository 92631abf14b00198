"""The access policy: which users and groups may do which actions on which repositories.

Framework-free and pure: the HTTP layer (`api.auth`) authenticates a caller, then asks a
`Policy` what that caller may do. The same policy decides a request authenticated with HTTP
Basic and decides what the built-in token endpoint puts into a token; a token presented to
the registry is authoritative for what it grants (as in distribution), so the policy is not
consulted again for it.

Policy file (YAML; every key optional, unknown keys are a configuration error):

```yaml
anonymous_pull: false            # true: anyone may pull every repository
anonymous:                       # what callers without credentials may do
  pull: ["public/**"]
groups:
  devs: [alice, bob]
rules:                           # grants add up; there are no deny rules
  - repositories: ["team/*", "shared/**"]
    users: [alice]               # "*" means every authenticated user
    groups: [devs]
    actions: [pull, push]        # pull | push | delete | "*" (all three)
  - repositories: ["**"]
    users: [admin]
    actions: ["*"]
```

Repository globs (matched against the whole name, case-sensitively):

- `*` matches any characters within one path segment (never `/`): `team/*` matches
  `team/app` but not `team/app/x` nor `team`.
- `**` as a whole segment matches any number of segments: `**` matches every name,
  `**/cache` matches `cache` and `a/b/cache`, `a/**/b` matches `a/b` and `a/x/y/b`.
  A trailing `/**` matches everything *inside*: `shared/**` matches `shared/a` and
  `shared/a/b` but not `shared` itself (write both `shared` and `shared/**` for that).
- `**` inside a segment (`team-**`) matches any characters including `/`.
- Every other character is literal.

Without a policy file every authenticated user may do everything, and anonymous callers
may do nothing (or pull everything, with `anonymous_pull`). An authenticated user always
has at least what anonymous callers have.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.errors import ConfigurationError

PULL = "pull"
PUSH = "push"
DELETE = "delete"
ALL = "*"
ACTIONS: frozenset[str] = frozenset({PULL, PUSH, DELETE})
EVERY_USER = "*"

_POLICY_KEY = "lading.auth.policy"


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regular expression matching exactly the names `pattern` matches (see module doc)."""
    if not pattern:
        raise ConfigurationError(_POLICY_KEY, f"{_POLICY_KEY}: empty repository pattern")
    segments = pattern.split("/")
    if segments == ["**"]:
        return re.compile(".*")
    out: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "**":
            if index == 0:
                out.append("(?:.+/)?")  # "**/y": zero or more leading segments
            elif index == len(segments) - 1:
                out.append("/.+")  # "x/**": one or more segments inside x, never x itself
            else:
                out.append("(?:/.+)?")  # "x/**/y": zero or more segments in between
            continue
        if index > 0 and not (index == 1 and segments[0] == "**"):
            out.append("/")
        out.append(_segment_regex(segment))
    return re.compile("".join(out))


def _segment_regex(segment: str) -> str:
    parts: list[str] = []
    i = 0
    while i < len(segment):
        if segment.startswith("**", i):
            parts.append(".*")
            i += 2
        elif segment[i] == "*":
            parts.append("[^/]*")
            i += 1
        else:
            parts.append(re.escape(segment[i]))
            i += 1
    return "".join(parts)


def glob_match(pattern: str, name: str) -> bool:
    """True if repository `name` matches the glob `pattern`."""
    return compile_glob(pattern).fullmatch(name) is not None


def expand_actions(actions: Iterable[str], *, where: str = _POLICY_KEY) -> frozenset[str]:
    """The set of concrete actions named (`*` → all); an unknown action is a ConfigurationError."""
    out: set[str] = set()
    for action in actions:
        if action == ALL:
            out |= ACTIONS
        elif action in ACTIONS:
            out.add(action)
        else:
            raise ConfigurationError(
                where, f"{where}: unknown action {action!r} (use pull, push, delete or *)"
            )
    return frozenset(out)


@dataclass(frozen=True)
class Rule:
    """Grants `actions` on repositories matching any of `repositories` to the named users/groups."""

    repositories: tuple[str, ...]
    actions: frozenset[str]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def applies_to(self, user: str, groups: frozenset[str]) -> bool:
        return EVERY_USER in self.users or user in self.users or not self.groups.isdisjoint(groups)

    def matches(self, repository: str) -> bool:
        return any(glob_match(p, repository) for p in self.repositories)


@dataclass(frozen=True)
class Policy:
    """An access policy. `restricted=False` is the no-policy-file default: every
    authenticated user may do everything."""

    rules: tuple[Rule, ...] = ()
    anonymous: tuple[Rule, ...] = ()
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)  # group -> users
    restricted: bool = True

    def groups_of(self, user: str | None) -> frozenset[str]:
        """The groups `user` belongs to (none for anonymous)."""
        if user is None:
            return frozenset()
        return frozenset(g for g, users in self.members.items() if user in users)

    def actions_for(self, user: str | None, repository: str, groups: Iterable[str] = ()) -> frozenset[str]:
        """Every action `user` (None = anonymous) may do on `repository`. `groups` adds to the
        groups the policy file itself gives the user."""
        granted: set[str] = set()
        for rule in self.anonymous:
            if rule.matches(repository):
                granted |= rule.actions
        if user is None:
            return frozenset(granted)
        if not self.restricted:
            return ACTIONS
        all_groups = self.groups_of(user) | frozenset(groups)
        for rule in self.rules:
            if granted >= ACTIONS:
                break
            if rule.applies_to(user, all_groups) and rule.matches(repository):
                granted |= rule.actions
        return frozenset(granted)

    def allows(
        self, user: str | None, repository: str, actions: Iterable[str], groups: Iterable[str] = ()
    ) -> bool:
        """True if `user` may do every one of `actions` (`*` = all) on `repository`."""
        wanted = expand_actions(actions, where="action")
        return wanted <= self.actions_for(user, repository, groups)

    @property
    def anonymous_access(self) -> bool:
        """True if anonymous callers are granted anything at all."""
        return any(rule.actions for rule in self.anonymous)


def granted_actions(
    policy: Policy, user: str | None, repository: str, requested: Iterable[str], groups: Iterable[str] = ()
) -> list[str]:
    """The intersection of `requested` actions with what `policy` allows, in a stable order.

    A request for `*` yields `*` when every action is allowed, else each allowed action.
    Unknown requested actions are dropped (never an error: a token server answers with
    whatever subset the caller has).
    """
    allowed = policy.actions_for(user, repository, groups)
    wanted = set(requested)
    if ALL in wanted:
        if allowed >= ACTIONS:
            return [ALL]
        wanted |= ACTIONS
    return [a for a in (PULL, PUSH, DELETE) if a in wanted and a in allowed]


def default_policy(anonymous_pull: bool = False) -> Policy:
    """The policy without a policy file: authenticated users may do everything."""
    return Policy(anonymous=_anonymous_pull_rules(anonymous_pull), restricted=False)


def _anonymous_pull_rules(enabled: bool) -> tuple[Rule, ...]:
    return (Rule(repositories=("**",), actions=frozenset({PULL})),) if enabled else ()


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(where, f"{where}: must be a list of non-empty strings")
    return tuple(value)


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigurationError(where, f"{where}: unknown key(s) {', '.join(map(str, unknown))}")


def parse_policy(data: Any, *, anonymous_pull: bool = False, where: str = _POLICY_KEY) -> Policy:
    """Build a `Policy` from the parsed YAML document (see module doc).

    `anonymous_pull` (the setting) adds to the file's own `anonymous_pull`. Any shape the
    module doc does not describe is a ConfigurationError naming the key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(where, f"{where}: must be a mapping")
    _check_keys(data, {"anonymous_pull", "anonymous", "groups", "rules"}, where)

    file_anon_pull = data.get("anonymous_pull", False)
    if not isinstance(file_anon_pull, bool):
        raise ConfigurationError(f"{where}.anonymous_pull", f"{where}.anonymous_pull: must be true or false")
    anonymous = list(_anonymous_pull_rules(anonymous_pull or file_anon_pull))
    anon = data.get("anonymous") or {}
    if not isinstance(anon, dict):
        raise ConfigurationError(f"{where}.anonymous", f"{where}.anonymous: must map actions to patterns")
    for action, patterns in anon.items():
        key = f"{where}.anonymous.{action}"
        globs = _str_list(patterns, key)
        for g in globs:
            compile_glob(g)
        anonymous.append(Rule(repositories=globs, actions=expand_actions([str(action)], where=key)))

    groups_data = data.get("groups") or {}
    if not isinstance(groups_data, dict):
        raise ConfigurationError(f"{where}.groups", f"{where}.groups: must map group names to users")
    members = {
        str(name): frozenset(_str_list(users or [], f"{where}.groups.{name}"))
        for name, users in groups_data.items()
    }

    rules_data = data.get("rules") or []
    if not isinstance(rules_data, list):
        raise ConfigurationError(f"{where}.rules", f"{where}.rules: must be a list")
    rules: list[Rule] = []
    for index, item in enumerate(rules_data):
        key = f"{where}.rules.{index}"
        if not isinstance(item, dict):
            raise ConfigurationError(key, f"{key}: must be a mapping")
        _check_keys(item, {"repositories", "users", "groups", "actions"}, key)
        repositories = _str_list(item.get("repositories"), f"{key}.repositories")
        for g in repositories:
            compile_glob(g)
        users = frozenset(_str_list(item.get("users") or [], f"{key}.users"))
        groups = frozenset(_str_list(item.get("groups") or [], f"{key}.groups"))
        if not users and not groups:
            raise ConfigurationError(key, f"{key}: needs users or groups")
        unknown_groups = sorted(groups - set(members))
        if unknown_groups:
            raise ConfigurationError(f"{key}.groups", f"{key}.groups: undefined group(s) {unknown_groups}")
        actions = expand_actions(_str_list(item.get("actions"), f"{key}.actions"), where=f"{key}.actions")
        rules.append(Rule(repositories=repositories, actions=actions, users=users, groups=groups))
    return Policy(rules=tuple(rules), anonymous=tuple(anonymous), members=members, restricted=True)


def load_policy(path: str, *, anonymous_pull: bool = False) -> Policy:
    """Read and parse the policy file at `path` (ConfigurationError if unreadable or invalid)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigurationError(_POLICY_KEY, f"{_POLICY_KEY}: cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(_POLICY_KEY, f"{_POLICY_KEY}: {path} is not valid YAML: {exc}") from exc
    return parse_policy(data, anonymous_pull=anonymous_pull)
