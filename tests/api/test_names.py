"""Repository names in every route: slashes allowed, the spec grammar enforced (NAME_INVALID)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import errors_of, push_blob, push_image, sha

pytestmark = pytest.mark.anyio

BAD_NAMES = [
    "UPPER",
    "repo/UPPER",
    "a/%2E%2E/b",  # a/../b, encoded so the HTTP client does not normalise it away
    "%2E%2E",
    "a/./b".replace(".", "%2E"),
    "a//b",
    "-leading",
    "trailing-",
    "a" * 256,
    "/".join(["abcdefghij"] * 23) + "/abcdefg",  # 261 characters in segments
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_names_are_400_name_invalid_on_every_route(api: Any, name: str) -> None:
    digest = sha(b"x")
    requests = [
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("GET", f"/v2/{name}/blobs/{digest}"),
        ("DELETE", f"/v2/{name}/blobs/{digest}"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("PATCH", f"/v2/{name}/blobs/uploads/0b5e6a4e-8f7c-4c57-9f43-5a4f3a1f0c11"),
        ("GET", f"/v2/{name}/referrers/{digest}"),
    ]
    for method, path in requests:
        r = await api.client.request(method, path, content=b"{}" if method in ("PUT", "PATCH") else None)
        errors_of(r, 400, "NAME_INVALID")


async def test_nothing_is_created_for_a_bad_name(api: Any) -> None:
    await api.client.post("/v2/Bad/blobs/uploads/")
    assert list(api.registry.catalog.repositories()) == []


async def test_255_character_name_and_deep_names_work(api: Any) -> None:
    long_name = "/".join(["a" * 50] * 5) + "b"
    assert len(long_name) == 255
    digest = await push_blob(api.client, long_name, b"layer")
    r = await api.client.head(f"/v2/{long_name}/blobs/{digest}")
    assert r.status_code == 200


async def test_names_that_contain_route_words(api: Any) -> None:
    """`<name>` may itself contain `blobs`, `manifests`, `tags`: the suffix decides."""
    for name in ("blobs/manifests", "a/blobs/uploads/b", "tags/list", "x/referrers"):
        digest, _ = await push_image(api.client, name, "v1", [b"layer of " + name.encode()])
        r = await api.client.get(f"/v2/{name}/manifests/v1")
        assert r.status_code == 200, (name, r.text)
        assert r.headers["docker-content-digest"] == digest
        r = await api.client.get(f"/v2/{name}/tags/list")
        assert r.json() == {"name": name, "tags": ["v1"]}
