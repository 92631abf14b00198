"""A scaled-out deployment as real processes (`lading serve` + `lading worker` over a real
Redis) and a small registry client to push and pull images through it over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from pipeline.config import Settings, load_settings
from tests.lading.procs import Running, lading_command, process_env, running
from tests.support.net import free_port, wait_http

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_config(path: Path, root: Path, port: int, celery: dict[str, Any]) -> Path:
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "http": {"addr": f"127.0.0.1:{port}"},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "celery": celery,
        "lading": {
            "maintenance": {"scrub": {"enabled": False}, "gc": {"enabled": False, "grace": "0s"}},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Deployment:
    config: Path
    settings: Settings
    url: str
    server: Running
    worker: Running
    env: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@contextmanager
def deployment(base: Path, celery: dict[str, Any], concurrency: int = 8) -> Iterator[Deployment]:
    """`lading worker` (threads pool, every queue) and `lading serve` on `celery`."""
    (base / "root").mkdir(exist_ok=True)
    port = free_port()
    config = write_config(base / "config.yml", base / "root", port, celery)
    env = process_env()
    worker_args = [*lading_command(), "worker", str(config), "--pool", "threads"]
    worker_args += ["--concurrency", str(concurrency)]
    with ExitStack() as stack:
        worker = stack.enter_context(running(worker_args, env, cwd=base))
        server = stack.enter_context(running([*lading_command(), "serve", str(config)], env, cwd=base))
        worker.wait_for(r"ready\.", timeout=90)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/", timeout=90, proc=server.proc)
        yield Deployment(config, load_settings(str(config), {}), url, server, worker, env)


# --- a registry client ---------------------------------------------------------------------


def manifest(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
        }
    ).encode()


@dataclass
class Image:
    repo: str
    tag: str
    config: bytes
    layers: list[bytes]

    @property
    def body(self) -> bytes:
        return manifest(self.config, self.layers)

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def random_image(repo: str, tag: str, layers: int = 1) -> Image:
    config = json.dumps({"architecture": "amd64", "nonce": os.urandom(8).hex()}).encode()
    return Image(repo, tag, config, [os.urandom(2000 + i * 100) for i in range(layers)])


def push_blob(client: httpx.Client, repo: str, data: bytes, request_id: str | None = None) -> None:
    """Monolithic upload: POST with the digest and the bytes (201)."""
    headers = {"Content-Type": "application/octet-stream"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    r = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data, headers=headers
    )
    assert r.status_code == 201, r.text


def has_blob(client: httpx.Client, repo: str, data: bytes) -> bool:
    return client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 200


def put_manifest(client: httpx.Client, repo: str, reference: str, body: bytes) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )


def push_image(client: httpx.Client, image: Image, attempts: int = 50) -> int:
    """Push like a client: HEAD each blob, upload the missing ones, PUT the manifest; on
    MANIFEST_BLOB_UNKNOWN (a blob collected meanwhile) start over. Returns the attempts
    it took; AssertionError if it never succeeded."""
    for attempt in range(1, attempts + 1):
        for blob in image.blobs:
            if not has_blob(client, image.repo, blob):
                push_blob(client, image.repo, blob)
        r = put_manifest(client, image.repo, image.tag, image.body)
        if r.status_code == 201:
            assert r.headers["docker-content-digest"] == sha256(image.body)
            return attempt
        assert r.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in r.text, r.text
    raise AssertionError(f"{image.repo}:{image.tag} not pushed in {attempts} attempts")


def assert_pullable(client: httpx.Client, image: Image) -> None:
    """Tag → the pushed manifest bytes → every blob, each hashing to its digest."""
    r = client.get(f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, f"{image.repo}:{image.tag}: {r.status_code} {r.text}"
    assert r.content == image.body
    for blob in image.blobs:
        got = client.get(f"/v2/{image.repo}/blobs/{sha256(blob)}", follow_redirects=True)
        assert got.status_code == 200, f"{image.repo}:{image.tag} blob {sha256(blob)}: {got.status_code}"
        assert sha256(got.content) == sha256(blob)
