"""end-2 (GET/HEAD blob), Range requests, redirects, local-file serving and end-10 (DELETE)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import MaintenanceSettings, Settings, StorageSettings
from pipeline.formats.digest import Digest
from pipeline.maintenance import scrub
from pipeline.registry import build_registry
from tests.api.helpers import OCI_MANIFEST, errors_of, push_blob, push_image, sha

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 40  # 10 KiB, every byte value


async def test_head_and_get_blob_headers_and_bytes(api: Any) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    for method in ("HEAD", "GET"):
        r = await api.client.request(method, f"/v2/repo/blobs/{digest}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(DATA))
        assert r.headers["docker-content-digest"] == digest
        assert r.headers["etag"] == f'"{digest}"'
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.content == (DATA if method == "GET" else b"")


async def test_unknown_blob_is_404_blob_unknown(api: Any) -> None:
    errors_of(await api.client.get(f"/v2/repo/blobs/{sha(b'nope')}"), 404, "BLOB_UNKNOWN")
    r = await api.client.head(f"/v2/repo/blobs/{sha(b'nope')}")
    assert r.status_code == 404


async def test_blob_of_another_repository_is_not_visible(api: Any) -> None:
    digest = await push_blob(api.client, "one", DATA)
    errors_of(await api.client.get(f"/v2/two/blobs/{digest}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("bad", ["sha256:short", "md5:abcd", "nocolon", "sha256:" + "A" * 64])
async def test_malformed_digest_is_400_digest_invalid(api: Any, bad: str) -> None:
    errors_of(await api.client.get(f"/v2/repo/blobs/{bad}"), 400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=10000-", 10000, len(DATA) - 1),
        ("bytes=-16", len(DATA) - 16, len(DATA) - 1),
        ("bytes=10200-999999", 10200, len(DATA) - 1),
    ],
)
async def test_range_gives_206_with_content_range(api: Any, header: str, start: int, end: int) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    r = await api.client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert r.headers["content-length"] == str(end - start + 1)
    assert r.content == DATA[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
async def test_unsatisfiable_range_is_416_with_size(api: Any, header: str) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    r = await api.client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-1", "bytes=9-2", "garbage"])
async def test_unusable_range_is_ignored(api: Any, header: str) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    r = await api.client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 200
    assert r.content == DATA


async def test_if_none_match_gives_304(api: Any) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    r = await api.client.get(f"/v2/repo/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert r.status_code == 304
    assert r.content == b""
    r = await api.client.get(f"/v2/repo/blobs/{digest}", headers={"If-None-Match": '"other"'})
    assert r.status_code == 200


async def test_empty_blob(api: Any) -> None:
    digest = await push_blob(api.client, "repo", b"")
    r = await api.client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"


async def test_blob_served_from_local_file_of_filesystem_driver(make_api: Any, tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(driver="filesystem", root=str(tmp_path)))
    api = await make_api(registry=build_registry(settings))
    big = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    digest = await push_blob(api.client, "repo", big)
    assert api.registry.blobs.local_path(Digest.parse(digest)) is not None
    r = await api.client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == big
    r = await api.client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=1048570-2097160"})
    assert r.status_code == 206
    assert r.content == big[1048570:2097161]


async def test_redirect_when_driver_offers_urls_and_redirects_are_enabled(make_api: Any) -> None:
    api = await make_api(redirect_disabled=False)
    digest = await push_blob(api.client, "repo", DATA)
    api.registry.blobs.redirect_url = lambda d, method="GET": f"https://cdn.example/{d.hex}"
    r = await api.client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 307
    assert r.headers["location"] == f"https://cdn.example/{digest.split(':')[1]}"
    assert r.headers["docker-content-digest"] == digest
    head = await api.client.head(f"/v2/repo/blobs/{digest}")
    assert head.status_code == 200  # HEAD is answered here, never redirected


async def test_no_redirect_when_redirects_are_disabled(api: Any) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    api.registry.blobs.redirect_url = lambda d, method="GET": "https://cdn.example/x"
    r = await api.client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == DATA


async def test_delete_blob_unlinks_it(api: Any) -> None:
    digest = await push_blob(api.client, "repo", DATA)
    r = await api.client.delete(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 202
    errors_of(await api.client.get(f"/v2/repo/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    errors_of(await api.client.delete(f"/v2/repo/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    errors_of(await api.client.delete("/v2/repo/blobs/sha256:bad"), 400, "DIGEST_INVALID")


async def test_delete_blob_refused_when_deletes_are_disabled(make_api: Any) -> None:
    api = await make_api(delete_enabled=False)
    digest = await push_blob(api.client, "repo", DATA)
    errors_of(await api.client.delete(f"/v2/repo/blobs/{digest}"), 405, "UNSUPPORTED")
    assert (await api.client.get(f"/v2/repo/blobs/{digest}")).content == DATA


async def test_quarantined_blob_answers_an_error_never_its_bytes(make_api: Any, tmp_path: Path) -> None:
    settings = Settings(
        storage=StorageSettings(driver="filesystem", root=str(tmp_path), delete_enabled=True),
        maintenance=MaintenanceSettings(scrub_rate_bytes=0),
    )
    api = await make_api(registry=build_registry(settings))
    layer = os.urandom(4096)
    manifest_digest, manifest = await push_image(api.client, "repo", "v1", [layer])
    digest = sha(layer)
    # Bit rot: same size, different bytes. Scrub finds it and quarantines the blob.
    local = api.registry.blobs.local_path(Digest.parse(digest))
    assert local is not None
    rotten = bytes([layer[0] ^ 0xFF]) + layer[1:]
    Path(local).write_bytes(rotten)
    summary = scrub(api.registry)
    assert [c["digest"] for c in summary["corrupt"]] == [digest] and summary["quarantined"] == 1

    for headers in ({}, {"Range": "bytes=0-99"}):
        r = await api.client.get(f"/v2/repo/blobs/{digest}", headers=headers)
        (entry,) = errors_of(r, 404, "BLOB_UNKNOWN")
        assert "quarantined" in entry["message"]
        assert rotten[:100] not in r.content
    head = await api.client.head(f"/v2/repo/blobs/{digest}")
    assert head.status_code == 404 and head.content == b""
    assert "docker-content-digest" not in head.headers

    # The manifest naming it is still served (its own bytes are healthy) ...
    r = await api.client.get("/v2/repo/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == manifest
    assert r.headers["docker-content-digest"] == manifest_digest
    # ... and a client pushing the layer again (it was told the blob is unknown) heals it.
    await push_blob(api.client, "repo", layer)
    r = await api.client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 200 and r.content == layer
