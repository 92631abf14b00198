"""Building blocks for the API tests: digests, manifests, pushes, error assertions and job
client doubles (recording, gated)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline import jobs as joblib
from pipeline.errors import JobTimeout
from pipeline.handlers import run_job
from pipeline.registry import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCTET = {"Content-Type": "application/octet-stream"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_manifest(
    config: bytes = b"{}",
    layers: list[bytes] | None = None,
    *,
    subject: tuple[str, int] | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
    missing: list[str] | None = None,
) -> bytes:
    """An OCI image manifest over `config` and `layers` (plus `missing` digests that have
    no bytes anywhere)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha(b), "size": len(b)} for b in layers or []]
        + [{"mediaType": OCI_LAYER, "digest": d, "size": 1} for d in missing or []],
    }
    if subject is not None:
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, indent=1).encode()


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    """Monolithic POST ?digest= push; returns the digest."""
    digest = sha(data)
    url = f"/v2/{name}/blobs/uploads/"
    r = await client.post(url, params={"digest": digest}, content=data, headers=OCTET)
    assert r.status_code == 201, r.text
    return digest


async def push_manifest(
    client: httpx.AsyncClient, name: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
) -> httpx.Response:
    url = f"/v2/{name}/manifests/{reference}"
    return await client.put(url, content=body, headers={"Content-Type": media_type})


async def push_image(
    client: httpx.AsyncClient, name: str, tag: str, layers: list[bytes], config: bytes = b"{}", **kw: Any
) -> tuple[str, bytes]:
    """Push config, layers and the manifest (tagged); returns (manifest digest, body)."""
    await push_blob(client, name, config)
    for layer in layers:
        await push_blob(client, name, layer)
    body = oci_manifest(config, layers, **kw)
    r = await push_manifest(client, name, tag, body)
    assert r.status_code == 201, r.text
    return r.headers["docker-content-digest"], body


def errors_of(response: httpx.Response, status: int, code: str) -> list[dict[str, Any]]:
    """Assert an OCI error response; return its entries (all with `code`)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    entries = response.json()["errors"]
    assert entries, response.text
    assert all(e["code"] == code for e in entries), entries
    return list(entries)


class RecordingJobs:
    """Delegates to another JobClient and records every job sent (name, kwargs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, job: str, **kwargs: Any) -> str:
        self.sent.append((job, kwargs))
        return str(self.inner.send(job, **kwargs))

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        return dict(await self.inner.wait(job_id, timeout))

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        self.sent.append((job, kwargs))
        return dict(await self.inner.run(job, timeout, **kwargs))

    def names(self) -> list[str]:
        return [name for name, _ in self.sent]


@dataclass
class GatedJobs:
    """A JobClient running jobs in threads, where COMMIT_BLOB jobs wait for `gate` first:
    lets a test observe the time between "accepted" and "committed"."""

    registry: Registry
    gate: threading.Event = field(default_factory=threading.Event)
    _executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))
    _futures: dict[str, Future[dict[str, Any]]] = field(default_factory=dict)
    waited: list[str] = field(default_factory=list)  # job ids someone awaited, in order

    async def until_waited(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` waits began (a request is blocked on jobs); fail after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.waited) < count:
            assert loop.time() < deadline, f"{len(self.waited)} of {count} waits began within {timeout}s"
            await asyncio.sleep(0.005)

    def _run(self, job: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if job == joblib.COMMIT_BLOB:
            assert self.gate.wait(30), "gate never opened"
        return run_job(self.registry, job, kwargs)

    def send(self, job: str, **kwargs: Any) -> str:
        job_id = str(uuid.uuid4())
        self._futures[job_id] = self._executor.submit(self._run, job, json.loads(json.dumps(kwargs)))
        return job_id

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        self.waited.append(job_id)
        future = self._futures.get(job_id)
        if future is None:
            raise JobTimeout({"job_id": job_id})
        try:
            envelope = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except TimeoutError:
            raise JobTimeout({"job_id": job_id}) from None
        return joblib.unwrap(envelope)

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        return await self.wait(self.send(job, **kwargs), timeout)

    def close(self) -> None:
        self.gate.set()
        self._executor.shutdown(wait=True)


@contextmanager
def json_log(logger_name: str) -> Iterator[io.StringIO]:
    """Everything logged under `logger_name` at INFO and above, as JSON lines (api.logs)."""
    from api.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
