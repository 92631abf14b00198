"""Maintenance jobs through a real `celery worker` process (prefork, Redis DB 9, Redis
repository locks) against filesystem storage: scrub finds a flipped byte, purge removes a
stale session, and garbage collection run over and over, with no grace window, while
hundreds of images are pushed through the commit jobs never breaks a pushed image."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import jobs
from pipeline.errors import BlobCorrupt, BlobUnknown, ManifestBlobUnknown
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_CONFIG, OCI_MANIFEST
from pipeline.manifest_commit import delete_manifest
from pipeline.registry import build_registry
from pipeline.storage import paths
from tests.support import redis_server
from tests.workers.conftest import Deployment, LoopThread, WorkerProcess, flush, require_redis, settings_from

pytestmark = pytest.mark.integration

REDIS_URL = redis_server.url(9)
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PUSHES = 240
PUSH_THREADS = 4
# With no grace window a GC may reclaim a push's fresh blobs before its manifest lands, more
# than once in a row; each time the client uploads them again.
MAX_ATTEMPTS = 100


def write_config(path: Path, root: Path) -> Path:
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "celery": {"broker_url": REDIS_URL, "result_backend": REDIS_URL},
        "lading": {"maintenance": {"scrub": {"rate": 0}, "gc": {"grace": 0}}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, loop: LoopThread) -> Iterator[Deployment]:
    require_redis(REDIS_URL)
    flush(REDIS_URL)
    base = tmp_path_factory.mktemp("maintenance")
    (base / "root").mkdir()
    config = write_config(base / "config.yml", base / "root")
    worker = WorkerProcess(config, base / "worker.log")
    d = Deployment(settings_from(config), worker)
    # The API side shares the workers' Redis locks, as the real API process does.
    d.registry = build_registry(d.settings)
    yield d
    loop.run(d.client.aclose())
    worker.stop()
    flush(REDIS_URL)


def run(loop: LoopThread, d: Deployment, job: str, timeout: float = 120.0, **kwargs: Any) -> dict[str, Any]:
    return loop.run(d.client.run(job, timeout, **kwargs), timeout + 10)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(loop: LoopThread, d: Deployment, repo: str, data: bytes) -> None:
    """What the API does for a monolithic upload: bytes into a session, then COMMIT_BLOB."""
    session = d.registry.uploads.create(repo)
    d.registry.uploads.append(repo, session.upload_id, data)
    run(
        loop,
        d,
        jobs.COMMIT_BLOB,
        repository=repo,
        upload_id=session.upload_id,
        digest=sha256(data),
        size=len(data),
    )


def manifest(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
        }
    ).encode()


def commit_manifest(loop: LoopThread, d: Deployment, repo: str, tag: str, body: bytes) -> dict[str, Any]:
    return run(
        loop,
        d,
        jobs.COMMIT_MANIFEST,
        repository=repo,
        reference=tag,
        media_type=OCI_MANIFEST,
        body_b64=base64.b64encode(body).decode(),
    )


def visible(d: Deployment, repo: str, data: bytes) -> bool:
    """HEAD /v2/<repo>/blobs/<digest>."""
    try:
        d.registry.repo_blobs.stat(repo, Digest.parse(sha256(data)))
    except BlobUnknown:
        return False
    return True


# --- scrub and purge as jobs ----------------------------------------------------------------


def test_scrub_job_reports_a_flipped_byte_with_its_repository_and_tag(
    loop: LoopThread, deployment: Deployment
) -> None:
    d = deployment
    config, layer = b'{"scrub":"test"}', os.urandom(20_000)
    for blob in (config, layer):
        push_blob(loop, d, "scrub/app", blob)
    commit_manifest(loop, d, "scrub/app", "v1", manifest(config, [layer]))
    digest = Digest.parse(sha256(layer))
    path = d.settings.storage.root + paths.blob_data(digest)
    with open(path, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 0x01]))

    summary = run(loop, d, jobs.SCRUB, resume=False)

    corrupt = {c["digest"]: c for c in summary["corrupt"]}
    assert str(digest) in corrupt
    assert corrupt[str(digest)]["repositories"] == ["scrub/app"]
    assert corrupt[str(digest)]["tags"] == ["scrub/app:v1"]
    assert summary["complete"] and summary["checked"] >= 3
    print(
        f"\nscrub: {summary['checked']} blobs, {summary['bytes']} bytes in {summary['seconds']} s "
        f"= {summary['blobs_per_s']} blobs/s"
    )
    # The API process refuses to serve it from now on.
    with pytest.raises(BlobCorrupt):
        d.registry.blobs.open(digest)
    # A re-push heals it.
    push_blob(loop, d, "scrub/app", layer)
    assert d.registry.repo_blobs.open("scrub/app", digest).read() == layer


def test_purge_job_removes_stale_sessions_only(loop: LoopThread, deployment: Deployment) -> None:
    d = deployment
    stale = d.registry.uploads.create("purge/app").upload_id
    d.registry.uploads.append("purge/app", stale, b"abandoned")
    d.registry.driver.put_content(paths.upload_started_at("purge/app", stale), b"2020-01-01T00:00:00Z")
    data_path = d.settings.storage.root + paths.upload_data("purge/app", stale)
    os.utime(data_path, (time.time() - 30 * 86400,) * 2)
    live = d.registry.uploads.create("purge/app").upload_id

    summary = run(loop, d, jobs.PURGE_UPLOADS, older_than_seconds=7 * 86400)

    assert summary["purged"] == 1 and summary["sessions"][0]["upload_id"] == stale
    assert not d.registry.driver.exists(paths.upload_dir("purge/app", stale))
    assert d.registry.uploads.status("purge/app", live).size == 0


# --- garbage collection racing pushes --------------------------------------------------------


@dataclass
class Pushed:
    repo: str
    tag: str
    config: bytes
    layers: list[bytes]
    body: bytes


@dataclass
class RaceStats:
    pushes: int = 0
    retries: int = 0
    reuploads: int = 0
    most_attempts: int = 0
    permanent_failures: list[str] = field(default_factory=list)
    gc_runs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def push_image(loop: LoopThread, d: Deployment, image: Pushed, stats: RaceStats) -> bool:
    """Push like a client: HEAD each blob and upload only the missing ones, then PUT the
    manifest; on MANIFEST_BLOB_UNKNOWN start over (HEAD again). True once it succeeded."""
    for attempt in range(MAX_ATTEMPTS):
        for blob in (image.config, *image.layers):
            if not visible(d, image.repo, blob):
                push_blob(loop, d, image.repo, blob)
                if attempt:
                    with stats.lock:
                        stats.reuploads += 1
        try:
            commit_manifest(loop, d, image.repo, image.tag, image.body)
            with stats.lock:
                stats.most_attempts = max(stats.most_attempts, attempt + 1)
            return True
        except ManifestBlobUnknown:
            with stats.lock:
                stats.retries += 1
    return False


def test_gc_racing_pushes_never_breaks_a_pushed_image(loop: LoopThread, deployment: Deployment) -> None:
    d = deployment
    rng = random.Random(7)
    repos = [f"race/r{i}" for i in range(6)]

    # Images pushed and deleted before any GC: their unique blobs must be reclaimed. Some of
    # their layers stay "hot": later pushes HEAD them (still there), skip the upload and
    # PUT a manifest naming them — the race the protocol is for.
    victims: list[Pushed] = []
    for i in range(30):
        repo = repos[i % len(repos)]
        victim = Pushed(repo, f"victim{i}", f'{{"victim":{i}}}'.encode(), [os.urandom(3000)], b"")
        victim.body = manifest(victim.config, victim.layers)
        assert push_image(loop, d, victim, RaceStats())
        delete_manifest(d.registry, repo, sha256(victim.body))
        victims.append(victim)
    hot = victims[:10]

    stats = RaceStats()
    done = threading.Event()
    pushed: list[Pushed] = []
    deleted: list[Pushed] = []

    def gc_loop() -> None:
        while not done.is_set():
            stats.gc_runs.append(run(loop, d, jobs.GARBAGE_COLLECT, timeout=300, grace_seconds=0))

    def pusher(worker: int) -> None:
        for i in range(worker, PUSHES, PUSH_THREADS):
            repo = repos[i % len(repos)]
            layers = [os.urandom(rng.randint(500, 4000))]
            reuse = [v for v in hot if v.repo == repo]
            if reuse and i % 3 == 0:
                layers.append(reuse[i % len(reuse)].layers[0])
            config = json.dumps({"image": i, "nonce": os.urandom(4).hex()}).encode()
            image = Pushed(repo, f"t{i}", config, layers, manifest(config, layers))
            if not push_image(loop, d, image, stats):
                stats.permanent_failures.append(f"{repo}:{image.tag}")
                continue
            with stats.lock:
                stats.pushes += 1
            if i % 10 == 5:
                delete_manifest(d.registry, repo, sha256(image.body))  # fresh garbage
                deleted.append(image)
            else:
                pushed.append(image)

    collector = threading.Thread(target=gc_loop)
    collector.start()
    threads = [threading.Thread(target=pusher, args=(w,)) for w in range(PUSH_THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    elapsed = time.monotonic() - started
    done.set()
    collector.join(600)
    final = run(loop, d, jobs.GARBAGE_COLLECT, timeout=300, grace_seconds=0)

    reclaimed = sum(r.get("blobs_deleted", 0) for r in stats.gc_runs) + final["blobs_deleted"]
    print(
        f"\nrace: {stats.pushes} pushes in {elapsed:.1f} s, {len(stats.gc_runs)} GC runs during them, "
        f"{reclaimed} blobs reclaimed, {stats.retries} clean MANIFEST_BLOB_UNKNOWN retries "
        f"({stats.reuploads} blobs re-uploaded, at most {stats.most_attempts} attempts for one push), "
        f"{len(stats.permanent_failures)} failed pushes; "
        f"final GC: {final['blobs_examined']} blobs examined in {final['seconds']} s = "
        f"{final['blobs_per_s']} blobs/s"
    )
    assert not stats.permanent_failures
    assert stats.pushes == PUSHES and len(stats.gc_runs) >= 3
    assert all("sweep_skipped" not in r for r in (*stats.gc_runs, final))

    # Every pushed image is whole: tag → manifest → every blob, bytes matching digests.
    for image in pushed:
        digest = d.registry.tags.resolve(image.repo, image.tag)
        assert str(digest) == sha256(image.body)
        body, _ = d.registry.manifests.get(image.repo, digest)
        assert body == image.body
        for blob in (image.config, *image.layers):
            with d.registry.repo_blobs.open(image.repo, Digest.parse(sha256(blob))) as stream:
                assert hashlib.sha256(stream.read()).hexdigest() == sha256(blob).split(":")[1]

    # Garbage is gone: deleted images' manifests and their unique blobs, victims' unused layers.
    live_blobs = {sha256(b) for image in pushed for b in (image.config, *image.layers, image.body)}
    for image in [*deleted, *victims]:
        for blob in (image.config, *image.layers, image.body):
            if sha256(blob) not in live_blobs:
                assert not d.registry.driver.exists(paths.blob_data(Digest.parse(sha256(blob)))), image.tag
    # And every blob left in storage still hashes to its digest.
    check = run(loop, d, jobs.SCRUB, timeout=300, resume=False)
    print(f"scrub after the race: {check['checked']} blobs, {check['blobs_per_s']} blobs/s")
    assert check["corrupt"] == [] and check["missing"] == [] and check["complete"]
    # Nothing is left parked in the trash or marked for deletion.
    assert not d.registry.driver.exists(paths.gc_candidates_root())
    assert [i.path for i in d.registry.driver.walk(paths.gc_trash_root()) if not i.is_dir] == []
