"""Batch mode (`Prefer: respond-async`): a completing PUT answers 202 before the commit job ran;
a later manifest PUT in any API replica waits for those commits, or names each failed blob."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline import jobs as joblib
from pipeline.errors import DigestInvalid
from pipeline.formats.digest import Digest
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.stores.pending import PendingCommits
from tests.api.conftest import make_settings
from tests.api.helpers import (
    OCTET,
    GatedJobs,
    RecordingJobs,
    errors_of,
    oci_manifest,
    push_blob,
    push_manifest,
    sha,
)

pytestmark = pytest.mark.anyio

ASYNC = {"Prefer": "respond-async"}
CONFIG = b'{"architecture":"amd64"}'
LAYER = b"layer " * 1000


@pytest.fixture
def gated() -> Any:
    jobs = GatedJobs(Registry.in_memory(make_settings()))
    yield jobs
    jobs.close()


async def batch_put(api: Any, data: bytes, digest: str | None = None) -> Any:
    r = await api.client.post("/v2/repo/blobs/uploads/")
    location = r.headers["location"]
    await api.client.patch(location, content=data, headers=OCTET)
    return await api.client.put(location, params={"digest": digest or sha(data)}, headers=ASYNC)


def pending_record_exists(registry: Registry, data_digest: str) -> bool:
    return registry.driver.exists(paths.pending_commit("repo", Digest.parse(data_digest)))


async def test_batch_put_answers_202_with_status_url(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    r = await batch_put(api, LAYER)
    assert r.status_code == 202, r.text
    digest = sha(LAYER)
    assert r.headers["location"] == f"/v2/repo/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["preference-applied"] == "respond-async"
    status_url = r.headers["lading-job"]
    assert status_url.startswith("/v2/repo/blobs/uploads/") and f"digest={digest}" in status_url
    assert pending_record_exists(api.registry, digest)

    pending = await api.client.get(status_url)
    assert pending.status_code == 202
    assert pending.json()["status"] == "pending"
    assert (await api.client.head(f"/v2/repo/blobs/{digest}")).status_code == 404

    gated.gate.set()
    for _ in range(200):
        done = await api.client.get(status_url)
        if done.status_code != 202:
            break
        await asyncio.sleep(0.01)
    assert done.status_code == 200, done.text
    assert done.json() == {"status": "committed", "digest": digest, "size": len(LAYER)}
    assert not pending_record_exists(api.registry, digest)
    assert (await api.client.get(f"/v2/repo/blobs/{digest}")).content == LAYER


async def test_batch_monolithic_post(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    r = await api.client.post(
        "/v2/repo/blobs/uploads/", params={"digest": sha(CONFIG)}, content=CONFIG, headers={**OCTET, **ASYNC}
    )
    assert r.status_code == 202
    assert r.headers["docker-content-digest"] == sha(CONFIG)
    gated.gate.set()


async def test_manifest_put_in_another_replica_waits_for_pending_commits(
    make_api: Any, gated: GatedJobs
) -> None:
    replica_a = await make_api(registry=gated.registry, jobs=gated)
    replica_b = await make_api(registry=gated.registry, jobs=gated)
    assert (await batch_put(replica_a, CONFIG)).status_code == 202
    assert (await batch_put(replica_a, LAYER)).status_code == 202
    body = oci_manifest(CONFIG, [LAYER])

    before = len(gated.waited)
    put = asyncio.create_task(push_manifest(replica_b.client, "repo", "v1", body))
    await gated.until_waited(before + 2)  # the PUT is waiting on both blob commits (gate closed)
    assert not put.done(), "the manifest PUT must wait for the blob commits"
    gated.gate.set()
    r = await asyncio.wait_for(put, 30)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == sha(body)
    assert (await replica_a.client.get("/v2/repo/manifests/v1")).content == body
    assert not pending_record_exists(gated.registry, sha(LAYER))
    assert not pending_record_exists(gated.registry, sha(CONFIG))


async def test_failed_batch_commit_makes_the_manifest_put_name_it(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    assert (await batch_put(api, CONFIG)).status_code == 202
    declared = sha(b"what the client claimed")
    r = await batch_put(api, LAYER, digest=declared)
    assert r.status_code == 202  # accepted: the worker has not looked at the bytes yet
    status_url = r.headers["lading-job"]

    body = oci_manifest(CONFIG, [], missing=[declared])
    r = await push_manifest(api.client, "repo", "v1", body)
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert len(entries) == 1
    assert entries[0]["detail"]["digest"] == declared
    assert entries[0]["detail"]["reason"]["code"] == "DIGEST_INVALID"
    errors_of(await api.client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    errors_of(await api.client.get(status_url), 400, "DIGEST_INVALID")
    assert not api.registry.blobs.exists(Digest.parse(declared))


async def test_pending_and_never_pushed_blobs(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    assert (await batch_put(api, CONFIG)).status_code == 202
    assert (await batch_put(api, LAYER)).status_code == 202
    never = sha(b"never pushed")
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [LAYER], missing=[never]))
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert [e["detail"]["digest"] for e in entries] == [never]
    # The committed blobs are there for the next attempt.
    assert (await api.client.head(f"/v2/repo/blobs/{sha(LAYER)}")).status_code == 200


async def test_status_of_unknown_commit_is_404(api: Any) -> None:
    url = "/v2/repo/blobs/uploads/3f0e4a43-6f8e-4d33-9b35-2c5d3e0c1a77"
    r = await api.client.get(url, params={"status": "", "digest": sha(b"?")})
    errors_of(r, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_without_prefer_the_put_waits_and_answers_201(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    r = await api.client.post("/v2/repo/blobs/uploads/")
    r = await api.client.put(r.headers["location"], params={"digest": sha(LAYER)}, content=LAYER)
    assert r.status_code == 201
    assert "lading-job" not in r.headers


def manifest_sends(jobs: RecordingJobs) -> int:
    return jobs.names().count(joblib.COMMIT_MANIFEST)


async def test_manifest_job_is_sent_once_when_its_blobs_are_still_committing(
    make_api: Any, gated: GatedJobs
) -> None:
    jobs = RecordingJobs(gated)
    api = await make_api(registry=gated.registry, jobs=jobs)
    assert (await batch_put(api, CONFIG)).status_code == 202
    assert (await batch_put(api, LAYER)).status_code == 202
    body = oci_manifest(CONFIG, [LAYER])

    before = len(gated.waited)
    put = asyncio.create_task(push_manifest(api.client, "repo", "v1", body))
    await gated.until_waited(before + 2)  # the PUT is waiting on both blob commits (gate closed)
    assert not put.done()
    assert manifest_sends(jobs) == 0, "the manifest job must wait for the blob commits"
    gated.gate.set()
    r = await asyncio.wait_for(put, 30)
    assert r.status_code == 201, r.text
    assert manifest_sends(jobs) == 1
    assert (await api.client.get("/v2/repo/manifests/v1")).content == body


async def test_a_stale_record_of_a_linked_blob_is_not_waited_for(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    await push_blob(api.client, "repo", CONFIG)
    await push_blob(api.client, "repo", LAYER)
    # A record whose job result is long gone (the job id is unknown to the client).
    PendingCommits(api.registry.driver).record("repo", Digest.parse(sha(LAYER)), "expired-job", "u-1")
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [LAYER]))
    assert r.status_code == 201, r.text
    assert not pending_record_exists(api.registry, sha(LAYER))


class AcceptsBlobDuringFirstManifestJob(RecordingJobs):
    """Lets another replica accept a blob in batch mode after the manifest PUT looked for
    pending commits, before its job verifies the blobs."""

    def __init__(self, inner: Any, accept: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.accept: Callable[[], Awaitable[None]] | None = accept

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        if job == joblib.COMMIT_MANIFEST and self.accept is not None:
            accept, self.accept = self.accept, None
            await accept()
        return await super().run(job, timeout, **kwargs)


async def test_commits_accepted_after_the_check_are_still_waited_for(make_api: Any, gated: GatedJobs) -> None:
    replica_a = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    await push_blob(replica_a.client, "repo", CONFIG)
    gated.gate.clear()

    async def accept_layer() -> None:
        assert (await batch_put(replica_a, LAYER)).status_code == 202
        asyncio.get_running_loop().call_later(0.2, gated.gate.set)

    jobs = AcceptsBlobDuringFirstManifestJob(gated, accept_layer)
    replica_b = await make_api(registry=gated.registry, jobs=jobs)
    body = oci_manifest(CONFIG, [LAYER])
    r = await asyncio.wait_for(push_manifest(replica_b.client, "repo", "v1", body), 30)
    assert r.status_code == 201, r.text
    assert manifest_sends(jobs) == 2  # missing once, then retried after the late commit
    assert not pending_record_exists(gated.registry, sha(LAYER))


async def test_failed_commit_and_never_pushed_blob_are_both_named(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    await push_blob(api.client, "repo", CONFIG)
    declared = sha(b"what the client claimed")
    assert (await batch_put(api, LAYER, digest=declared)).status_code == 202
    never = sha(b"never pushed")
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [], missing=[declared, never]))
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    by_digest = {e["detail"]["digest"]: e["detail"] for e in entries}
    assert set(by_digest) == {declared, never}
    assert by_digest[declared]["reason"]["code"] == "DIGEST_INVALID"
    assert "reason" not in by_digest[never]


async def test_a_stale_record_answers_the_manifest_put_at_once_naming_each_blob(
    make_api: Any, gated: GatedJobs
) -> None:
    """A record older than its job's lease whose job left no result: the job is gone, so the
    manifest PUT answers 400 naming the blob instead of waiting manifest_timeout for it."""
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    await push_blob(api.client, "repo", CONFIG)
    store = PendingCommits(api.registry.driver)
    lost = [sha(b"lost layer one"), sha(b"lost layer two")]
    for digest in lost:
        store.record("repo", Digest.parse(digest), "job-lost-with-the-broker", "u-1", lease=0.0)
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [], missing=lost))
    entries = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert sorted(e["detail"]["digest"] for e in entries) == sorted(lost)
    for e in entries:
        assert e["detail"]["reason"]["code"] == "BLOB_UNKNOWN"
        assert "lease" in e["detail"]["reason"]["message"]
        assert e["detail"]["reason"]["detail"]["job_id"] == "job-lost-with-the-broker"


async def test_a_record_reconcile_marked_failed_answers_with_its_error(
    make_api: Any, gated: GatedJobs
) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    await push_blob(api.client, "repo", CONFIG)
    store = PendingCommits(api.registry.driver)
    claimed = sha(b"claimed")
    record = store.record("repo", Digest.parse(claimed), "job-long-gone", "u-1")  # lease not over
    store.mark_failed(record, DigestInvalid({"digest": claimed}, "digest did not match content"))
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [], missing=[claimed]))
    (entry,) = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["digest"] == claimed
    assert entry["detail"]["reason"]["code"] == "DIGEST_INVALID"


async def test_a_blob_linked_but_not_yet_in_place_is_waited_for(make_api: Any, gated: GatedJobs) -> None:
    # A commit links the blob before it moves the data: a manifest PUT arriving in between
    # must wait for that commit, not take the link for a finished one and clear its record.
    api = await make_api(registry=gated.registry, jobs=gated)
    assert (await batch_put(api, CONFIG)).status_code == 202
    assert (await batch_put(api, LAYER)).status_code == 202
    gated.registry.repo_blobs.link("repo", Digest.parse(sha(LAYER)))  # the commit's first step
    before = len(gated.waited)
    put = asyncio.create_task(push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [LAYER])))
    await gated.until_waited(before + 2)  # waiting on both blob commits (gate closed)
    assert pending_record_exists(gated.registry, sha(LAYER))
    assert not put.done()
    gated.gate.set()
    r = await asyncio.wait_for(put, 30)
    assert r.status_code == 201, r.text
    assert not pending_record_exists(gated.registry, sha(LAYER))


async def _failed_batch_put(
    api: Any, gated: GatedJobs, written_late: bool, with_body: bool = True
) -> tuple[str, str, str]:
    """A batch PUT (with the bytes as its body, or after a PATCH) whose commit fails (wrong
    digest); (status URL, session URL, claimed digest) once the job has failed.
    `written_late`: the job fails before the API wrote the pending record (send, then
    record), so the job cannot settle it itself."""
    r = await api.client.post("/v2/repo/blobs/uploads/")
    session = r.headers["location"]
    claimed = sha(b"what the client claimed")
    if with_body:
        r = await api.client.put(
            session, params={"digest": claimed}, content=LAYER, headers={**OCTET, **ASYNC}
        )
    else:
        await api.client.patch(session, content=LAYER, headers=OCTET)
        r = await api.client.put(session, params={"digest": claimed}, headers=ASYNC)
    assert r.status_code == 202, r.text
    store = api.registry.pending
    record = store.lookup("repo", Digest.parse(claimed))
    assert record is not None
    if written_late:
        store.clear("repo", record.digest)
    gated.gate.set()
    with pytest.raises(DigestInvalid):
        await gated.wait(record.job_id, 30)
    if written_late:
        store.record("repo", record.digest, record.job_id, record.upload_id, discard=record.discard)
    return r.headers["lading-job"], session, claimed


def _failure_recorded(api: Any, claimed: str) -> None:
    record = api.registry.pending.lookup("repo", Digest.parse(claimed))
    assert record is not None and record.failure() is not None  # the error stays learnable
    assert not api.registry.blobs.exists(Digest.parse(claimed))


def _nothing_left_of(api: Any, claimed: str) -> None:
    assert list(api.registry.uploads.sessions("repo")) == [], "the failed upload's bytes remain"
    _failure_recorded(api, claimed)


async def test_a_failed_batch_commit_discards_its_session_by_itself(make_api: Any, gated: GatedJobs) -> None:
    # As a synchronous PUT with a body that fails: its retry would append the body again.
    api = await make_api(registry=gated.registry, jobs=gated)
    status_url, session, claimed = await _failed_batch_put(api, gated, written_late=False)
    _nothing_left_of(api, claimed)  # before anyone asked
    errors_of(await api.client.get(session), 404, "BLOB_UPLOAD_UNKNOWN")
    errors_of(await api.client.get(status_url), 400, "DIGEST_INVALID")


async def test_a_failed_monolithic_batch_post_leaves_nothing(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    gated.gate.set()
    claimed = sha(b"what the client claimed")
    r = await api.client.post(
        "/v2/repo/blobs/uploads/", params={"digest": claimed}, content=LAYER, headers={**OCTET, **ASYNC}
    )
    assert r.status_code == 202, r.text
    errors_of(await api.client.get(r.headers["lading-job"]), 400, "DIGEST_INVALID")
    _nothing_left_of(api, claimed)


async def test_the_status_url_settles_a_failure_the_job_could_not(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    status_url, _, claimed = await _failed_batch_put(api, gated, written_late=True)
    assert list(api.registry.uploads.sessions("repo")) != []  # the job found no record to settle
    errors_of(await api.client.get(status_url), 400, "DIGEST_INVALID")
    _nothing_left_of(api, claimed)
    errors_of(await api.client.get(status_url), 400, "DIGEST_INVALID")  # from the record now


async def test_a_manifest_put_settles_a_failure_the_job_could_not(make_api: Any, gated: GatedJobs) -> None:
    api = await make_api(registry=gated.registry, jobs=gated)
    _, _, claimed = await _failed_batch_put(api, gated, written_late=True)
    await push_blob(api.client, "repo", CONFIG)
    r = await push_manifest(api.client, "repo", "v1", oci_manifest(CONFIG, [], missing=[claimed]))
    (entry,) = errors_of(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["reason"]["code"] == "DIGEST_INVALID"
    _nothing_left_of(api, claimed)


async def test_a_failed_body_less_batch_put_keeps_its_session_for_a_retry(
    make_api: Any, gated: GatedJobs
) -> None:
    # As a synchronous body-less PUT that fails: the bytes came by PATCH, the client may PUT
    # again with the right digest (or DELETE the session); the failure is recorded.
    api = await make_api(registry=gated.registry, jobs=gated)
    status_url, session, claimed = await _failed_batch_put(api, gated, written_late=False, with_body=False)
    _failure_recorded(api, claimed)
    errors_of(await api.client.get(status_url), 400, "DIGEST_INVALID")
    r = await api.client.put(session, params={"digest": sha(LAYER)})
    assert r.status_code == 201, r.text
    assert (await api.client.get(f"/v2/repo/blobs/{sha(LAYER)}")).content == LAYER
