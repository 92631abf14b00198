"""Refresh tokens of the built-in token server die with the credential they came from,
work once (rotation), and die for good with `lading tokens revoke USER`.

Before: a refresh token kept minting pull/push tokens for 30 days after the user's password
changed, and again after the user was removed and re-added with a new password (the
refresh grant only checked that the user existed), and could be used any number of times.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from starlette.testclient import TestClient

from api.auth import Access
from pipeline.auth.tokenrecords import LocalTokenRecords, RedisTokenRecords, token_records_for
from pipeline.config import CelerySettings, Settings
from tests.api.auth.conftest import (
    ISSUER,
    SERVICE,
    basic,
    bearer,
    ec_key,
    make_app,
    token_settings,
    touch_newer,
    write_htpasswd,
    write_private_key,
)
from tests.lading.procs import lading_command, process_env
from tests.support import redis_server

REDIS_DB = 22
POLICY = "rules:\n  - repositories: ['team/*']\n    users: [alice, bob]\n    actions: [pull, push]\n"
ALICE = {"grant_type": "password", "username": "alice", "password": "wonderland", "access_type": "offline"}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    policy = tmp_path / "policy.yml"
    policy.write_text(POLICY)
    return {
        "htpasswd": write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland", "bob": "builder"}),
        "policy": policy,
        "key": write_private_key(tmp_path / "signing.pem", ec_key()),
    }


def settings_for(files: dict[str, Path], rotate: bool = True) -> Settings:
    return token_settings(
        builtin_htpasswd=str(files["htpasswd"]),
        builtin_signing_key=str(files["key"]),
        policy_path=str(files["policy"]),
        **({"rotate_refresh": True} if rotate else {}),
    )


def replica(settings: Settings, records: Any) -> TestClient:
    return TestClient(make_app(Access(settings, token_records=records)), base_url="http://registry.test")


def post(client: TestClient, **form: str) -> Any:
    return client.post("/auth/token", data={"service": SERVICE, "client_id": "test", **form})


def refresh(client: TestClient, token: str) -> Any:
    return post(client, grant_type="refresh_token", refresh_token=token, scope="repository:team/a:push")


def login(client: TestClient) -> str:
    r = post(client, **ALICE)
    assert r.status_code == 200, r.text
    return str(r.json()["refresh_token"])


@pytest.fixture
def server(files: dict[str, Path]) -> TestClient:
    return replica(settings_for(files), LocalTokenRecords())


def test_password_change_revokes_refresh_tokens(server: TestClient, files: dict[str, Path]) -> None:
    token = login(server)
    write_htpasswd(files["htpasswd"], {"alice": "new-password", "bob": "builder"})
    touch_newer(files["htpasswd"])
    assert refresh(server, token).status_code == 401


def test_removed_and_readded_user_cannot_use_old_refresh_tokens(
    server: TestClient, files: dict[str, Path]
) -> None:
    token = login(server)
    write_htpasswd(files["htpasswd"], {"bob": "builder"})
    touch_newer(files["htpasswd"])
    assert refresh(server, token).status_code == 401
    write_htpasswd(files["htpasswd"], {"alice": "another-password", "bob": "builder"})
    touch_newer(files["htpasswd"])
    assert refresh(server, token).status_code == 401
    # Logging in with the new password works, and so does its refresh token.
    fresh = post(server, **{**ALICE, "password": "another-password"})
    assert fresh.status_code == 200
    assert refresh(server, fresh.json()["refresh_token"]).status_code == 200


def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(server: TestClient) -> None:
    first = login(server)
    r = refresh(server, first)
    assert r.status_code == 200
    second = r.json()["refresh_token"]
    assert second != first
    access = r.json()["access_token"]
    assert server.get("/check?repo=team/a&actions=push", headers=bearer(access)).status_code == 200

    assert refresh(server, first).status_code == 401  # used once already
    # That replay means one of the two holders is a thief: the rotated token dies too.
    assert refresh(server, second).status_code == 401
    # Another login (another family) is unaffected.
    assert refresh(server, login(server)).status_code == 200


def test_rotated_tokens_chain(server: TestClient) -> None:
    token = login(server)
    for _ in range(3):
        r = refresh(server, token)
        assert r.status_code == 200
        token = r.json()["refresh_token"]


def test_get_offline_token_is_bound_too(server: TestClient, files: dict[str, Path]) -> None:
    params = {"service": SERVICE, "offline_token": "true"}
    r = server.get("/auth/token", params=params, headers=basic("alice", "wonderland"))
    token = r.json()["refresh_token"]
    write_htpasswd(files["htpasswd"], {"alice": "changed", "bob": "builder"})
    touch_newer(files["htpasswd"])
    assert refresh(server, token).status_code == 401


@pytest.fixture
def redis_records() -> Any:
    client = redis.Redis.from_url(redis_server.url(REDIS_DB))
    client.flushdb()
    yield RedisTokenRecords(client)
    client.flushdb()


def test_rotation_is_shared_by_replicas_through_redis(files: dict[str, Path], redis_records: Any) -> None:
    settings = settings_for(files)
    one = replica(settings, redis_records)
    two = replica(settings, RedisTokenRecords(redis.Redis.from_url(redis_server.url(REDIS_DB))))
    token = login(one)
    assert refresh(one, token).status_code == 200
    assert refresh(two, token).status_code == 401  # used at the other replica


def test_lading_tokens_revoke_revokes_every_refresh_token_of_a_user(
    files: dict[str, Path], redis_records: Any, tmp_path: Path
) -> None:
    settings = settings_for(files)
    api = replica(settings, redis_records)
    other = replica(settings, RedisTokenRecords(redis.Redis.from_url(redis_server.url(REDIS_DB))))
    alice_tokens = [login(api), login(api)]
    bob = post(api, **{**ALICE, "username": "bob", "password": "builder"}).json()["refresh_token"]
    access = post(api, **{**ALICE, "scope": "repository:team/a:pull"}).json()["access_token"]
    assert other.get("/check?repo=team/a&actions=pull", headers=bearer(access)).status_code == 200

    config = {
        "storage": {"inmemory": {}},
        "auth": {"token": {"realm": "http://registry.test/auth/token", "service": SERVICE, "issuer": ISSUER}},
        "celery": {"broker_url": redis_server.url(REDIS_DB), "result_backend": redis_server.url(REDIS_DB)},
        "lading": {
            "auth": {
                "policy": str(files["policy"]),
                "token": {"htpasswd": str(files["htpasswd"]), "signing_key": str(files["key"])},
            }
        },
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*lading_command(), "tokens", "revoke", "alice", str(path)],
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

    for token in alice_tokens:
        assert refresh(api, token).status_code == 401
    # Her access tokens too (this replica has not looked her up yet: nothing cached).
    assert api.get("/check?repo=team/a&actions=pull", headers=bearer(access)).status_code == 401
    assert refresh(api, bob).status_code == 200
    assert refresh(api, login(api)).status_code == 200  # a later login works again


def test_token_records_follow_the_coordination(files: dict[str, Path]) -> None:
    from pipeline.infra.coordination import coordination_for

    assert isinstance(token_records_for(coordination_for(settings_for(files))), LocalTokenRecords)
    url = redis_server.url(REDIS_DB)
    celery = CelerySettings(broker_url=url, result_backend=url)
    scaled = dataclasses.replace(settings_for(files), celery=celery)
    assert isinstance(token_records_for(coordination_for(scaled)), RedisTokenRecords)


def test_by_default_a_refresh_token_is_reusable_but_still_bound(files: dict[str, Path]) -> None:
    """The default serves the docker CLI, which reuses the identity token `docker login`
    stored for every later command and never keeps a rotated one."""
    server = replica(settings_for(files, rotate=False), LocalTokenRecords())
    token = login(server)
    assert refresh(server, token).status_code == 200
    assert refresh(server, token).status_code == 200  # docker CLI keeps its identity token
    write_htpasswd(files["htpasswd"], {"alice": "changed", "bob": "builder"})
    touch_newer(files["htpasswd"])
    assert refresh(server, token).status_code == 401


def test_failed_logins_log_a_hash_of_the_user_name_not_the_name(
    server: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    typed = "Sup3r-Secret-Password"  # typed into the user field by mistake
    with caplog.at_level("INFO", logger="lading.auth"):
        assert post(server, grant_type="password", username=typed, password="x").status_code == 401
        r = server.get("/auth/token", params={"service": SERVICE}, headers=basic(typed, "x"))
        assert r.status_code == 401
    text = caplog.text
    assert typed not in text and typed[:6] not in text
    from api.auth.credentials import name_for_log

    assert text.count(name_for_log(typed)) == 2
