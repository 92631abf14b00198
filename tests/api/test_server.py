"""The app behind a real uvicorn (httptools + uvloop) on 127.0.0.1: a full push and pull over
TCP with httpx, including streamed (chunked-encoding) uploads, large blobs served from local
files, Range requests and HEAD answers framed by the real HTTP server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from pipeline.config import Settings, StorageSettings
from pipeline.registry import build_registry
from tests.api.helpers import OCI_MANIFEST, oci_manifest
from tests.support.inline_jobs import InlineJobClient
from tests.support.net import free_port, uvicorn_in_thread


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    settings = Settings(storage=StorageSettings(driver="filesystem", root=str(tmp_path), delete_enabled=True))
    registry = build_registry(settings)
    jobs = InlineJobClient(registry)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, registry, jobs),
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        lifespan="off",
    )
    try:
        with uvicorn_in_thread(config):
            yield f"http://127.0.0.1:{port}"
    finally:
        jobs.close()


def test_full_push_and_pull_over_tcp(server: str) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    small = b"small layer " * 1000
    big = os.urandom(5 * 1024 * 1024 + 123)
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.get("/v2/")
        assert r.status_code == 200
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"

        # Monolithic POST for the config.
        r = client.post("/v2/lib/app/blobs/uploads/", params={"digest": sha(config)}, content=config)
        assert r.status_code == 201, r.text

        # Chunked PATCHes with Content-Range for the small layer.
        r = client.post("/v2/lib/app/blobs/uploads/")
        assert r.status_code == 202
        location = r.headers["location"]
        half = len(small) // 2
        r = client.patch(location, content=small[:half], headers={"Content-Range": f"0-{half - 1}"})
        assert r.status_code == 202
        r = client.patch(location, content=small[:10], headers={"Content-Range": "0-9"})
        assert r.status_code == 416
        assert r.headers["range"] == f"0-{half - 1}"
        rest = {"Content-Range": f"{half}-{len(small) - 1}"}
        r = client.patch(r.headers["location"], content=small[half:], headers=rest)
        assert r.status_code == 202
        r = client.put(r.headers["location"], params={"digest": sha(small)})
        assert r.status_code == 201, r.text

        # A streamed (chunked transfer-encoding) PATCH of the big layer, then PUT.
        r = client.post("/v2/lib/app/blobs/uploads/")
        location = r.headers["location"]

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(big), 300_000):
                yield big[i : i + 300_000]

        r = client.patch(location, content=pieces())
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{len(big) - 1}"
        r = client.put(r.headers["location"], params={"digest": sha(big)})
        assert r.status_code == 201, r.text

        body = oci_manifest(config, [small, big])
        r = client.put("/v2/lib/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.text
        digest = r.headers["docker-content-digest"]

        # Pull.
        r = client.get("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.content == body
        assert r.headers["docker-content-digest"] == digest == sha(body)
        r = client.head("/v2/lib/app/manifests/v1")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(body))
        r = client.head(f"/v2/lib/app/blobs/{sha(big)}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(big))
        r = client.get(f"/v2/lib/app/blobs/{sha(big)}")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == sha(big).split(":")[1]
        r = client.get(f"/v2/lib/app/blobs/{sha(big)}", headers={"Range": "bytes=4000000-"})
        assert r.status_code == 206
        assert r.content == big[4000000:]
        with client.stream("GET", f"/v2/lib/app/blobs/{sha(small)}") as streamed:
            assert b"".join(streamed.iter_bytes()) == small

        r = client.get("/v2/lib/app/tags/list")
        assert r.json() == {"name": "lib/app", "tags": ["v1"]}
        r = client.get("/v2/_catalog")
        assert r.json() == {"repositories": ["lib/app"]}

        r = client.get("/v2/lib/app/manifests/missing")
        assert r.status_code == 404
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

        # The connection is still usable after errors and HEADs (keep-alive framing intact).
        r = client.delete(f"/v2/lib/app/manifests/{digest}")
        assert r.status_code == 202
        assert client.get("/v2/lib/app/manifests/v1").status_code == 404


def test_client_that_goes_away_mid_download_does_not_break_the_server(server: str) -> None:
    big = os.urandom(8 * 1024 * 1024)
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.post("/v2/repo/blobs/uploads/", params={"digest": sha(big)}, content=big)
        assert r.status_code == 201
        with client.stream("GET", f"/v2/repo/blobs/{sha(big)}") as streamed:
            next(streamed.iter_bytes())  # read a little, then close the connection
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.get(f"/v2/repo/blobs/{sha(big)}")
        assert r.status_code == 200
        assert len(r.content) == len(big)


def test_errors_and_head_answers_keep_the_connection_usable(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.head(f"/v2/repo/blobs/{sha(b'missing')}")
        assert r.status_code == 404
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        r = client.post("/v2/repo/blobs/uploads/")
        r = client.get(r.headers["location"])
        assert r.status_code == 204
        assert "content-length" not in r.headers
        r = client.put(
            "/v2/repo/manifests/big", content=b" " * (5 * 1024 * 1024), headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 413
        assert r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
        assert client.get("/v2/").status_code == 200
