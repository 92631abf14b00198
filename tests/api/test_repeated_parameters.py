"""A query parameter given twice with different values (`?digest=a&digest=b`, `?n=1&n=2`) is
ambiguous: Lading never silently picks one (distribution keeps the first, Starlette the
last). It answers a 400 naming it, or the spec's fallback where there is one (a mount
becomes a plain upload session, a referrers filter is not applied). The same value
repeated is that value."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import OCTET, errors_of, oci_manifest, push_blob, push_image, push_manifest, sha

pytestmark = pytest.mark.anyio

DATA = b"the blob's bytes"
OTHER = sha(b"some other bytes")


async def _session(api: Any, name: str = "repo") -> str:
    r = await api.client.post(f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 202
    return str(r.headers["location"])


@pytest.mark.parametrize("order", ["right-first", "right-last"])
async def test_put_with_two_different_digests_is_400_and_keeps_the_session(api: Any, order: str) -> None:
    location = await _session(api)
    digests = [sha(DATA), OTHER] if order == "right-first" else [OTHER, sha(DATA)]
    r = await api.client.put(location, params=[("digest", d) for d in digests], content=DATA, headers=OCTET)
    (error,) = errors_of(r, 400, "DIGEST_INVALID")
    assert error["detail"] == {"digest": digests}
    errors_of(await api.client.get(f"/v2/repo/blobs/{sha(DATA)}"), 404, "BLOB_UNKNOWN")
    # Nothing was read or changed: the session is there, empty, and completes normally.
    status = await api.client.get(location)
    assert status.status_code == 204 and status.headers["range"] == "0-0"
    r = await api.client.put(location, params={"digest": sha(DATA)}, content=DATA, headers=OCTET)
    assert r.status_code == 201, r.text


async def test_put_with_the_same_digest_twice_completes(api: Any) -> None:
    location = await _session(api)
    r = await api.client.put(location, params=[("digest", sha(DATA))] * 2, content=DATA, headers=OCTET)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == sha(DATA)


async def test_monolithic_post_with_two_different_digests_is_400_and_links_nothing(api: Any) -> None:
    params = [("digest", OTHER), ("digest", sha(DATA))]
    r = await api.client.post("/v2/repo/blobs/uploads/", params=params, content=DATA, headers=OCTET)
    errors_of(r, 400, "DIGEST_INVALID")
    errors_of(await api.client.get(f"/v2/repo/blobs/{sha(DATA)}"), 404, "BLOB_UNKNOWN")


async def test_two_different_digest_algorithms_are_400(api: Any) -> None:
    params = [("digest-algorithm", "sha256"), ("digest-algorithm", "sha512")]
    errors_of(await api.client.post("/v2/repo/blobs/uploads/", params=params), 400, "DIGEST_INVALID")


async def test_tag_list_with_two_different_n_or_last_is_400(api: Any) -> None:
    for tag in ("a", "b", "c"):
        await push_image(api.client, "repo", tag, [b"layer"])
    r = await api.client.get("/v2/repo/tags/list", params=[("n", "1"), ("n", "2")])
    (error,) = errors_of(r, 400, "PAGINATION_NUMBER_INVALID")
    assert error["detail"] == {"n": ["1", "2"]}
    errors_of(
        await api.client.get("/v2/repo/tags/list", params=[("last", "a"), ("last", "b")]), 400, "TAG_INVALID"
    )
    r = await api.client.get(
        "/v2/repo/tags/list", params=[("n", "2"), ("n", "2"), ("last", "a"), ("last", "a")]
    )
    assert r.json() == {"name": "repo", "tags": ["b", "c"]}


async def test_catalog_with_two_different_n_or_last_is_400(api: Any) -> None:
    for name in ("one", "two"):
        await push_image(api.client, name, "v1", [name.encode()])
    errors_of(
        await api.client.get("/v2/_catalog", params=[("n", "2"), ("n", "1")]),
        400,
        "PAGINATION_NUMBER_INVALID",
    )
    r = await api.client.get("/v2/_catalog", params=[("last", "one"), ("last", "two")])
    errors_of(r, 400, "NAME_INVALID")


@pytest.mark.parametrize("ambiguous", ["mount", "from"])
async def test_mount_with_ambiguous_arguments_falls_back_to_an_upload_session(
    api: Any, ambiguous: str
) -> None:
    digest = await push_blob(api.client, "source", DATA)
    await push_blob(api.client, "elsewhere", b"elsewhere")
    if ambiguous == "mount":
        params = [("mount", OTHER), ("mount", digest), ("from", "source")]
    else:
        params = [("mount", digest), ("from", "elsewhere"), ("from", "source")]
    r = await api.client.post("/v2/target/blobs/uploads/", params=params)
    assert r.status_code == 202, r.text  # the spec's answer to mount arguments it cannot use
    assert r.headers["location"].startswith("/v2/target/blobs/uploads/")
    errors_of(await api.client.get(f"/v2/target/blobs/{digest}"), 404, "BLOB_UNKNOWN")


async def test_referrers_with_two_different_artifact_types_are_not_filtered(api: Any) -> None:
    subject, subject_body = await push_image(api.client, "repo", "v1", [b"layer"])
    await push_blob(api.client, "repo", b"{}")
    pushed = set()
    for kind in ("sbom", "sig"):
        body = oci_manifest(
            subject=(subject, len(subject_body)), artifact_type=f"application/vnd.example.{kind}"
        )
        assert (await push_manifest(api.client, "repo", sha(body), body)).status_code == 201
        pushed.add(sha(body))
    params = [
        ("artifactType", "application/vnd.example.sbom"),
        ("artifactType", "application/vnd.example.sig"),
    ]
    r = await api.client.get(f"/v2/repo/referrers/{subject}", params=params)
    assert r.status_code == 200
    assert "oci-filters-applied" not in r.headers  # the client filters, as the spec says
    assert {m["digest"] for m in r.json()["manifests"]} == pushed
