"""The built-in token server: Docker's GET flow and the OAuth2 POST flow, end to end through
`Access` (tokens it issues are accepted, and hold only what the policy allows)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth.tokens import libtrust_key_id
from tests.api.auth.conftest import (
    ISSUER,
    SERVICE,
    basic,
    bearer,
    out_of_scope,
    token_settings,
    touch_newer,
    write_htpasswd,
    write_private_key,
)

POLICY = """
anonymous:
  pull: ["public/*"]
groups:
  devs: [alice]
rules:
  - repositories: ["team/*"]
    groups: [devs]
    actions: [pull, push]
  - repositories: ["**"]
    users: [admin]
    actions: ["*"]
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland", "admin": "root!"})
    policy = tmp_path / "policy.yml"
    policy.write_text(POLICY)
    return {"htpasswd": htpasswd, "policy": policy}


@pytest.fixture
def server(client_for: Any, files: dict[str, Path]) -> Any:
    client, _ = client_for(
        token_settings(builtin_htpasswd=str(files["htpasswd"]), policy_path=str(files["policy"]))
    )
    return client


def get_token(client: Any, *scopes: str, auth: dict[str, str] | None = None, **params: str) -> dict[str, Any]:
    query: list[tuple[str, str]] = [("service", SERVICE), *(("scope", s) for s in scopes), *params.items()]
    r = client.get("/auth/token", params=query, headers=auth or {})
    assert r.status_code == 200, r.text
    return dict(r.json())


def access_of(token: str) -> list[dict[str, Any]]:
    return list(jwt.decode(token, options={"verify_signature": False})["access"])


def test_issued_token_is_accepted_for_what_it_grants(server: Any) -> None:
    body = get_token(server, "repository:team/app:pull,push", auth=basic("alice", "wonderland"))
    assert body["token"] == body["access_token"]
    expected = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert access_of(body["token"]) == expected
    token = bearer(body["token"])
    r = server.get("/check?repo=team/app&actions=pull,push", headers=token)
    assert r.status_code == 200 and r.json()["name"] == "alice" and r.json()["source"] == "token"
    assert out_of_scope(
        server.get("/check?repo=team/other&actions=pull", headers=token), "repository:team/other:pull"
    )


def test_grant_is_the_intersection_with_the_policy(server: Any) -> None:
    body = get_token(
        server,
        "repository:team/app:pull,push,delete",
        "repository:secret/app:pull",
        "repository:public/img:pull,push",
        auth=basic("alice", "wonderland"),
    )
    assert access_of(body["token"]) == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "public/img", "actions": ["pull"]},
    ]
    token = bearer(body["token"])
    assert out_of_scope(
        server.get("/check?repo=team/app&actions=delete", headers=token), "repository:team/app:delete"
    )
    assert out_of_scope(
        server.get("/check?repo=secret/app&actions=pull", headers=token), "repository:secret/app:pull"
    )
    assert server.get("/check?repo=public/img&actions=pull", headers=token).status_code == 200


def test_scopes_in_one_parameter_and_wildcards(server: Any) -> None:
    body = get_token(server, "repository:a/b:* registry:catalog:*", auth=basic("admin", "root!"))
    assert access_of(body["token"]) == [
        {"type": "repository", "name": "a/b", "actions": ["*"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    token = bearer(body["token"])
    assert server.get("/check?repo=a/b&actions=pull,push,delete", headers=token).status_code == 200
    assert server.get("/check?actions=catalog", headers=token).status_code == 200


def test_anonymous_token_holds_the_anonymous_grants(server: Any) -> None:
    body = get_token(server, "repository:public/img:pull,push", "repository:team/app:pull")
    assert access_of(body["token"]) == [{"type": "repository", "name": "public/img", "actions": ["pull"]}]
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == ""
    token = bearer(body["token"])
    r = server.get("/check?repo=public/img&actions=pull", headers=token)
    assert r.status_code == 200 and r.json()["name"] is None
    assert out_of_scope(
        server.get("/check?repo=public/img&actions=pull,push", headers=token),
        "repository:public/img:pull,push",
    )
    assert out_of_scope(
        server.get("/check?repo=team/app&actions=pull", headers=token), "repository:team/app:pull"
    )


def test_wrong_password_and_unknown_user_get_the_same_401(server: Any) -> None:
    wrong = server.get("/auth/token", params={"service": SERVICE}, headers=basic("alice", "nope"))
    unknown = server.get("/auth/token", params={"service": SERVICE}, headers=basic("ghost", "nope"))
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == f'Basic realm="{SERVICE}"'
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert wrong.content == unknown.content


def test_account_must_match_the_credentials(server: Any) -> None:
    get_token(server, auth=basic("alice", "wonderland"), account="alice")
    r = server.get(
        "/auth/token", params={"service": SERVICE, "account": "admin"}, headers=basic("alice", "wonderland")
    )
    assert r.status_code == 401


def test_unknown_service_is_refused(server: Any) -> None:
    r = server.get("/auth/token", params={"service": "elsewhere"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"


def test_expiry_and_issued_at(client_for: Any, files: dict[str, Path]) -> None:
    settings = token_settings(builtin_htpasswd=str(files["htpasswd"]), expiration_seconds=10)
    client, access = client_for(settings)
    body = get_token(client, auth=basic("alice", "wonderland"))
    assert body["expires_in"] == 60  # never less than 60 s, per the token spec
    issued = dt.datetime.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60
    assert int(issued.timestamp()) == claims["iat"]
    assert claims["iss"] == ISSUER and claims["aud"] == SERVICE and claims["sub"] == "alice"
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256"
    assert access.signer is not None and header["kid"] == access.signer.kid


def test_configured_rsa_signing_key(client_for: Any, files: dict[str, Path], tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = write_private_key(tmp_path / "signing.pem", key)
    client, _ = client_for(
        token_settings(builtin_htpasswd=str(files["htpasswd"]), builtin_signing_key=str(path))
    )
    body = get_token(client, "repository:x:pull", auth=basic("alice", "wonderland"))
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == libtrust_key_id(key.public_key())
    jwt.decode(body["token"], key.public_key(), algorithms=["RS256"], audience=SERVICE)
    assert client.get("/check?repo=x&actions=pull", headers=bearer(body["token"])).status_code == 200


def test_tokens_of_another_process_key_are_rejected(client_for: Any, files: dict[str, Path]) -> None:
    first, _ = client_for(token_settings(builtin_htpasswd=str(files["htpasswd"])))
    second, _ = client_for(token_settings(builtin_htpasswd=str(files["htpasswd"])))
    token = get_token(first, "repository:x:pull", auth=basic("alice", "wonderland"))["token"]
    assert second.get("/check?repo=x&actions=pull", headers=bearer(token)).status_code == 401


# --- OAuth2 POST -----------------------------------------------------------------------


ALICE = {"grant_type": "password", "username": "alice", "password": "wonderland"}


def can(client: Any, repo: str, actions: str, token: str) -> bool:
    r = client.get(f"/check?repo={repo}&actions={actions}", headers=bearer(token))
    assert r.status_code == 200 or out_of_scope(r, f"repository:{repo}:{actions}"), r.text
    return bool(r.status_code == 200)


def post(client: Any, **form: str) -> Any:
    return client.post("/auth/token", data={"service": SERVICE, "client_id": "test", **form})


def test_password_grant(server: Any) -> None:
    r = post(server, **ALICE, scope="repository:team/a:pull,push")
    assert r.status_code == 200
    body = r.json()
    assert body["scope"] == "repository:team/a:pull,push"
    assert "refresh_token" not in body
    assert can(server, "team/a", "push", body["access_token"])


def test_password_grant_with_wrong_password(server: Any) -> None:
    r = post(server, grant_type="password", username="alice", password="nope")
    assert r.status_code == 401
    assert post(server, grant_type="password", username="ghost", password="nope").content == r.content


def test_refresh_token_flow(server: Any, files: dict[str, Path]) -> None:
    first = post(server, **ALICE, access_type="offline").json()
    refresh = first["refresh_token"]
    # A refresh token is for the token server only.
    assert server.get("/check", headers=bearer(refresh)).status_code == 401

    again = post(server, grant_type="refresh_token", refresh_token=refresh, scope="repository:team/a:push")
    assert again.status_code == 200
    assert again.json()["scope"] == "repository:team/a:push"
    assert can(server, "team/a", "push", again.json()["access_token"])
    assert "refresh_token" not in again.json()  # no rotation by default: the same one goes on

    # GET with offline_token=true hands out one too.
    assert "refresh_token" in get_token(server, auth=basic("alice", "wonderland"), offline_token="true")

    # Access tokens are not refresh tokens; garbage is refused.
    assert post(server, grant_type="refresh_token", refresh_token=first["access_token"]).status_code == 401
    assert post(server, grant_type="refresh_token", refresh_token="junk").status_code == 401

    # A user removed from htpasswd can no longer refresh.
    write_htpasswd(files["htpasswd"], {"admin": "root!"})
    touch_newer(files["htpasswd"])
    assert post(server, grant_type="refresh_token", refresh_token=refresh).status_code == 401


def test_unsupported_grant_type(server: Any) -> None:
    r = post(server, grant_type="authorization_code", code="x")
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"
    assert post(server, grant_type="password").status_code == 400
    as_json = server.post("/auth/token", json={"grant_type": "password", "username": "alice"})
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"


def test_expired_refresh_token_is_refused(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.auth import tokens

    monkeypatch.setattr(tokens, "REFRESH_LIFETIME_SECONDS", -3600)
    refresh = post(server, **ALICE, access_type="offline").json()["refresh_token"]
    assert post(server, grant_type="refresh_token", refresh_token=refresh).status_code == 401
