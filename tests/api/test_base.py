"""end-1 (GET /v2/), unknown routes, wrong methods, and the API-version header on every answer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import errors_of, push_blob, sha

pytestmark = pytest.mark.anyio

VERSION = ("docker-distribution-api-version", "registry/2.0")


async def test_version_check_answers_200_with_empty_object(api: Any) -> None:
    r = await api.client.get("/v2/")
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers[VERSION[0]] == VERSION[1]


async def test_head_version_check(api: Any) -> None:
    r = await api.client.head("/v2/")
    assert r.status_code == 200
    assert r.headers[VERSION[0]] == VERSION[1]


async def test_unknown_route_is_404_with_oci_body_and_version_header(api: Any) -> None:
    for path in ("/", "/nope", "/v2/foo", "/v3/", "/v2/foo/unknown/thing"):
        r = await api.client.get(path)
        entries = errors_of(r, 404, "UNSUPPORTED")
        assert entries[0]["message"]


async def test_wrong_method_is_405_unsupported_with_allow(api: Any) -> None:
    r = await api.client.post("/v2/foo/tags/list")
    errors_of(r, 405, "UNSUPPORTED")
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}
    r = await api.client.patch(f"/v2/foo/blobs/{sha(b'x')}")
    errors_of(r, 405, "UNSUPPORTED")


async def test_version_header_on_every_kind_of_answer(api: Any) -> None:
    digest = await push_blob(api.client, "repo", b"data")
    answers = [
        await api.client.get("/v2/"),
        await api.client.get(f"/v2/repo/blobs/{digest}"),
        await api.client.head(f"/v2/repo/blobs/{digest}"),
        await api.client.get(f"/v2/repo/blobs/{sha(b'other')}"),  # 404 BLOB_UNKNOWN
        await api.client.get("/v2/repo/manifests/latest"),  # 404 MANIFEST_UNKNOWN
        await api.client.head("/v2/repo/manifests/latest"),  # 404 without body
        await api.client.get("/v2/BAD/tags/list"),  # 400 NAME_INVALID
        await api.client.get("/no/such/route"),  # 404
        await api.client.put("/v2/"),  # 405
        await api.client.post("/v2/repo/blobs/uploads/"),  # 202
    ]
    for r in answers:
        assert r.headers.get(VERSION[0]) == VERSION[1], (r.request.method, r.request.url, r.status_code)


async def test_head_errors_have_no_body(api: Any) -> None:
    r = await api.client.head(f"/v2/repo/blobs/{sha(b'missing')}")
    assert r.status_code == 404
    assert r.content == b""


async def test_http_prefix_serves_and_locates_under_the_prefix(make_api: Any) -> None:
    api = await make_api(prefix="/registry")
    assert (await api.client.get("/registry/v2/")).status_code == 200
    errors_of(await api.client.get("/v2/"), 404, "UNSUPPORTED")
    r = await api.client.post("/registry/v2/repo/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["location"].startswith("/registry/v2/repo/blobs/uploads/")


async def test_http_host_makes_locations_absolute(make_api: Any) -> None:
    api = await make_api(host="https://registry.example.com")
    r = await api.client.post("/v2/repo/blobs/uploads/")
    assert r.headers["location"].startswith("https://registry.example.com/v2/repo/blobs/uploads/")
