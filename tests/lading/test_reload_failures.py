"""A policy or htpasswd file that changed on disk but cannot be loaded keeps the last good
rules in force, and says so: `/healthz` is "degraded" (still 200) naming the file, and
`lading_auth_reload_failed{file}` is 1 until a good version is loaded.

Before: only a warning in the log while the old, possibly broader, rules stayed in force.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lading.embedded import assemble
from pipeline.config import AuthSettings, HtpasswdAuth, Settings, StorageSettings
from tests.api.auth.conftest import basic, touch_newer, write_htpasswd

pytestmark = pytest.mark.anyio

POLICY = "rules:\n  - repositories: ['**']\n    users: [alice]\n    actions: ['*']\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def metric(text: str, path: Path) -> float:
    for line in text.splitlines():
        if line.startswith("lading_auth_reload_failed{") and f'file="{path}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no lading_auth_reload_failed for {path}:\n{text[-2000:]}")


async def test_a_broken_policy_reload_is_visible_in_health_and_metrics(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    policy = tmp_path / "policy.yml"
    policy.write_text(POLICY)
    auth = AuthSettings(htpasswd=HtpasswdAuth(realm="r", path=str(htpasswd)), policy_path=str(policy))
    assembly = assemble(Settings(storage=StorageSettings(root=str(tmp_path / "data")), auth=auth))
    alice = basic("alice", "wonderland")
    try:
        transport = httpx.ASGITransport(app=assembly.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            health = (await c.get("/healthz")).json()
            assert health["status"] == "ok" and health["checks"]["auth"] == {"ok": True}
            assert metric((await c.get("/metrics", headers=alice)).text, policy) == 0

            policy.write_text("rules: [this is: not: yaml")
            touch_newer(policy)
            r = await c.get("/healthz")
            assert r.status_code == 200
            assert r.json()["status"] == "degraded"
            assert str(policy) in r.json()["checks"]["auth"]["stale"]
            assert metric((await c.get("/metrics", headers=alice)).text, policy) == 1
            # The last good rules are still in force.
            assert (await c.get("/v2/_catalog", headers=alice)).status_code == 200

            policy.write_text(POLICY)
            touch_newer(policy)
            assert (await c.get("/healthz")).json()["status"] == "ok"
            assert metric((await c.get("/metrics", headers=alice)).text, policy) == 0

            htpasswd.unlink()  # a deleted htpasswd: the old users still log in, visibly
            health = (await c.get("/healthz")).json()
            assert health["status"] == "degraded" and str(htpasswd) in health["checks"]["auth"]["stale"]
    finally:
        assembly.close()
