"""Access control: the router consults api.access_table once per request, and the table covers
every route the router serves. The Access here is a recording fake (api.auth is tested there)."""

from __future__ import annotations

from typing import Any

import pytest

from api.access_table import CATALOG, TABLE, rule_for
from api.auth.challenge import unauthorized
from api.routes.router import ROUTES
from pipeline.errors import Denied
from tests.api.helpers import errors_of, push_blob, push_image, sha

pytestmark = pytest.mark.anyio


class FakeAccess:
    """Grants what `allowed` lists as (repository, action); records every call."""

    def __init__(
        self, allowed: set[tuple[str | None, str]] | None = None, authenticated: bool = True
    ) -> None:
        self.allowed = allowed if allowed is not None else set()
        self.authenticated = authenticated
        self.calls: list[tuple[str | None, frozenset[str]]] = []

    async def authorize(self, request: Any, repository: str | None, actions: set[str]) -> str:
        self.calls.append((repository, frozenset(actions)))
        if not self.authenticated:
            raise unauthorized('Basic realm="test"', [])
        if all((repository, a) in self.allowed for a in actions):
            return "tester"
        raise Denied([{"Type": "repository", "Name": repository, "Action": a} for a in sorted(actions)])


def test_every_served_route_and_method_has_a_rule() -> None:
    for route in ROUTES:
        for method in route.allowed():
            rule = rule_for(route.name, method)
            assert rule.scope in ("repository", "registry", "catalog")
    served = {(r.name, m) for r in ROUTES for m in r.handlers}
    assert served == set(TABLE), "the table lists exactly what the router serves"


@pytest.mark.parametrize(
    ("method", "path", "repository", "actions"),
    [
        ("GET", "/v2/", None, set()),
        ("GET", "/v2/_catalog", None, {CATALOG}),
        ("GET", "/v2/a/b/tags/list", "a/b", {"pull"}),
        ("GET", "/v2/a/b/manifests/v1", "a/b", {"pull"}),
        ("HEAD", "/v2/a/b/manifests/v1", "a/b", {"pull"}),
        ("PUT", "/v2/a/b/manifests/v1", "a/b", {"pull", "push"}),
        ("DELETE", "/v2/a/b/manifests/v1", "a/b", {"delete"}),
        ("GET", f"/v2/a/b/blobs/{sha(b'x')}", "a/b", {"pull"}),
        ("HEAD", f"/v2/a/b/blobs/{sha(b'x')}", "a/b", {"pull"}),
        ("DELETE", f"/v2/a/b/blobs/{sha(b'x')}", "a/b", {"delete"}),
        ("POST", "/v2/a/b/blobs/uploads/", "a/b", {"pull", "push"}),
        ("GET", "/v2/a/b/blobs/uploads/some-id", "a/b", {"pull", "push"}),
        ("PATCH", "/v2/a/b/blobs/uploads/some-id", "a/b", {"pull", "push"}),
        ("PUT", "/v2/a/b/blobs/uploads/some-id", "a/b", {"pull", "push"}),
        ("DELETE", "/v2/a/b/blobs/uploads/some-id", "a/b", {"pull", "push"}),
        ("GET", f"/v2/a/b/referrers/{sha(b'x')}", "a/b", {"pull"}),
    ],
)
async def test_each_request_is_authorized_once_with_the_table_actions(
    make_api: Any, method: str, path: str, repository: str | None, actions: set[str]
) -> None:
    access = FakeAccess(authenticated=False)
    api = await make_api(access=access)
    r = await api.client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="test"'
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    if method != "HEAD":
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert access.calls == [(repository, frozenset(actions))]


async def test_denied_is_403_and_nothing_happens(make_api: Any) -> None:
    access = FakeAccess(allowed={("repo", "pull")})
    api = await make_api(access=access)
    errors_of(await api.client.post("/v2/repo/blobs/uploads/"), 403, "DENIED")
    assert list(api.registry.uploads.sessions("repo")) == []


async def test_allowed_requests_proceed(make_api: Any) -> None:
    access = FakeAccess(allowed={("repo", "pull"), ("repo", "push")})
    api = await make_api(access=access)
    digest = await push_blob(api.client, "repo", b"data")
    assert (await api.client.get(f"/v2/repo/blobs/{digest}")).content == b"data"


async def test_name_is_validated_before_access_is_asked(make_api: Any) -> None:
    access = FakeAccess(authenticated=False)
    api = await make_api(access=access)
    errors_of(await api.client.get("/v2/Bad/tags/list"), 400, "NAME_INVALID")
    assert access.calls == []


async def test_mount_needs_pull_on_source_else_falls_back_to_upload(make_api: Any) -> None:
    open_api = await make_api()
    digest = await push_blob(open_api.client, "secret", b"secret bytes")
    access = FakeAccess(allowed={("target", "pull"), ("target", "push")})
    api = await make_api(registry=open_api.registry, access=access)
    r = await api.client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "secret"})
    assert r.status_code == 202, r.text  # same answer as for a blob that does not exist
    assert r.headers["location"].startswith("/v2/target/blobs/uploads/")
    assert ("secret", frozenset({"pull"})) in access.calls
    errors_of(await api.client.get(f"/v2/target/blobs/{digest}"), 404, "BLOB_UNKNOWN")

    access.allowed.add(("secret", "pull"))
    r = await api.client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "secret"})
    assert r.status_code == 201
    assert (await api.client.get(f"/v2/target/blobs/{digest}")).content == b"secret bytes"


async def test_unknown_route_does_not_consult_access(make_api: Any) -> None:
    access = FakeAccess(authenticated=False)
    api = await make_api(access=access)
    errors_of(await api.client.get("/elsewhere"), 404, "UNSUPPORTED")
    assert access.calls == []


async def test_catalog_lists_only_what_the_caller_may_see(make_api: Any) -> None:
    open_api = await make_api()
    for name in ("public/a", "private/b", "public/c"):
        await push_image(open_api.client, name, "v1", [name.encode()])
    access = FakeAccess(allowed={(None, CATALOG)})
    access.catalog_visible = lambda identity, repository: repository.startswith("public/")  # type: ignore[attr-defined]
    api = await make_api(registry=open_api.registry, access=access)
    r = await api.client.get("/v2/_catalog")
    assert r.json() == {"repositories": ["public/a", "public/c"]}
    r = await api.client.get("/v2/_catalog", params={"n": "1"})
    assert r.json() == {"repositories": ["public/a"]}
    assert r.headers["link"] == '</v2/_catalog?n=1&last=public%2Fa>; rel="next"'


async def test_with_the_real_htpasswd_access_controller(make_api: Any, tmp_path: Any) -> None:
    """The router and api.auth.Access together: challenge, then authenticated push and pull."""
    import bcrypt
    import httpx

    from api.auth import Access
    from pipeline.config import AuthSettings, HtpasswdAuth, Settings

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode() + "\n")
    access = Access(Settings(auth=AuthSettings(htpasswd=HtpasswdAuth(realm="lading", path=str(htpasswd)))))
    api = await make_api(access=access)

    r = await api.client.get("/v2/")
    errors_of(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == 'Basic realm="lading"'
    errors_of(await api.client.post("/v2/repo/blobs/uploads/"), 401, "UNAUTHORIZED")
    errors_of(await api.client.get("/v2/_catalog"), 401, "UNAUTHORIZED")

    api.client.auth = httpx.BasicAuth("alice", "wrong")
    errors_of(await api.client.get("/v2/"), 401, "UNAUTHORIZED")

    api.client.auth = httpx.BasicAuth("alice", "secret")
    assert (await api.client.get("/v2/")).status_code == 200
    digest, _ = await push_image(api.client, "team/app", "v1", [b"layer"])
    assert (await api.client.get("/v2/team/app/manifests/v1")).headers["docker-content-digest"] == digest
    assert (await api.client.get("/v2/_catalog")).json() == {"repositories": ["team/app"]}
