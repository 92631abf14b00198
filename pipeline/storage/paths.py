"""Every storage path Lading reads or writes — the one module that knows the tree.

The layout is CNCF distribution's (registry/storage/paths.go), byte for byte, so a
directory written by distribution 2.x/3.x can be served as is and the other way round:

    /docker/registry/v2/
    ├── blobs/<alg>/<hex[0:2]>/<hex>/data
    └── repositories/<name>/
        ├── _layers/<alg>/<hex>/link
        ├── _manifests/revisions/<alg>/<hex>/link
        ├── _manifests/tags/<tag>/current/link
        ├── _manifests/tags/<tag>/index/<alg>/<hex>/link
        └── _uploads/<uuid>/{data, startedat, completing, hashstates/<alg>/<offset>}

Lading's own records live where distribution never looks: per repository under
`_lading/` (distribution's catalog walk skips `_`-prefixed directories) and globally under
`/docker/registry/v2/lading/`.
"""

from __future__ import annotations

from pipeline.formats.digest import Digest

ROOT = "/docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"
LADING = f"{ROOT}/lading"


def blobs_root() -> str:
    return BLOBS


def blob_algorithm_dir(algorithm: str) -> str:
    return f"{BLOBS}/{algorithm}"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def repositories_root() -> str:
    return REPOSITORIES


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers_dir(name: str) -> str:
    return f"{repository(name)}/_layers"


def layer_link_dir(name: str, digest: Digest) -> str:
    return f"{layers_dir(name)}/{digest.algorithm}/{digest.hex}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{layer_link_dir(name, digest)}/link"


def manifests_dir(name: str) -> str:
    return f"{repository(name)}/_manifests"


def manifest_revisions_dir(name: str) -> str:
    return f"{manifests_dir(name)}/revisions"


def manifest_revision_dir(name: str, digest: Digest) -> str:
    return f"{manifest_revisions_dir(name)}/{digest.algorithm}/{digest.hex}"


def manifest_revision_link(name: str, digest: Digest) -> str:
    return f"{manifest_revision_dir(name, digest)}/link"


def tags_dir(name: str) -> str:
    return f"{manifests_dir(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_dir(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/index"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_index_dir(name, tag)}/{digest.algorithm}/{digest.hex}/link"


def uploads_dir(name: str) -> str:
    return f"{repository(name)}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads_dir(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_completing(name: str, upload_id: str) -> str:
    """The record of a completing PUT whose body was appended (pipeline.stores.uploads.CompletingPut)."""
    return f"{upload_dir(name, upload_id)}/completing"


def upload_hashstates_dir(name: str, upload_id: str, algorithm: str) -> str:
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}"


def upload_hashstate(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    return f"{upload_hashstates_dir(name, upload_id, algorithm)}/{offset}"


# --- Lading's own records (ignored by distribution) ------------------------------------


def lading_repository_dir(name: str) -> str:
    return f"{repository(name)}/_lading"


def referrers_dir(name: str, subject: Digest) -> str:
    """Where the referrers of `subject` in repository `name` are linked."""
    return f"{lading_repository_dir(name)}/referrers/{subject.algorithm}/{subject.hex}"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}/{referrer.hex}/link"


def tag_moved_at(name: str, tag: str) -> str:
    """When `tag` was last moved or deleted: the request time (ns since the epoch) of the
    change that is current, so a late, redelivered job never moves the tag back."""
    return f"{lading_repository_dir(name)}/tags/{tag}/movedat"


def tarsum_record(digest: Digest) -> str:
    """JSON record of a blob's TarSum / uncompressed digest (written by the tarsum job)."""
    return f"{LADING}/tarsum/{digest.algorithm}/{digest.hex}"


def verification_record(name: str, manifest: Digest) -> str:
    """JSON record of a manifest's deep-verification result in repository `name`."""
    return f"{lading_repository_dir(name)}/verification/{manifest.algorithm}/{manifest.hex}"


def scrub_record(digest: Digest) -> str:
    return f"{LADING}/scrub/{digest.algorithm}/{digest.hex}"


def scrub_root() -> str:
    return f"{LADING}/scrub"


def quarantine_marker(digest: Digest) -> str:
    """Present when scrub found a blob's bytes no longer match its digest."""
    return f"{LADING}/quarantine/{digest.algorithm}/{digest.hex}"


def quarantine_root() -> str:
    return f"{LADING}/quarantine"


def maintenance_state(job: str) -> str:
    """Cursor/progress state of a resumable maintenance job (scrub, gc)."""
    return f"{LADING}/state/{job}"


def maintenance_stats(job: str) -> str:
    """JSON running totals of a maintenance job over every run (scrub, gc), read by the
    API's /metrics: the runs happen in worker processes, the scrape in the API."""
    return f"{LADING}/stats/{job}"


def pending_commits_dir(name: str) -> str:
    """Blob commits accepted in batch mode (`Prefer: respond-async`) and not yet confirmed."""
    return f"{lading_repository_dir(name)}/pending"


def pending_commit(name: str, digest: Digest) -> str:
    """JSON {job_id, upload_id, created} of a batch-mode commit of `digest` into `name`."""
    return f"{pending_commits_dir(name)}/{digest.algorithm}/{digest.hex}"


def gc_candidates_root() -> str:
    return f"{LADING}/gc/candidates"


def gc_candidate(digest: Digest) -> str:
    """Present while a garbage collection intends to delete the blob; a push that relies on
    the blob deletes it first (BlobStore.rescue), which makes the sweep keep the blob."""
    return f"{gc_candidates_root()}/{digest.algorithm}/{digest.hex}"


def gc_trash_root() -> str:
    return f"{LADING}/gc/trash"


def gc_trash(digest: Digest) -> str:
    """Where a sweep parks a blob's directory between deciding to delete it and deleting it."""
    return f"{gc_trash_root()}/{digest.algorithm}/{digest.hex}"


def gc_trash_data(digest: Digest) -> str:
    return f"{gc_trash(digest)}/data"


def gc_sweeping() -> str:
    """Present while a garbage collection has (or is about to write) candidate markers: a
    push checks this one file before looking for the markers of each blob it relies on."""
    return f"{LADING}/gc/sweeping"


def proxy_dir(name: str) -> str:
    """Pull-through cache records of a proxied repository (pipeline.proxy)."""
    return f"{lading_repository_dir(name)}/proxy"


def proxy_tag_record(name: str, tag: str) -> str:
    """JSON {digest, checked}: when the upstream last confirmed what `tag` points to."""
    return f"{proxy_dir(name)}/tags/{tag}"


def proxy_use_dir(name: str) -> str:
    return f"{proxy_dir(name)}/used"


def proxy_use_record(name: str, digest: Digest) -> str:
    """Empty file whose modification time is when the cached manifest was last pulled
    (refreshed at most every few minutes); cache expiry reads it."""
    return f"{proxy_use_dir(name)}/{digest.algorithm}/{digest.hex}"
