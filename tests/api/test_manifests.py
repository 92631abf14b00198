"""end-3 (GET/HEAD manifest), end-7a/7b (PUT) and end-9 (DELETE): happy paths, every invalid
manifest, missing blobs listed one by one, and deletes on and off."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.formats.digest import Digest
from pipeline.formats.manifests import MAX_MANIFEST_SIZE
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

LAYER = b"layer bytes " * 100


async def test_put_by_tag_then_get_and_head_by_tag_and_digest(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    await push_blob(api.client, "repo", LAYER)
    body = oci_manifest(b"{}", [LAYER])
    r = await push_manifest(api.client, "repo", "v1", body)
    assert r.status_code == 201, r.text
    digest = sha(body)
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["location"] == f"/v2/repo/manifests/{digest}"
    assert "oci-subject" not in r.headers
    for ref in ("v1", digest):
        for method in ("GET", "HEAD"):
            url = f"/v2/repo/manifests/{ref}"
            r = await api.client.request(method, url, headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200
            assert r.headers["content-type"] == OCI_MANIFEST
            assert r.headers["docker-content-digest"] == digest
            assert r.headers["content-length"] == str(len(body))
            assert r.headers["etag"] == f'"{digest}"'
            assert r.content == (body if method == "GET" else b"")


async def test_stored_bytes_are_returned_exactly(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    body = b'{  "schemaVersion" :2, "mediaType":"' + OCI_MANIFEST.encode() + b'",'
    body += b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'
    body += sha(b"{}").encode() + b'","size":2},"layers":[]}\n\n'
    assert (await push_manifest(api.client, "repo", "odd", body)).status_code == 201
    assert (await api.client.get("/v2/repo/manifests/odd")).content == body


async def test_put_by_digest(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    body = oci_manifest()
    r = await push_manifest(api.client, "repo", sha(body), body)
    assert r.status_code == 201
    assert r.headers["docker-content-digest"] == sha(body)
    assert (await api.client.get("/v2/repo/tags/list")).json()["tags"] == []


async def test_put_by_digest_that_does_not_match_body_is_400(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    body = oci_manifest()
    r = await push_manifest(api.client, "repo", sha(b"other"), body)
    errors_of(r, 400, "DIGEST_INVALID")
    errors_of(await api.client.get(f"/v2/repo/manifests/{sha(body)}"), 404, "MANIFEST_UNKNOWN")


async def test_put_with_extra_tags_by_digest(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    body = oci_manifest()
    r = await api.client.put(
        f"/v2/repo/manifests/{sha(body)}",
        params=[("tag", "1.0"), ("tag", "latest")],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text
    assert r.headers["oci-tag"] == "1.0, latest"
    assert (await api.client.get("/v2/repo/tags/list")).json()["tags"] == ["1.0", "latest"]


async def test_a_tag_repeated_in_the_query_is_pushed_and_echoed_once(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    body = oci_manifest()
    url = f"/v2/repo/manifests/{sha(body)}"
    r = await api.client.put(
        url,
        params=[("tag", "a"), ("tag", "b"), ("tag", "a")],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text
    assert r.headers["oci-tag"] == "a, b"
    assert (await api.client.get("/v2/repo/tags/list")).json()["tags"] == ["a", "b"]


async def test_content_type_parameters_are_ignored(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    body = oci_manifest()
    r = await push_manifest(api.client, "repo", "v1", body, media_type=OCI_MANIFEST + "; charset=utf-8")
    assert r.status_code == 201, r.text
    assert (await api.client.get("/v2/repo/manifests/v1")).headers["content-type"] == OCI_MANIFEST


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.mark.parametrize("content_type", [DOCKER_MANIFEST, OCI_INDEX])
async def test_content_type_the_stored_manifest_would_not_be_served_as_is_400(
    api: Any, content_type: str
) -> None:
    # No mediaType field: the manifest is served by its shape (an OCI image manifest), so
    # accepting it under another Content-Type would pull it as a different type than pushed.
    await push_blob(api.client, "repo", b"{}")
    doc = json.loads(oci_manifest())
    del doc["mediaType"]
    body = json.dumps(doc).encode()
    r = await push_manifest(api.client, "repo", "v1", body, media_type=content_type)
    (error,) = errors_of(r, 400, "MANIFEST_INVALID")
    assert "mediaType" in str(error["detail"])
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    # The same bytes under the type they are served as are accepted, and pulled as such.
    assert (await push_manifest(api.client, "repo", "v1", body, media_type=OCI_MANIFEST)).status_code == 201
    assert (await api.client.get("/v2/repo/manifests/v1")).headers["content-type"] == OCI_MANIFEST


async def test_field_and_content_type_disagreeing_is_400_and_stores_nothing(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(), media_type=DOCKER_MANIFEST)
    errors_of(r, 400, "MANIFEST_INVALID")
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")


UNKNOWN_TYPE = json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode()
SCHEMA1 = json.dumps(
    {"schemaVersion": 1, "name": "repo", "tag": "v1", "architecture": "amd64", "fsLayers": [], "history": []}
).encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (SCHEMA1, "application/vnd.docker.distribution.manifest.v1+json"),
        (SCHEMA1, "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        (b"{not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (UNKNOWN_TYPE, "application/x-unknown"),
        (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(), OCI_MANIFEST),
        (oci_manifest()[:-1] + b',"x":NaN}', OCI_MANIFEST),
    ],
    ids=["schema1", "schema1-signed", "bad-json", "not-an-object", "unknown-type", "no-config", "nan"],
)
async def test_invalid_manifests_are_400_manifest_invalid_and_store_nothing(
    api: Any, body: bytes, content_type: str
) -> None:
    r = await push_manifest(api.client, "repo", "bad", body, media_type=content_type)
    errors_of(r, 400, "MANIFEST_INVALID")
    errors_of(await api.client.get("/v2/repo/manifests/bad"), 404, "MANIFEST_UNKNOWN")
    assert not api.registry.blobs.exists(Digest.parse(sha(body)))


async def test_a_field_spelled_in_another_case_is_400_and_stores_nothing(api: Any) -> None:
    # `Layers` is `layers` to Go clients (encoding/json folds case): accepted, this manifest
    # would be verified with no layers here and pulled with a layer no one pushed.
    await push_blob(api.client, "repo", b"{}")
    doc = json.loads(oci_manifest())
    doc["Layers"] = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(b"never"), "size": 5}
    ]
    body = json.dumps(doc).encode()
    (error,) = errors_of(await push_manifest(api.client, "repo", "v1", body), 400, "MANIFEST_INVALID")
    assert "'Layers'" in str(error["detail"])
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_oversized_manifest_is_413_and_not_read_further(api: Any) -> None:
    body = b" " * (MAX_MANIFEST_SIZE + 1)
    r = await push_manifest(api.client, "repo", "big", body)
    errors_of(r, 413, "MANIFEST_INVALID")
    errors_of(await api.client.get("/v2/repo/manifests/big"), 404, "MANIFEST_UNKNOWN")


async def test_manifest_with_three_missing_blobs_lists_each_one(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    present = await push_blob(api.client, "repo", LAYER)
    missing = [sha(b"missing one"), sha(b"missing two"), sha(b"missing three")]
    body = oci_manifest(b"{}", [LAYER], missing=missing)
    r = await push_manifest(api.client, "repo", "v1", body)
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert len(entries) == 3
    assert sorted(e["detail"]["digest"] for e in entries) == sorted(missing)
    assert present not in {e["detail"]["digest"] for e in entries}
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert not api.registry.blobs.exists(Digest.parse(sha(body)))


async def test_blob_of_another_repository_counts_as_missing(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    await push_blob(api.client, "other", LAYER)
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(b"{}", [LAYER]))
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert [e["detail"]["digest"] for e in entries] == [sha(LAYER)]


@pytest.mark.parametrize("tag", ["-bad", "a" * 129, "tag!"])
async def test_bad_tag_is_400_tag_invalid(api: Any, tag: str) -> None:
    await push_blob(api.client, "repo", b"{}")
    errors_of(await push_manifest(api.client, "repo", tag, oci_manifest()), 400, "TAG_INVALID")
    # A reference no push could create names no manifest: reads answer 404, as the spec and
    # the conformance suite require for a missing manifest.
    errors_of(await api.client.get(f"/v2/repo/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")
    assert (await api.client.head(f"/v2/repo/manifests/{tag}")).status_code == 404


async def test_malformed_digest_reference_is_400(api: Any) -> None:
    errors_of(await api.client.get("/v2/repo/manifests/sha256:totallywrong"), 400, "DIGEST_INVALID")
    r = await push_manifest(api.client, "repo", "sha256:totallywrong", b"{}")
    errors_of(r, 400, "DIGEST_INVALID")


async def test_unknown_manifest_is_404(api: Any) -> None:
    errors_of(await api.client.get("/v2/repo/manifests/latest"), 404, "MANIFEST_UNKNOWN")
    errors_of(await api.client.get(f"/v2/repo/manifests/{sha(b'x')}"), 404, "MANIFEST_UNKNOWN")
    assert (await api.client.head("/v2/repo/manifests/latest")).status_code == 404


async def test_if_none_match_gives_304(api: Any) -> None:
    digest, _ = await push_image(api.client, "repo", "v1", [LAYER])
    r = await api.client.get("/v2/repo/manifests/v1", headers={"If-None-Match": f'"{digest}"'})
    assert r.status_code == 304


async def test_index_referencing_child_manifests(api: Any) -> None:
    child, child_body = await push_image(api.client, "repo", "amd64", [LAYER])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": len(child_body)}],
        }
    ).encode()
    r = await push_manifest(api.client, "repo", "multi", index, media_type=OCI_INDEX)
    assert r.status_code == 201, r.text
    assert (await api.client.get("/v2/repo/manifests/multi")).headers["content-type"] == OCI_INDEX
    missing_child = json.loads(index)
    missing_child["manifests"][0]["digest"] = sha(b"no such manifest")
    r = await push_manifest(api.client, "repo", "broken", json.dumps(missing_child).encode(), OCI_INDEX)
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert entries[0]["detail"]["digest"] == sha(b"no such manifest")


async def test_subject_gives_oci_subject_header(api: Any) -> None:
    subject, subject_body = await push_image(api.client, "repo", "v1", [LAYER])
    await push_blob(api.client, "repo", b"{}")
    body = oci_manifest(subject=(subject, len(subject_body)), artifact_type="application/vnd.example.sig")
    r = await push_manifest(api.client, "repo", sha(body), body)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject


async def test_subject_may_be_absent_when_pushed(api: Any) -> None:
    await push_blob(api.client, "repo", b"{}")
    ghost = sha(b"not pushed yet")
    body = oci_manifest(subject=(ghost, 123))
    r = await push_manifest(api.client, "repo", sha(body), body)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == ghost


async def test_delete_by_tag_removes_only_the_tag(api: Any) -> None:
    digest, _ = await push_image(api.client, "repo", "v1", [LAYER])
    assert (await api.client.delete("/v2/repo/manifests/v1")).status_code == 202
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert (await api.client.get(f"/v2/repo/manifests/{digest}")).status_code == 200
    errors_of(await api.client.delete("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_delete_by_digest_removes_revision_and_its_tags(api: Any) -> None:
    digest, _ = await push_image(api.client, "repo", "v1", [LAYER])
    body = oci_manifest(b"{}", [LAYER])
    assert (await push_manifest(api.client, "repo", "v2", body)).status_code == 201
    assert (await api.client.delete(f"/v2/repo/manifests/{digest}")).status_code == 202
    for ref in (digest, "v1", "v2"):
        errors_of(await api.client.get(f"/v2/repo/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
    assert (await api.client.get("/v2/repo/tags/list")).json()["tags"] == []
    errors_of(await api.client.delete(f"/v2/repo/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")


async def test_deletes_refused_when_disabled(make_api: Any) -> None:
    api = await make_api(delete_enabled=False)
    digest, _ = await push_image(api.client, "repo", "v1", [LAYER])
    errors_of(await api.client.delete("/v2/repo/manifests/v1"), 405, "UNSUPPORTED")
    errors_of(await api.client.delete(f"/v2/repo/manifests/{digest}"), 405, "UNSUPPORTED")
    assert (await api.client.get("/v2/repo/manifests/v1")).status_code == 200


@pytest.mark.parametrize("change", ["bom", "schema-2.0", "data-not-base64", "data-other-bytes"])
async def test_manifests_distribution_refuses_are_400_and_not_stored(api: Any, change: str) -> None:
    await push_blob(api.client, "repo", b"{}")
    doc = json.loads(oci_manifest(b"{}", []))
    if change == "schema-2.0":
        doc["schemaVersion"] = 2.0
    elif change == "data-not-base64":
        doc["config"]["data"] = "!!!not-base64"
    elif change == "data-other-bytes":
        doc["config"]["data"] = "W10="  # b"[]": the right size, not the config's bytes
    body = json.dumps(doc).encode()
    if change == "bom":
        body = b"\xef\xbb\xbf" + body
    errors_of(await push_manifest(api.client, "repo", "v1", body), 400, "MANIFEST_INVALID")
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
