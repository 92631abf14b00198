"""Every job end to end through a real `celery worker` process (prefork, built from a
config file) on real Redis, driven by the API's job client, against filesystem storage."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import tarfile
import uuid
from typing import Any

import pytest
import redis

from pipeline import jobs
from pipeline.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    JobFailed,
    JobTimeout,
    LadingError,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    RegistryError,
    SizeInvalid,
)
from pipeline.formats.digest import Digest
from pipeline.formats.hashstate import resumable_available
from pipeline.formats.manifests import OCI_CONFIG, OCI_MANIFEST
from pipeline.storage import paths
from tests.workers.conftest import Deployment, LoopThread, sha256, upload

pytestmark = pytest.mark.integration

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def run(loop: LoopThread, d: Deployment, job: str, timeout: float = 60.0, **kwargs: Any) -> dict[str, Any]:
    return loop.run(d.client.run(job, timeout, **kwargs))


def manifest(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
        }
    ).encode()


def push_blob(loop: LoopThread, d: Deployment, repository: str, data: bytes) -> None:
    upload_id = upload(d.registry, repository, data)
    run(
        loop,
        d,
        jobs.COMMIT_BLOB,
        repository=repository,
        upload_id=upload_id,
        digest=sha256(data),
        size=len(data),
    )


def tar_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzipped tar)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    raw = buffer.getvalue()
    return raw, gzip.compress(raw, mtime=0)


def test_commit_blob_after_chunks_and_an_advanced_digest(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    d = redis_deployment
    data = os.urandom(3 * 1024 * 1024 + 17)
    status = d.registry.uploads.create("e2e/commit")
    first = data[: 1024 * 1024]
    d.registry.uploads.append("e2e/commit", status.upload_id, first, offset=0)
    advanced = run(
        loop, d, jobs.ADVANCE_DIGEST, repository="e2e/commit", upload_id=status.upload_id, algorithm="sha256"
    )
    assert advanced == {"offset": len(first) if resumable_available("sha256") else 0}
    d.registry.uploads.append("e2e/commit", status.upload_id, data[len(first) :], offset=len(first))

    value = run(
        loop,
        d,
        jobs.COMMIT_BLOB,
        repository="e2e/commit",
        upload_id=status.upload_id,
        digest=sha256(data),
        size=len(data),
    )

    assert value == {"digest": sha256(data), "size": len(data)}
    digest = Digest.parse(sha256(data))
    assert d.registry.blobs.get(digest) == data
    assert d.registry.repo_blobs.is_linked("e2e/commit", digest)
    with pytest.raises(BlobUploadUnknown):
        d.registry.uploads.status("e2e/commit", status.upload_id)


def test_a_sent_advance_saves_its_hash_state_and_stores_no_result(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    if not resumable_available("sha256"):
        pytest.skip("no resumable sha256 here: an advance saves no hash state")
    d = redis_deployment
    data = os.urandom(256 * 1024 + 5)
    upload_id = upload(d.registry, "e2e/advance", data)
    state = paths.upload_hashstate("e2e/advance", upload_id, "sha256", len(data))
    job_id = d.client.send(
        jobs.ADVANCE_DIGEST, repository="e2e/advance", upload_id=upload_id, algorithm="sha256"
    )
    for _ in range(600):  # until the worker saved the state (bounded: 60 s)
        if d.registry.driver.exists(state):
            break
        loop.run(asyncio.sleep(0.1))
    assert d.registry.driver.exists(state)
    # A job run after it has stored its result; the fire-and-forget advance stored none.
    assert run(loop, d, jobs.ADVANCE_DIGEST, repository="e2e/advance", upload_id=upload_id) == {
        "offset": len(data)
    }
    r = redis.Redis.from_url(d.settings.celery.result_backend or "")
    assert not r.exists(f"celery-task-meta-{job_id}")


def test_digest_mismatch_writes_no_blob_and_no_link(loop: LoopThread, redis_deployment: Deployment) -> None:
    d = redis_deployment
    data = b"the bytes the client sent"
    upload_id = upload(d.registry, "e2e/mismatch", data)
    declared = sha256(b"something else entirely")

    with pytest.raises(DigestInvalid):
        run(
            loop,
            d,
            jobs.COMMIT_BLOB,
            repository="e2e/mismatch",
            upload_id=upload_id,
            digest=declared,
            size=len(data),
        )

    for digest in (declared, sha256(data)):
        assert not d.registry.blobs.exists(Digest.parse(digest))
        assert not d.registry.repo_blobs.is_linked("e2e/mismatch", Digest.parse(digest))
    assert d.registry.uploads.status("e2e/mismatch", upload_id).size == len(data)  # the client may retry


def test_size_mismatch_is_reported(loop: LoopThread, redis_deployment: Deployment) -> None:
    d = redis_deployment
    data = b"twelve bytes"
    upload_id = upload(d.registry, "e2e/size", data)
    with pytest.raises(SizeInvalid):
        run(
            loop,
            d,
            jobs.COMMIT_BLOB,
            repository="e2e/size",
            upload_id=upload_id,
            digest=sha256(data),
            size=len(data) + 1,
        )
    assert not d.registry.blobs.exists(Digest.parse(sha256(data)))


def test_same_blob_committed_concurrently_from_two_uploads(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    d = redis_deployment
    data = os.urandom(2 * 1024 * 1024)
    uploads = [
        ("e2e/race-one", upload(d.registry, "e2e/race-one", data)),
        ("e2e/race-two", upload(d.registry, "e2e/race-two", data, chunks=3)),
    ]

    async def both() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(
                d.client.run(
                    jobs.COMMIT_BLOB, 60, repository=repo, upload_id=uid, digest=sha256(data), size=len(data)
                )
                for repo, uid in uploads
            )
        )

    values = loop.run(both())

    assert values == [{"digest": sha256(data), "size": len(data)}] * 2
    digest = Digest.parse(sha256(data))
    assert d.registry.blobs.get(digest) == data
    for repo, upload_id in uploads:
        assert d.registry.repo_blobs.is_linked(repo, digest)
        with pytest.raises(BlobUploadUnknown):
            d.registry.uploads.status(repo, upload_id)


def test_manifest_with_three_missing_blobs_lists_all_three(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    d = redis_deployment
    config, layer_a, layer_b = b'{"config": 1}', b"layer a", b"layer b"
    body = manifest(config, [layer_a, layer_b])

    with pytest.raises(ManifestBlobUnknown) as caught:
        run(
            loop,
            d,
            jobs.COMMIT_MANIFEST,
            repository="e2e/missing",
            reference="v1",
            media_type=OCI_MANIFEST,
            body_b64=base64.b64encode(body).decode(),
        )

    assert sorted(caught.value.digests) == sorted(sha256(b) for b in (config, layer_a, layer_b))
    assert not d.registry.manifests.exists("e2e/missing", Digest.parse(sha256(body)))
    with pytest.raises(ManifestUnknown):
        d.registry.tags.resolve("e2e/missing", "v1")


def test_manifest_commit_tags_and_deep_verification(loop: LoopThread, redis_deployment: Deployment) -> None:
    d = redis_deployment
    raw, layer = tar_layer({"etc/hello.txt": b"hello from a layer\n"})
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]}}
    ).encode()
    for blob in (config, layer):
        push_blob(loop, d, "e2e/image", blob)
    body = manifest(config, [layer])

    value = run(
        loop,
        d,
        jobs.COMMIT_MANIFEST,
        repository="e2e/image",
        reference="latest",
        media_type=OCI_MANIFEST,
        body_b64=base64.b64encode(body).decode(),
    )

    assert value["digest"] == sha256(body)
    assert value["subject"] is None
    assert str(d.registry.tags.resolve("e2e/image", "latest")) == sha256(body)

    sums = run(loop, d, jobs.TARSUM, digest=sha256(layer))
    assert sums["diff_id"] == sha256(raw)
    assert sums["tarsum"].startswith("tarsum.v1+sha256:")

    verdict = run(loop, d, jobs.DEEP_VERIFY, repository="e2e/image", digest=sha256(body), policy="reject")
    assert verdict["ok"] is True and verdict["mismatches"] == []


def test_deep_verification_rejects_a_layer_that_lies(loop: LoopThread, redis_deployment: Deployment) -> None:
    d = redis_deployment
    _, layer = tar_layer({"real.txt": b"what is really inside"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(b"not this tar")]}}).encode()
    for blob in (config, layer):
        push_blob(loop, d, "e2e/liar", blob)
    body = manifest(config, [layer])
    run(
        loop,
        d,
        jobs.COMMIT_MANIFEST,
        repository="e2e/liar",
        reference="v1",
        media_type=OCI_MANIFEST,
        body_b64=base64.b64encode(body).decode(),
    )

    with pytest.raises(ManifestInvalid) as caught:
        run(loop, d, jobs.DEEP_VERIFY, repository="e2e/liar", digest=sha256(body), policy="reject")
    assert caught.value.detail[0]["layer"] == sha256(layer)


@pytest.mark.parametrize(
    ("job", "kwargs"),
    [
        (jobs.SCRUB, {}),
        (jobs.PURGE_UPLOADS, {}),
        (jobs.GARBAGE_COLLECT, {}),
        (jobs.RECONCILE, {}),
        (jobs.NOTIFY_EVENT, {"endpoint": "nowhere", "envelope": {"events": []}}),
    ],
)
def test_maintenance_and_notify_queues_are_consumed(
    loop: LoopThread, redis_deployment: Deployment, job: str, kwargs: dict[str, Any]
) -> None:
    # Each job reaches a worker through its own queue and comes back with an answer: a
    # value, or a domain error (e.g. OperationUnsupported for an endpoint not configured).
    try:
        value = run(loop, redis_deployment, job, timeout=60, **kwargs)
    except RegistryError:
        pass
    else:
        assert isinstance(value, dict)


def test_a_task_that_crashes_is_a_lading_error_not_a_registry_error(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    with pytest.raises(LadingError) as caught:
        run(loop, redis_deployment, jobs.COMMIT_BLOB, repository="e2e/bad")  # required kwargs missing
    assert isinstance(caught.value, JobFailed) and not isinstance(caught.value, RegistryError)
    assert "TypeError" not in str(caught.value)  # the exception is logged, not sent
    assert caught.value.detail == {"job_id": caught.value.detail["job_id"]}


def test_waiting_for_a_job_that_never_ran_times_out(loop: LoopThread, redis_deployment: Deployment) -> None:
    with pytest.raises(JobTimeout):
        loop.run(redis_deployment.client.wait(str(uuid.uuid4()), 0.3))


def test_wait_after_send_sees_a_result_that_already_landed(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    d = redis_deployment
    data = b"sent now, awaited later"
    upload_id = upload(d.registry, "e2e/later", data)
    job_id = d.client.send(
        jobs.COMMIT_BLOB, repository="e2e/later", upload_id=upload_id, digest=sha256(data), size=len(data)
    )
    key = f"celery-task-meta-{job_id}"
    r = redis.Redis.from_url(d.settings.celery.result_backend or "")
    for _ in range(600):  # until the worker stored it (bounded: 60 s)
        if r.exists(key):
            break
        loop.run(asyncio.sleep(0.1))
    assert loop.run(d.client.wait(job_id, 5)) == {"digest": sha256(data), "size": len(data)}


def test_many_concurrent_waiters_on_one_listener(loop: LoopThread, redis_deployment: Deployment) -> None:
    d = redis_deployment

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(
                d.client.run(
                    jobs.COMMIT_BLOB,
                    60,
                    repository="e2e/many",
                    upload_id=str(uuid.uuid4()),
                    digest=sha256(b"x"),
                    size=1,
                )
                for _ in range(40)
            ),
            return_exceptions=True,
        )

    results = loop.run(many())
    assert all(isinstance(r, BlobUploadUnknown) for r in results), results
