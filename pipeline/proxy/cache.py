"""The pull-through cache's use cases. Jobs run the ones that fetch and verify
(`fetch_manifest`, `fetch_blob`, `warm`, `expire`); the API runs the read-only ones
(`fresh_tag`, `blob_fetch_state`, `BlobTail`, `list_tags`, `list_referrers`) in a thread.

Cached content is stored exactly as pushed content is — blobs in `blobs/`, links in the
proxied repository — so every read path, gc and scrub treat it like any other; the cache's
own records live in `_lading/proxy/` (pipeline.storage.paths).

Blobs (single flight). `fetch_blob` claims the lease `blob:<repo>@<digest>`
(pipeline.proxy.leases); only the claimant asks the upstream. It creates an upload
session, records `{upload_id, size}` in the lease, appends the upstream's bytes to the
session as they arrive, and then runs pipeline.blob_commit.commit_blob on it — the same
commit a push goes through: the digest is verified before the blob is linked, so bytes
that do not hash to the digest never enter the cache. Readers (`BlobTail`) stream the
session's bytes as they land, but hold back the last `HOLD_BACK` bytes until the commit
has succeeded: no client receives a whole blob that failed verification. A failed fetch
leaves a short-lived failed lease that tells readers to stop.

Manifests. `fetch_manifest` runs under the lock `<repo>@proxy:<reference>` (the
registry's locks: Redis across workers), re-checks the cache once it holds it, so
concurrent requests cost one upstream fetch, checks the body against the digest
(the reference's, else the upstream's Docker-Content-Digest), stores it and points the
tag at it. A tag has a freshness window (`tag_ttl`): within it nothing is asked upstream;
past it, one HEAD compares the upstream's digest with the cached one. When the upstream
cannot answer (UpstreamUnavailable) and a copy is cached, the copy is served as stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.blob_commit import commit_blob
from pipeline.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    InvalidOffset,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    OperationUnsupported,
    PathNotFound,
    RegistryError,
    SizeInvalid,
    UpstreamUnavailable,
    from_payload,
)
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    parse_manifest,
)
from pipeline.formats.names import is_digest_reference, validate_name
from pipeline.proxy import ProxyTarget, route, stats
from pipeline.proxy.leases import LEASE_SECONDS, Leases, leases_for
from pipeline.proxy.upstream import client_for
from pipeline.storage import paths

if TYPE_CHECKING:
    from pipeline.registry import Registry

log = logging.getLogger("lading.proxy")

DEFAULT_ACCEPT = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST]
APPEND_CHUNK = 1 << 20  # bytes gathered before one append to the upload session
HOLD_BACK = 64 * 1024  # bytes a reader waits for verification before sending
FAILED_SECONDS = 5.0  # how long a failed fetch tells its readers so
POLL_SECONDS = 0.02
USE_REFRESH_SECONDS = 300.0  # a pull refreshes a manifest's "last used" at most this often


def target_of(registry: Registry, repository: str) -> ProxyTarget:
    target = route(registry.settings, repository)
    if target is None:
        raise OperationUnsupported(f"repository {repository!r} is not proxied")
    return target


# --- tags ----------------------------------------------------------------------------


def _tag_record(registry: Registry, repository: str, tag: str) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(
            registry.driver.get_content(paths.proxy_tag_record(repository, tag))
        )
    except (PathNotFound, ValueError):
        return None
    return record


def _write_tag_record(registry: Registry, repository: str, tag: str, digest: Digest) -> None:
    record = {"digest": str(digest), "checked": time.time()}
    registry.driver.put_content(paths.proxy_tag_record(repository, tag), json.dumps(record).encode())


def fresh_tag(registry: Registry, repository: str, tag: str) -> Digest | None:
    """The cached digest of `tag` when the upstream confirmed it within the tag freshness
    window and the manifest is stored; None when the upstream must be asked."""
    target = target_of(registry, repository)
    record = _tag_record(registry, repository, tag)
    if record is None or time.time() - float(record.get("checked", 0)) > target.upstream.tag_ttl_seconds:
        return None
    try:
        digest = registry.tags.resolve(repository, tag)
    except ManifestUnknown:
        return None
    if str(digest) != record.get("digest") or not registry.manifests.exists(repository, digest):
        return None
    return digest


def note_use(registry: Registry, repository: str, digest: Digest) -> None:
    """Record that a cached manifest was pulled (at most every USE_REFRESH_SECONDS), so
    expiry keeps what is in use."""
    path = paths.proxy_use_record(repository, digest)
    try:
        modified = registry.driver.stat(path).modified.timestamp()
    except PathNotFound:
        modified = 0.0
    if time.time() - modified >= USE_REFRESH_SECONDS:
        registry.driver.put_content(path, b"")


# --- manifests -------------------------------------------------------------------------


def fetch_manifest(
    registry: Registry, repository: str, reference: str, accept: list[str] | None = None
) -> dict[str, Any]:
    """Make the manifest `reference` (tag or digest) of proxied `repository` present in
    the cache, asking the upstream only as the module docstring says.

    Returns {"digest", "media_type", "fetched": bool (the upstream sent the body),
    "stale": str | None (why a cached copy is served without the upstream's word)}.
    Raises ManifestUnknown, UpstreamUnavailable (and nothing cached), DigestInvalid (the
    upstream's body does not match its digest)."""
    validate_name(repository)
    target = target_of(registry, repository)
    accept = [a for a in (accept or []) if a and a != "*/*"] or DEFAULT_ACCEPT
    with registry.locks.lock(f"{repository}@proxy:{reference}", timeout=120.0):
        if is_digest_reference(reference):
            digest = Digest.parse(reference)
            if registry.manifests.exists(repository, digest):
                stats.add(target.upstream.label, "cache_hits")
                return _answer(registry, repository, digest, fetched=False)
            stats.add(target.upstream.label, "cache_misses")
            return _download(registry, target, repository, reference, accept)
        return _fetch_tag(registry, target, repository, reference, accept)


def _fetch_tag(
    registry: Registry, target: ProxyTarget, repository: str, tag: str, accept: list[str]
) -> dict[str, Any]:
    label = target.upstream.label
    fresh = fresh_tag(registry, repository, tag)
    if fresh is not None:  # another request refreshed it while we waited for the lock
        stats.add(label, "cache_hits")
        return _answer(registry, repository, fresh, fetched=False)
    try:
        cached: Digest | None = registry.tags.resolve(repository, tag)
    except ManifestUnknown:
        cached = None
    if cached is not None and not registry.manifests.exists(repository, cached):
        cached = None
    try:
        if cached is not None:
            current = client_for(target.upstream).head_manifest(target.remote_name, tag, accept)
            if current == str(cached):
                _write_tag_record(registry, repository, tag, cached)
                stats.add(label, "cache_hits")
                return _answer(registry, repository, cached, fetched=False)
        stats.add(label, "cache_misses")
        return _download(registry, target, repository, tag, accept)
    except UpstreamUnavailable as exc:
        if cached is None:
            raise
        log.warning("upstream %s unavailable, serving cached %s:%s (%s)", label, repository, tag, exc.detail)
        stats.add(label, "cache_hits")
        return _answer(registry, repository, cached, fetched=False, stale=_reason(exc))


def _reason(exc: RegistryError) -> str:
    detail = exc.detail if isinstance(exc.detail, dict) else {}
    return str(detail.get("reason") or exc.text)


def _download(
    registry: Registry, target: ProxyTarget, repository: str, reference: str, accept: list[str]
) -> dict[str, Any]:
    client = client_for(target.upstream)
    body, content_type, header_digest = client.get_manifest(target.remote_name, reference, accept)
    if len(body) > MAX_MANIFEST_SIZE:
        raise ManifestInvalid(f"the upstream's manifest is larger than {MAX_MANIFEST_SIZE} bytes")
    manifest = _verified(target, body, content_type, reference, header_digest)
    registry.blobs.rescue(manifest.digest)
    registry.manifests.put(repository, manifest)
    if manifest.subject is not None:
        registry.referrers.add(repository, manifest.subject.digest, manifest.digest)
    if not is_digest_reference(reference):
        registry.tags.tag(repository, reference, manifest.digest)
        _write_tag_record(registry, repository, reference, manifest.digest)
    return _answer(registry, repository, manifest.digest, fetched=True)


def _verified(
    target: ProxyTarget, body: bytes, content_type: str, reference: str, header_digest: str | None
) -> Manifest:
    """The parsed manifest, after checking its bytes against the digest that names them."""
    manifest = parse_manifest(body, content_type or None)
    expected = reference if is_digest_reference(reference) else header_digest
    if expected:
        want = Digest.parse(expected)
        actual = Digest.of(body, want.algorithm)
        if actual != want:
            stats.add(target.upstream.label, "upstream_errors")
            raise UpstreamUnavailable(
                {"upstream": target.upstream.remoteurl, "reason": f"manifest hashes to {actual}, not {want}"}
            )
        if want.algorithm != manifest.digest.algorithm:
            manifest = dataclasses.replace(manifest, digest=want)
    return manifest


def _answer(
    registry: Registry, repository: str, digest: Digest, *, fetched: bool, stale: str | None = None
) -> dict[str, Any]:
    _, media_type = registry.manifests.get(repository, digest)
    return {"digest": str(digest), "media_type": media_type, "fetched": fetched, "stale": stale}


# --- blobs ---------------------------------------------------------------------------


def blob_key(repository: str, digest: Digest) -> str:
    return f"blob:{repository}@{digest}"


def fetch_blob(registry: Registry, repository: str, digest: str) -> dict[str, Any]:
    """Fetch blob `digest` of proxied `repository` into the cache unless it is cached or
    another process is fetching it. Returns {"fetched": bool, "size"?}. Raises
    BlobUnknown (the upstream has no such blob), UpstreamUnavailable (unreachable, or its
    bytes failed verification — nothing is then cached)."""
    validate_name(repository)
    wanted = Digest.parse(digest)
    target = target_of(registry, repository)
    leases = leases_for(registry.settings)
    key = blob_key(repository, wanted)
    if _blob_cached(registry, repository, wanted):
        return {"fetched": False}
    owner = uuid.uuid4().hex
    if not leases.claim(key, {"owner": owner, "state": "starting"}, LEASE_SECONDS):
        return {"fetched": False}
    upload_id: str | None = None
    try:
        if _blob_cached(registry, repository, wanted):  # committed just before our claim
            leases.drop(key)
            return {"fetched": False}
        sessions: list[str] = []
        try:
            size = _download_blob(registry, leases, key, owner, target, repository, wanted, sessions)
        finally:
            upload_id = sessions[0] if sessions else None
        try:
            result = commit_blob(registry, repository, sessions[0], str(wanted), size)
        except (DigestInvalid, SizeInvalid) as exc:
            stats.add(target.upstream.label, "upstream_errors")
            raise UpstreamUnavailable(
                {
                    "upstream": target.upstream.remoteurl,
                    "reason": f"blob {wanted} failed verification: {exc.detail}",
                }
            ) from None
        upload_id = None
        leases.drop(key)
        return {"fetched": True, "size": result["size"]}
    except RegistryError as exc:
        leases.put(key, {"owner": owner, "state": "failed", "error": exc.to_payload()}, FAILED_SECONDS)
        if upload_id is not None:
            with contextlib.suppress(BlobUploadUnknown):
                registry.uploads.cancel(repository, upload_id)
        raise
    except BaseException:
        leases.drop(key)
        if upload_id is not None:
            with contextlib.suppress(BlobUploadUnknown):
                registry.uploads.cancel(repository, upload_id)
        raise


def _blob_cached(registry: Registry, repository: str, digest: Digest) -> bool:
    """Linked into the repository and stored (a commit links before it moves the data)."""
    try:
        registry.repo_blobs.stat(repository, digest)
    except BlobUnknown:
        return False
    return True


def _download_blob(
    registry: Registry,
    leases: Leases,
    key: str,
    owner: str,
    target: ProxyTarget,
    repository: str,
    digest: Digest,
    sessions: list[str],
) -> int:
    """Stream the upstream's bytes into a new upload session (its id appended to
    `sessions` as soon as it exists: nothing is created before the upstream answers 200);
    the number of bytes written."""
    label = target.upstream.label
    stats.add(label, "cache_misses")
    with client_for(target.upstream).open_blob(target.remote_name, str(digest)) as response:
        upload_id = registry.uploads.create(repository).upload_id
        sessions.append(upload_id)
        length = response.headers.get("content-length")
        size = int(length) if length and length.isdigit() else None
        record = {"owner": owner, "state": "fetching", "upload_id": upload_id, "size": size}
        leases.put(key, record, LEASE_SECONDS)
        renewed = time.monotonic()
        written = 0
        buffer = bytearray()
        for chunk in response.iter_bytes(256 * 1024):
            buffer += chunk
            if len(buffer) >= APPEND_CHUNK:
                written = registry.uploads.append(repository, upload_id, bytes(buffer))
                stats.add(label, "upstream_bytes", len(buffer))
                buffer.clear()
                if time.monotonic() - renewed > LEASE_SECONDS / 3:
                    leases.put(key, record, LEASE_SECONDS)
                    renewed = time.monotonic()
        if buffer:
            written = registry.uploads.append(repository, upload_id, bytes(buffer))
            stats.add(label, "upstream_bytes", len(buffer))
        leases.put(key, {**record, "state": "verifying", "size": written}, LEASE_SECONDS)
        return written


def blob_fetch_state(registry: Registry, repository: str, digest: Digest) -> dict[str, Any] | None:
    """The lease of a running (or just failed) fetch of the blob, or None."""
    return leases_for(registry.settings).get(blob_key(repository, digest))


def raise_failed(record: dict[str, Any]) -> None:
    """Raise the error a failed fetch recorded."""
    error = from_payload(record.get("error") or {"kind": "UpstreamUnavailable"})
    if isinstance(error, RegistryError):
        raise error
    raise UpstreamUnavailable({"reason": str(error)})


class BlobTail(io.RawIOBase):
    """A blob being fetched into the cache, read as it arrives (see module docstring):
    `read` blocks for new bytes, holds the last HOLD_BACK bytes back until the commit has
    verified the blob, and raises OSError when the fetch fails (the response then ends
    short, so no client takes the bytes for the blob). `read_available` is the same
    without waiting, for callers that wait elsewhere (an event loop)."""

    def __init__(
        self, registry: Registry, repository: str, digest: Digest, upload_id: str, size: int, timeout: float
    ) -> None:
        super().__init__()
        self.registry = registry
        self.repository = repository
        self.digest = digest
        self.upload_id = upload_id
        self.size = size
        self.offset = 0
        self.timeout = timeout
        self._verified: io.RawIOBase | Any = None
        self._progress = time.monotonic()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """The next bytes, waiting for them (b"" only at the end)."""
        while self.offset < self.size:
            data = self.read_available(n)
            if data:
                return data
            time.sleep(POLL_SECONDS)
        return b""

    def read_available(self, n: int = -1) -> bytes:
        """The next bytes that may be sent now, without waiting: b"" when none have
        arrived yet (or at the end). OSError when the fetch failed or made no progress for
        `timeout` seconds."""
        if self.offset >= self.size:
            return b""
        want = self.size - self.offset if n is None or n < 0 else min(n, self.size - self.offset)
        if self._verified is None:
            limit = self.size - min(HOLD_BACK, self.size)
            if self.offset < limit:
                data = self._from_session(min(want, limit - self.offset))
                if data:
                    return self._take(data)
            if not self._committed():
                record = blob_fetch_state(self.registry, self.repository, self.digest)
                if (record is None or record.get("state") == "failed") and not self._committed():
                    raise OSError(f"fetch of {self.digest} from the upstream failed")
                if time.monotonic() - self._progress > self.timeout:
                    raise OSError(f"fetch of {self.digest} stalled")
                return b""
            self._verified = self.registry.blobs.open(self.digest, self.offset)
        return self._take(self._verified.read(want))

    def _take(self, data: bytes) -> bytes:
        self.offset += len(data)
        self._progress = time.monotonic()
        return data

    def _from_session(self, n: int) -> bytes:
        try:
            with self.registry.driver.reader(
                paths.upload_data(self.repository, self.upload_id), self.offset
            ) as r:
                return r.read(n)
        except (PathNotFound, InvalidOffset):
            return b""

    def _committed(self) -> bool:
        return self.registry.repo_blobs.is_linked(
            self.repository, self.digest
        ) and self.registry.blobs.exists(self.digest)

    def close(self) -> None:
        if self._verified is not None:
            self._verified.close()
            self._verified = None
        super().close()


# --- warming -------------------------------------------------------------------------


def _platform_of(value: dict[str, Any] | None) -> str:
    if not value:
        return ""
    parts = [str(value.get("os", "")), str(value.get("architecture", ""))]
    if value.get("variant"):
        parts.append(str(value["variant"]))
    return "/".join(parts)


def warm(registry: Registry, repository: str, digest: str) -> dict[str, Any]:
    """Fetch into the cache what manifest `digest` (already cached) needs: its config and
    layers, and for an index the children (and their blobs) of the platforms the upstream
    lists in `platforms`. Blobs already cached or being fetched are skipped. Returns
    {"manifests": n, "blobs": n fetched, "failed": [digest, ...]}."""
    target = target_of(registry, repository)
    body, media_type = registry.manifests.get(repository, Digest.parse(digest))
    manifest = parse_manifest(body, media_type)
    wanted = set(target.upstream.platforms)
    todo: list[Manifest] = [manifest]
    counts: dict[str, Any] = {"manifests": 0, "blobs": 0, "failed": []}
    while todo:
        current = todo.pop()
        for child in current.manifest_references():
            if _platform_of(child.platform) not in wanted:
                continue
            try:
                fetch_manifest(registry, repository, str(child.digest))
                child_body, child_type = registry.manifests.get(repository, child.digest)
            except RegistryError as exc:
                log.warning("warming %s@%s failed: %s", repository, child.digest, exc)
                counts["failed"].append(str(child.digest))
                continue
            counts["manifests"] += 1
            todo.append(parse_manifest(child_body, child_type))
        for blob in current.blob_references():
            try:
                if fetch_blob(registry, repository, str(blob.digest)).get("fetched"):
                    counts["blobs"] += 1
            except RegistryError as exc:
                log.warning("warming %s@%s failed: %s", repository, blob.digest, exc)
                counts["failed"].append(str(blob.digest))
    return counts


# --- tags and referrers lists -----------------------------------------------------------


def list_tags(registry: Registry, repository: str) -> tuple[list[str], str | None]:
    """(every tag, warning or None): the upstream's list (all pages), or — when the
    upstream cannot answer — the cached tags with a warning. NameUnknown when neither
    knows the repository."""
    target = target_of(registry, repository)
    client = client_for(target.upstream)
    tags: list[str] = []
    query: dict[str, str] = {}
    try:
        for _ in range(1000):  # pages
            doc, headers = client.get_json(target.remote_name, "tags/list", query)
            page = [str(t) for t in (doc.get("tags") or [])] if isinstance(doc, dict) else []
            tags.extend(page)
            link = headers.get("link", "")
            if not page or "last=" not in link:
                break
            query = {"last": page[-1]}
        return sorted(set(tags)), None
    except UpstreamUnavailable as exc:
        try:
            cached = registry.tags.list(repository)
        except NameUnknown:
            raise exc from None
        return cached, _reason(exc)


def list_referrers(
    registry: Registry, repository: str, subject: Digest, artifact_type: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """(descriptors, warning or None): the upstream's referrers of `subject`, or the
    cached ones when the upstream cannot answer or has no referrers API."""
    target = target_of(registry, repository)
    query = {"artifactType": artifact_type} if artifact_type else None
    try:
        doc, _ = client_for(target.upstream).get_json(target.remote_name, f"referrers/{subject}", query)
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if isinstance(manifests, list):
            found = [m for m in manifests if isinstance(m, dict)]
            if artifact_type:
                found = [m for m in found if m.get("artifactType") == artifact_type]
            return found, None
        reason: str | None = "upstream answered no index"
    except (UpstreamUnavailable, NameUnknown) as exc:
        reason = _reason(exc)
    try:
        local = registry.referrers.list(repository, subject, artifact_type)
    except NameUnknown:
        local = []
    return [d.to_json() for d in local], reason


# --- expiry --------------------------------------------------------------------------


def expire(registry: Registry, now: float | None = None) -> dict[str, Any]:
    """Remove from every proxied repository the cached manifests not pulled within their
    upstream's `ttl` (with their tags), and the layer links no remaining manifest needs;
    garbage collection then reclaims the bytes. A manifest is pulled "now" when its use
    record is fresh, so content a pull is reading is never expired; bytes a reader has
    already opened stay readable (gc's grace window). Returns {"manifests", "blobs"}."""
    from pipeline.maintenance.inventory import iter_repositories

    now = time.time() if now is None else now
    removed = {"manifests": 0, "blobs": 0}
    for repository in iter_repositories(registry.driver):
        target = route(registry.settings, repository) if registry.settings.proxy.enabled else None
        if target is None or target.upstream.ttl_seconds <= 0:
            continue
        with registry.locks.lock(repository):
            removed_here = _expire_repository(registry, repository, now - target.upstream.ttl_seconds)
        removed["manifests"] += removed_here[0]
        removed["blobs"] += removed_here[1]
    return removed


def _last_used(registry: Registry, repository: str, digest: Digest) -> float:
    for path in (
        paths.proxy_use_record(repository, digest),
        paths.manifest_revision_link(repository, digest),
    ):
        with contextlib.suppress(PathNotFound):
            modified = registry.driver.stat(path).modified
            return modified.replace(tzinfo=modified.tzinfo or UTC).timestamp()
    return datetime.now(UTC).timestamp()


def _linked_before(registry: Registry, repository: str, digest: Digest, cutoff: float) -> bool:
    """A blob linked (fetched) after `cutoff` stays: it may be what a pull is reading now."""
    try:
        modified = registry.driver.stat(paths.layer_link(repository, digest)).modified
    except PathNotFound:
        return False
    return modified.replace(tzinfo=modified.tzinfo or UTC).timestamp() < cutoff


def _expire_repository(registry: Registry, repository: str, cutoff: float) -> tuple[int, int]:
    expired: list[Digest] = []
    kept: list[Digest] = []
    for digest in list(registry.manifests.revisions(repository)):
        (expired if _last_used(registry, repository, digest) < cutoff else kept).append(digest)
    if not expired:
        return 0, 0
    needed: set[Digest] = set()
    for digest in kept:
        with contextlib.suppress(RegistryError):
            body, media_type = registry.manifests.get(repository, digest)
            m = parse_manifest(body, media_type)
            needed.update(d.digest for d in m.blob_references())
    for digest in expired:
        for tag in registry.tags.lookup(repository, digest):
            with contextlib.suppress(ManifestUnknown):
                registry.tags.untag(repository, tag)
            with contextlib.suppress(PathNotFound):
                registry.driver.delete(paths.proxy_tag_record(repository, tag))
        with contextlib.suppress(ManifestUnknown):
            registry.manifests.delete(repository, digest)
        with contextlib.suppress(PathNotFound):
            registry.driver.delete(paths.proxy_use_record(repository, digest))
    blobs = 0
    for digest in list(registry.repo_blobs.links(repository)):
        if digest not in needed and _linked_before(registry, repository, digest, cutoff):
            with contextlib.suppress(BlobUnknown):
                registry.repo_blobs.unlink(repository, digest)
                blobs += 1
    return len(expired), blobs
