"""/metrics on the main port is protected by default once auth is configured, and only a
named caller opens it: never the anonymous token the token endpoint hands to anyone, nor
a token that grants nothing.

Before: /metrics was open with auth configured, and `lading.metrics.protected: true` was
bypassed by an anonymous token (it checked only what `GET /v2/` checks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lading.embedded import assemble
from pipeline.config import AuthSettings, HtpasswdAuth, HttpSettings, Settings, StorageSettings
from tests.api.auth.conftest import SERVICE, basic, bearer, token_settings, write_htpasswd, write_private_key
from tests.api.auth.conftest import ec_key as new_key

pytestmark = pytest.mark.anyio

POLICY = """
anonymous:
  pull: ['public/*']
rules:
  - repositories: ['**']
    users: [alice]
    actions: ['*']
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def base(tmp_path: Path, auth: AuthSettings, protected: bool | None = None) -> Settings:
    return Settings(
        storage=StorageSettings(root=str(tmp_path / "data")),
        auth=auth,
        http=HttpSettings(metrics_protected=protected),
    )


async def open_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    assembly = assemble(settings)
    try:
        transport = httpx.ASGITransport(app=assembly.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
    finally:
        assembly.close()


async def test_metrics_need_credentials_by_default_with_htpasswd(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    auth = AuthSettings(htpasswd=HtpasswdAuth(realm="r", path=str(htpasswd)), anonymous_pull=True)
    async for c in open_client(base(tmp_path, auth)):
        assert (await c.get("/metrics")).status_code == 401  # anonymous_pull opens pulls, not metrics
        assert (await c.get("/metrics", headers=basic("alice", "nope"))).status_code == 401
        ok = await c.get("/metrics", headers=basic("alice", "wonderland"))
        assert ok.status_code == 200 and "lading_http_requests" in ok.text


async def test_an_operator_may_still_open_metrics(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    auth = AuthSettings(htpasswd=HtpasswdAuth(realm="r", path=str(htpasswd)))
    async for c in open_client(base(tmp_path, auth, protected=False)):
        assert (await c.get("/metrics")).status_code == 200


async def token(c: httpx.AsyncClient, *scopes: str, auth: dict[str, str] | None = None) -> dict[str, str]:
    params = [("service", SERVICE), *(("scope", s) for s in scopes)]
    r = await c.get("/auth/token", params=params, headers=auth or {})
    assert r.status_code == 200, r.text
    return bearer(r.json()["token"])


@pytest.mark.parametrize("protected", [None, True])
async def test_anonymous_or_empty_tokens_do_not_open_metrics(tmp_path: Path, protected: bool | None) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland", "bob": "builder"})
    policy = tmp_path / "policy.yml"
    policy.write_text(POLICY)
    key = write_private_key(tmp_path / "key.pem", new_key())
    tokens = token_settings(
        builtin_htpasswd=str(htpasswd), builtin_signing_key=str(key), policy_path=str(policy)
    ).auth
    settings = dataclasses.replace(base(tmp_path, tokens, protected))
    async for c in open_client(settings):
        assert (await c.get("/metrics")).status_code == 401
        anonymous = await token(c, "repository:public/x:pull")  # a real grant, but nobody's
        assert (await c.get("/v2/", headers=anonymous)).status_code == 200
        assert (await c.get("/metrics", headers=anonymous)).status_code == 403
        nothing = await token(c, auth=basic("bob", "builder"))  # bob's token grants nothing
        assert (await c.get("/metrics", headers=nothing)).status_code == 403
        alice = await token(c, "repository:team/app:pull", auth=basic("alice", "wonderland"))
        assert (await c.get("/metrics", headers=alice)).status_code == 200
