"""end-8a/8b (tag list), the catalog, and end-12a/12b (referrers)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    errors_of,
    oci_manifest,
    push_blob,
    push_image,
    push_manifest,
    sha,
)

pytestmark = pytest.mark.anyio

TAGS = ["1.0", "1.1", "2.0", "Latest", "alpha", "beta", "latest"]  # ASCII order


async def tagged_repo(api: Any, name: str = "repo") -> None:
    await push_blob(api.client, name, b"{}")
    body = oci_manifest()
    for tag in reversed(TAGS):
        assert (await push_manifest(api.client, name, tag, body)).status_code == 201


def next_link(response: Any) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert m, link
    return m.group(1)


# --- tags --------------------------------------------------------------------------------


async def test_tag_list_is_lexical(api: Any) -> None:
    await tagged_repo(api)
    r = await api.client.get("/v2/repo/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": "repo", "tags": TAGS}
    assert "link" not in r.headers


async def test_tag_list_pagination_follows_link_headers(api: Any) -> None:
    await tagged_repo(api)
    seen: list[str] = []
    url: str | None = "/v2/repo/tags/list?n=3"
    pages = 0
    while url and pages < 10:
        r = await api.client.get(url)
        assert r.status_code == 200
        tags = r.json()["tags"]
        seen += tags
        url = next_link(r)
        if url:
            assert len(tags) == 3
            assert url == f"/v2/repo/tags/list?n=3&last={tags[-1]}"
        pages += 1
    assert seen == TAGS
    assert pages == 3


async def test_tag_list_last_without_n(api: Any) -> None:
    await tagged_repo(api)
    r = await api.client.get("/v2/repo/tags/list", params={"last": "Latest"})
    assert r.json()["tags"] == ["alpha", "beta", "latest"]


async def test_tag_list_n_zero_is_empty_without_link(api: Any) -> None:
    await tagged_repo(api)
    r = await api.client.get("/v2/repo/tags/list", params={"n": "0"})
    assert r.json() == {"name": "repo", "tags": []}
    assert "link" not in r.headers


async def test_tag_list_exact_page_has_no_link(api: Any) -> None:
    await tagged_repo(api)
    r = await api.client.get("/v2/repo/tags/list", params={"n": str(len(TAGS))})
    assert r.json()["tags"] == TAGS
    assert "link" not in r.headers


async def test_tag_list_of_unknown_repository_is_404_name_unknown(api: Any) -> None:
    errors_of(await api.client.get("/v2/nothing/tags/list"), 404, "NAME_UNKNOWN")
    errors_of(await api.client.get("/v2/nothing/tags/list?n=0"), 404, "NAME_UNKNOWN")


@pytest.mark.parametrize("n", ["-1", "abc", "1.5"])
async def test_tag_list_bad_n_is_400(api: Any, n: str) -> None:
    await tagged_repo(api)
    r = await api.client.get("/v2/repo/tags/list", params={"n": n})
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


# --- catalog -----------------------------------------------------------------------------


async def test_catalog_lists_repositories_with_pagination(api: Any) -> None:
    names = ["a", "a/b", "b/c/d", "lib/x", "z"]
    for name in reversed(names):
        await push_image(api.client, name, "v1", [name.encode()])
    r = await api.client.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.json() == {"repositories": names}
    seen: list[str] = []
    url: str | None = "/v2/_catalog?n=2"
    pages = 0
    while url and pages < 10:
        r = await api.client.get(url)
        seen += r.json()["repositories"]
        url = next_link(r)
        pages += 1
    assert seen == names
    assert pages == 3
    r = await api.client.get("/v2/_catalog", params={"n": "2", "last": "a/b"})
    assert r.json()["repositories"] == ["b/c/d", "lib/x"]


async def test_empty_catalog(api: Any) -> None:
    r = await api.client.get("/v2/_catalog")
    assert r.json() == {"repositories": []}


# --- referrers ---------------------------------------------------------------------------


async def test_referrers_with_artifact_type_filter(api: Any) -> None:
    subject, subject_body = await push_image(api.client, "repo", "v1", [b"layer"])
    await push_blob(api.client, "repo", b"{}")
    pushed = {}
    for kind, note in (("sbom", "one"), ("sig", "two"), ("sbom", "three")):
        body = oci_manifest(
            subject=(subject, len(subject_body)),
            artifact_type=f"application/vnd.example.{kind}",
            annotations={"note": note},
        )
        r = await push_manifest(api.client, "repo", sha(body), body)
        assert r.status_code == 201, r.text
        assert r.headers["oci-subject"] == subject
        pushed[sha(body)] = (kind, note, len(body))

    r = await api.client.get(f"/v2/repo/referrers/{subject}")
    assert r.status_code == 200
    assert r.headers["content-type"] == OCI_INDEX
    assert "oci-filters-applied" not in r.headers
    index = r.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    assert {m["digest"] for m in index["manifests"]} == set(pushed)
    for m in index["manifests"]:
        kind, note, size = pushed[m["digest"]]
        assert m["mediaType"] == OCI_MANIFEST
        assert m["artifactType"] == f"application/vnd.example.{kind}"
        assert m["annotations"] == {"note": note}
        assert m["size"] == size

    sbom = {"artifactType": "application/vnd.example.sbom"}
    r = await api.client.get(f"/v2/repo/referrers/{subject}", params=sbom)
    assert r.status_code == 200
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert sorted(m["annotations"]["note"] for m in r.json()["manifests"]) == ["one", "three"]


async def test_referrers_of_unknown_subject_or_repository_is_an_empty_index(api: Any) -> None:
    for name in ("repo", "never/pushed"):
        r = await api.client.get(f"/v2/{name}/referrers/{sha(b'nothing')}")
        assert r.status_code == 200
        assert r.headers["content-type"] == OCI_INDEX
        assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_referrers_listed_even_before_the_subject_exists(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    ghost = sha(b"later")
    body = oci_manifest(subject=(ghost, 10), artifact_type="application/vnd.example.sig")
    assert (await push_manifest(api.client, "repo", sha(body), body)).status_code == 201
    r = await api.client.get(f"/v2/repo/referrers/{ghost}")
    assert [m["digest"] for m in r.json()["manifests"]] == [sha(body)]


async def test_referrers_bad_digest_is_400(api: Any) -> None:
    errors_of(await api.client.get("/v2/repo/referrers/sha256:bad"), 400, "DIGEST_INVALID")


async def test_deleted_referrer_leaves_the_list(api: Any) -> None:
    subject, subject_body = await push_image(api.client, "repo", "v1", [b"layer"])
    body = oci_manifest(subject=(subject, len(subject_body)), artifact_type="application/x")
    await push_manifest(api.client, "repo", sha(body), body)
    assert (await api.client.delete(f"/v2/repo/manifests/{sha(body)}")).status_code == 202
    r = await api.client.get(f"/v2/repo/referrers/{subject}")
    assert r.json()["manifests"] == []
