"""htpasswd (HTTP Basic) authentication plus the access policy, through a real Starlette app."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from api.auth import Access, Identity
from api.auth.htpasswd import Htpasswd
from pipeline.errors import ConfigurationError
from tests.api.auth.conftest import basic, htpasswd_settings, touch_newer, write_htpasswd

POLICY = """
anonymous:
  pull: ["public/*"]
groups:
  devs: [alice, bob]
rules:
  - repositories: ["team/*"]
    groups: [devs]
    actions: [pull, push]
  - repositories: ["**"]
    users: [admin]
    actions: ["*"]
"""


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland", "bob": "builder", "admin": "root!"})


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(POLICY)
    return path


def test_no_credentials_gets_a_basic_challenge(client_for: Any, htpasswd: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd))
    r = client.get("/check")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="Lading Test"'
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_right_password_is_accepted(client_for: Any, htpasswd: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd))
    r = client.get("/check", headers=basic("alice", "wonderland"))
    assert r.status_code == 200
    assert r.json()["name"] == "alice"
    assert r.json()["source"] == "basic"
    # Without a policy file an authenticated user may do anything.
    r = client.get("/check?repo=any/repo&actions=pull,push,delete", headers=basic("alice", "wonderland"))
    assert r.status_code == 200


def test_wrong_password_and_unknown_user_look_exactly_alike(client_for: Any, htpasswd: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd))
    wrong = client.get("/check?repo=a&actions=pull", headers=basic("alice", "nope"))
    unknown = client.get("/check?repo=a&actions=pull", headers=basic("nobody", "nope"))
    malformed = client.get("/check?repo=a&actions=pull", headers={"Authorization": "Basic !!notbase64"})
    for r in (wrong, unknown, malformed):
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="Lading Test"'
    assert wrong.content == unknown.content == malformed.content


def test_unknown_user_costs_a_bcrypt_check_like_a_known_one(
    htpasswd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checker = Htpasswd(str(htpasswd))
    seen: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert not checker.verify("alice", "nope")
    assert not checker.verify("nobody", "nope")
    assert len(seen) == 2
    # Same algorithm and cost for the dummy as for the real entry: same work either way.
    assert seen[1] != seen[0]
    assert seen[1][4:7] == seen[0][4:7]


def test_non_bcrypt_entries_are_ignored_with_a_warning(
    client_for: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_htpasswd(
        tmp_path / "htpasswd",
        {"alice": "wonderland"},
        extra="md5user:$apr1$abcdefgh$0123456789abcdefghijkl\nplain:secret\n# comment\n\nbroken-line\n",
    )
    with caplog.at_level(logging.WARNING, logger="lading.auth"):
        client, _ = client_for(htpasswd_settings(path))
    assert "md5user" in caplog.text and "plain" in caplog.text and "bcrypt" in caplog.text
    assert client.get("/check", headers=basic("plain", "secret")).status_code == 401
    assert client.get("/check", headers=basic("alice", "wonderland")).status_code == 200


@pytest.mark.parametrize("prefix", ["$2y$", "$2a$", "$2b$"])
def test_every_bcrypt_variant_is_accepted(tmp_path: Path, prefix: str) -> None:
    from tests.api.auth.conftest import bcrypt_hash

    path = tmp_path / "htpasswd"
    path.write_text(f"user:{bcrypt_hash('pw', prefix)}\n")
    assert Htpasswd(str(path)).verify("user", "pw")


def test_htpasswd_reloads_when_the_file_changes(client_for: Any, htpasswd: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd))
    assert client.get("/check", headers=basic("alice", "wonderland")).status_code == 200
    assert client.get("/check", headers=basic("carol", "singer")).status_code == 401

    write_htpasswd(htpasswd, {"carol": "singer"})
    touch_newer(htpasswd)
    assert client.get("/check", headers=basic("carol", "singer")).status_code == 200
    # alice was removed: her earlier success is not remembered past the edit.
    assert client.get("/check", headers=basic("alice", "wonderland")).status_code == 401


def test_a_broken_reload_keeps_the_last_good_file(client_for: Any, htpasswd: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd))
    htpasswd.unlink()
    assert client.get("/check", headers=basic("alice", "wonderland")).status_code == 200


def test_missing_htpasswd_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Access(htpasswd_settings(tmp_path / "nope"))
    assert info.value.detail == "auth.htpasswd.path"


# --- policy ----------------------------------------------------------------------------


def test_policy_decides_per_repository(client_for: Any, htpasswd: Path, policy: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd, policy))
    alice = basic("alice", "wonderland")
    ok = client.get("/check?repo=team/app&actions=pull,push", headers=alice)
    assert ok.status_code == 200 and ok.json()["groups"] == ["devs"]
    denied = client.get("/check?repo=other/app&actions=pull", headers=alice)
    assert denied.status_code == 403
    assert denied.json()["errors"][0]["code"] == "DENIED"
    assert "WWW-Authenticate" not in denied.headers
    assert client.get("/check?repo=team/app&actions=delete", headers=alice).status_code == 403
    assert client.get("/check?repo=x/y/z&actions=delete", headers=basic("admin", "root!")).status_code == 200


def test_denied_says_nothing_about_existence(client_for: Any, htpasswd: Path, policy: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd, policy))
    alice = basic("alice", "wonderland")
    a = client.get("/check?repo=secret/exists&actions=pull", headers=alice).json()["errors"][0]
    b = client.get("/check?repo=secret/never&actions=pull", headers=alice).json()["errors"][0]
    assert a["code"] == b["code"] == "DENIED"
    assert a["message"] == b["message"]


def test_anonymous_gets_what_the_policy_grants_else_a_challenge(
    client_for: Any, htpasswd: Path, policy: Path
) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd, policy))
    r = client.get("/check?repo=public/img&actions=pull")
    assert r.status_code == 200 and r.json()["source"] == "anonymous" and r.json()["name"] is None
    # Anything more asks for credentials (401, not 403: logging in may help).
    for query in ("repo=public/img&actions=pull,push", "repo=team/app&actions=pull"):
        r = client.get(f"/check?{query}")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
    # The ping always asks for credentials, so clients know to send them.
    assert client.get("/check").status_code == 401


def test_anonymous_pull_setting_without_policy_file(client_for: Any, htpasswd: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd, anonymous_pull=True))
    assert client.get("/check?repo=any/thing&actions=pull").status_code == 200
    assert client.get("/check?repo=any/thing&actions=pull,push").status_code == 401
    bob = basic("bob", "builder")
    assert client.get("/check?repo=any/thing&actions=pull,push", headers=bob).status_code == 200


def test_catalog_needs_a_caller_who_may_pull_something(client_for: Any, htpasswd: Path, policy: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd))
    assert client.get("/check?actions=catalog").status_code == 401
    assert client.get("/check?actions=catalog", headers=basic("bob", "builder")).status_code == 200
    client, _ = client_for(htpasswd_settings(htpasswd, policy))
    assert client.get("/check?actions=catalog").status_code == 200  # anonymous may pull public/*


def test_allowed_and_catalog_visibility_follow_the_policy(htpasswd: Path, policy: Path) -> None:
    access = Access(htpasswd_settings(htpasswd, policy))
    alice = Identity(name="alice", groups=frozenset({"devs"}), source="basic")
    anon = Identity(name=None)
    assert access.allowed(alice, "team/app", "pull")
    assert not access.allowed(alice, "secret/app", "pull")
    assert access.allowed(anon, "public/a", "pull") and not access.allowed(anon, "team/app", "pull")
    assert [r for r in ["public/a", "team/app", "secret/x"] if access.catalog_visible(alice, r)] == [
        "public/a",
        "team/app",
    ]


def test_policy_reloads_when_the_file_changes(client_for: Any, htpasswd: Path, policy: Path) -> None:
    client, _ = client_for(htpasswd_settings(htpasswd, policy))
    alice = basic("alice", "wonderland")
    assert client.get("/check?repo=new/app&actions=pull", headers=alice).status_code == 403
    policy.write_text(POLICY + '  - {repositories: ["new/*"], users: [alice], actions: [pull]}\n')
    touch_newer(policy)
    assert client.get("/check?repo=new/app&actions=pull", headers=alice).status_code == 200
    # A broken edit keeps the last good policy instead of opening or closing everything.
    policy.write_text("rules: [oops\n")
    touch_newer(policy)
    assert client.get("/check?repo=new/app&actions=pull", headers=alice).status_code == 200
    assert client.get("/check?repo=other/app&actions=pull", headers=alice).status_code == 403


def test_open_registry_without_auth_and_policy_needs_auth(tmp_path: Path, policy: Path) -> None:
    from pipeline.config import AuthSettings, Settings

    assert Access.from_settings(Settings()) is None
    with pytest.raises(ConfigurationError):
        Access.from_settings(Settings(auth=AuthSettings(policy_path=str(policy))))
