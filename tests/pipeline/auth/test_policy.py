"""The access policy: glob semantics, rules, groups, anonymous grants, scope intersection."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.auth.policy import (
    ACTIONS,
    default_policy,
    glob_match,
    granted_actions,
    load_policy,
    parse_policy,
)
from pipeline.errors import ConfigurationError


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("team/*", "team/app", True),
        ("team/*", "team/app/sub", False),  # * stays inside one segment
        ("team/*", "team", False),
        ("team/*", "teamx/app", False),
        ("*", "app", True),
        ("*", "a/b", False),
        ("**", "a/b/c", True),
        ("**", "a", True),
        ("shared/**", "shared/a", True),
        ("shared/**", "shared/a/b/c", True),
        ("shared/**", "shared", False),  # everything inside, not the namespace itself
        ("shared/**", "sharedx/a", False),
        ("**/cache", "cache", True),
        ("**/cache", "a/b/cache", True),
        ("**/cache", "xcache", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "ab", False),
        ("team-**", "team-a/b", True),  # ** inside a segment crosses segments
        ("app-*-svc", "app-x-svc", True),
        ("app-*-svc", "app-x/y-svc", False),
        ("a.b", "axb", False),  # other characters are literal
        ("library/ubuntu", "library/ubuntu", True),
        ("library/ubuntu", "library/ubuntu2", False),
    ],
)
def test_glob_semantics(pattern: str, name: str, matches: bool) -> None:
    assert glob_match(pattern, name) is matches


POLICY = {
    "anonymous": {"pull": ["public/**"]},
    "groups": {"devs": ["alice", "bob"], "ops": ["carol"]},
    "rules": [
        {
            "repositories": ["team/*", "shared/**"],
            "users": ["alice"],
            "groups": ["devs"],
            "actions": ["pull", "push"],
        },
        {"repositories": ["team/*"], "groups": ["ops"], "actions": ["pull", "delete"]},
        {"repositories": ["**"], "users": ["admin"], "actions": ["*"]},
        {"repositories": ["docs"], "users": ["*"], "actions": ["pull"]},
    ],
}


def test_rules_grant_by_user_and_group_and_add_up() -> None:
    policy = parse_policy(POLICY)
    assert policy.actions_for("alice", "team/app") == {"pull", "push"}
    assert policy.actions_for("bob", "shared/x/y") == {"pull", "push"}  # via group devs
    assert policy.actions_for("carol", "team/app") == {"pull", "delete"}
    assert policy.actions_for("carol", "shared/x") == set()
    assert policy.actions_for("admin", "anything/at/all") == ACTIONS
    assert policy.actions_for("mallory", "team/app") == set()
    assert policy.actions_for("mallory", "docs") == {"pull"}  # users: ["*"] = any authenticated user
    assert policy.groups_of("alice") == {"devs"}
    assert policy.groups_of(None) == set()


def test_extra_groups_from_the_caller_count() -> None:
    policy = parse_policy(POLICY)
    assert policy.actions_for("dave", "team/app", groups=["ops"]) == {"pull", "delete"}


def test_anonymous_grants_and_authenticated_users_keep_them() -> None:
    policy = parse_policy(POLICY)
    assert policy.actions_for(None, "public/img") == {"pull"}
    assert policy.actions_for(None, "team/app") == set()
    assert policy.actions_for(None, "docs") == set()  # "*" users means authenticated only
    assert policy.actions_for("mallory", "public/img") == {"pull"}
    assert policy.anonymous_access


def test_allows_needs_every_action() -> None:
    policy = parse_policy(POLICY)
    assert policy.allows("alice", "team/app", {"pull", "push"})
    assert not policy.allows("alice", "team/app", {"pull", "delete"})
    assert policy.allows("admin", "x", {"*"})
    assert not policy.allows("alice", "team/app", {"*"})


def test_no_policy_file_means_authenticated_may_do_anything() -> None:
    policy = default_policy()
    assert policy.actions_for("anyone", "any/repo") == ACTIONS
    assert policy.actions_for(None, "any/repo") == set()
    assert not policy.anonymous_access
    open_pull = default_policy(anonymous_pull=True)
    assert open_pull.actions_for(None, "any/repo") == {"pull"}
    assert open_pull.anonymous_access


def test_anonymous_pull_in_file_or_setting() -> None:
    assert parse_policy({"anonymous_pull": True}).actions_for(None, "x/y") == {"pull"}
    assert parse_policy({}, anonymous_pull=True).actions_for(None, "x/y") == {"pull"}
    # A policy file without rules grants authenticated users nothing beyond anonymous.
    assert parse_policy({}).actions_for("alice", "x") == set()


def test_granted_actions_is_the_intersection() -> None:
    policy = parse_policy(POLICY)
    assert granted_actions(policy, "alice", "team/app", ["pull", "push", "delete"]) == ["pull", "push"]
    assert granted_actions(policy, "alice", "other", ["pull"]) == []
    assert granted_actions(policy, None, "public/a", ["push", "pull"]) == ["pull"]
    assert granted_actions(policy, "admin", "x", ["*"]) == ["*"]
    assert granted_actions(policy, "alice", "team/app", ["*"]) == ["pull", "push"]
    assert granted_actions(policy, "alice", "team/app", ["bogus", "pull"]) == ["pull"]


P = "lading.auth.policy"
R0 = f"{P}.rules.0"


def _rule(**fields: object) -> dict[str, object]:
    return {"rules": [fields]}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"rulez": []}, P),
        ([], P),
        (_rule(repositories=["a"], users=["x"], actions=["write"]), f"{R0}.actions"),
        (_rule(repositories=["a"], actions=["pull"]), R0),
        (_rule(repositories=["a"], groups=["nope"], actions=["pull"]), f"{R0}.groups"),
        (_rule(repositories="a", users=["x"], actions=["pull"], extra=1), R0),
        (_rule(users=["x"], actions=["pull"]), f"{R0}.repositories"),
        ({"anonymous": {"push!": ["a"]}}, f"{P}.anonymous.push!"),
        ({"anonymous_pull": "yes"}, f"{P}.anonymous_pull"),
    ],
)
def test_bad_policy_is_a_configuration_error_naming_the_key(data: object, key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_policy(data)
    assert info.value.detail == key


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(
        "anonymous:\n  pull: ['public/*']\n"
        "rules:\n  - {repositories: ['**'], users: [root], actions: ['*']}\n"
    )
    policy = load_policy(str(path))
    assert policy.actions_for(None, "public/a") == {"pull"}
    assert policy.actions_for("root", "x/y") == ACTIONS
    path.write_text("rules: [unclosed\n")
    with pytest.raises(ConfigurationError):
        load_policy(str(path))
    with pytest.raises(ConfigurationError):
        load_policy(str(tmp_path / "missing.yml"))
