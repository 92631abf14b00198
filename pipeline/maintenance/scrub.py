"""Scrub: re-hash every stored blob (layers, configs and manifests alike) and quarantine the
ones whose bytes no longer match their digest.

The walk is in digest order and saves a cursor (`paths.maintenance_state("scrub")`) after
every blob, so a run that is killed or stopped by `limit` continues where it left off. It
reads at most `rate_bytes_per_s` (sleeping between chunks) so pushes keep their bandwidth.
Each blob's result is recorded at `paths.scrub_record(digest)`, and each finished run adds
its counts to `paths.maintenance_stats("scrub")` (pipeline.maintenance.stats) for /metrics.

A corrupt blob gets a quarantine marker (BlobStore then raises BlobCorrupt instead of
serving it) and is reported with what it breaks: the repositories linking it, the manifests
referencing it (directly or through an index) and the tags naming those manifests. A later
scrub that finds the bytes healthy (pushed again) lifts the quarantine. Blobs referenced
by a manifest but absent from storage are reported as missing once per complete pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import DigestInvalid, PathNotFound
from pipeline.formats.digest import Digest, new_hasher
from pipeline.maintenance import stats
from pipeline.maintenance.inventory import RepositoryScan, iter_blobs, iter_repositories, scan_repository
from pipeline.maintenance.locking import exclusive
from pipeline.registry import Registry
from pipeline.storage import paths

Progress = Callable[[int, int | None], None]

READ_CHUNK = 1 << 20
LOCK = "_scrub"


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Throttle:
    """Sleeps so that the bytes read since `start` never exceed `rate` per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.total = 0

    def consumed(self, n: int) -> None:
        self.total += n
        if self.rate <= 0:
            return
        ahead = self.total / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def _hash_blob(registry: Registry, digest: Digest, throttle: _Throttle) -> tuple[Digest, int]:
    """(actual digest, bytes read) of the stored data; PathNotFound if it vanished."""
    hasher = new_hasher(digest.algorithm)
    size = 0
    # Straight from the driver: BlobStore refuses quarantined blobs, and scrub must re-read them.
    with registry.driver.reader(paths.blob_data(digest)) as stream:
        while True:
            chunk = stream.read(READ_CHUNK)
            if not chunk:
                break
            hasher.update(chunk)
            size += len(chunk)
            throttle.consumed(len(chunk))
    return Digest(digest.algorithm, hasher.hexdigest()), size


class _Impact:
    """Which repositories, manifests and tags depend on a digest (built on first use)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._scans: list[RepositoryScan] | None = None

    @property
    def scans(self) -> list[RepositoryScan]:
        if self._scans is None:
            repos = iter_repositories(self.registry.driver)
            self._scans = [scan_repository(self.registry, repo) for repo in repos]
        return self._scans

    def of(self, digest: Digest) -> dict[str, list[str]]:
        repositories: set[str] = set()
        manifests: list[str] = []
        tags: list[str] = []
        for scan in self.scans:
            broken = _broken_manifests(scan, digest)
            if digest in scan.links or broken:
                repositories.add(scan.name)
            manifests.extend(f"{scan.name}@{m}" for m in sorted(broken, key=str))
            tags.extend(f"{scan.name}:{t}" for t, m in sorted(scan.tags.items()) if m in broken)
        return {"repositories": sorted(repositories), "manifests": manifests, "tags": tags}


def _broken_manifests(scan: RepositoryScan, digest: Digest) -> set[Digest]:
    """Manifests of the repository that are, reference, or contain (via index children) `digest`."""
    broken = {m for m, ref in scan.refs.items() if digest in (m, *ref.blobs, *ref.children)}
    if digest in scan.revisions:
        broken.add(digest)
    changed = True
    while changed:
        changed = False
        for m, ref in scan.refs.items():
            if m not in broken and any(child in broken for child in ref.children):
                broken.add(m)
                changed = True
    return broken


def _load_cursor(registry: Registry) -> Digest | None:
    try:
        state = json.loads(registry.driver.get_content(paths.maintenance_state("scrub")))
        cursor = state.get("cursor")
        return Digest.parse(cursor) if cursor else None
    except (PathNotFound, ValueError, AttributeError, DigestInvalid):
        return None


def _save_state(registry: Registry, state: dict[str, Any]) -> None:
    registry.driver.put_content(paths.maintenance_state("scrub"), json.dumps(state).encode())


def scrub(
    registry: Registry,
    rate_bytes_per_s: float | None = None,
    quarantine: bool | None = None,
    resume: bool = True,
    limit: int | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Re-hash stored blobs; quarantine and report corrupt ones.

    rate_bytes_per_s: None → settings (lading.maintenance.scrub.rate), 0 → unlimited.
    quarantine: None → settings. resume: continue after the saved cursor. limit: stop
    after this many blobs (the cursor is kept, `complete` is False). dry_run: report
    only — no quarantine change, no record, no cursor written.
    Returns {checked, bytes, corrupt: [{digest, actual, size, repositories, manifests,
    tags}], missing: [...], quarantined, released, complete, resumed_from, seconds,
    blobs_per_s} or {"skipped": reason} when another scrub is running."""
    maintenance = registry.settings.maintenance
    rate = maintenance.scrub_rate_bytes if rate_bytes_per_s is None else rate_bytes_per_s
    if quarantine is None:
        quarantine = maintenance.scrub_quarantine
    with exclusive(registry, LOCK) as acquired:
        if not acquired:
            return {"skipped": "another scrub is running"}
        summary = _Scrub(registry, float(rate or 0), quarantine, dry_run).run(resume, limit, progress)
        if not dry_run:
            counts = {
                "blobs": summary["checked"],
                "bytes": summary["bytes"],
                "corrupt": len(summary["corrupt"]),
                "quarantined": summary["quarantined"],
            }
            stats.add_run(registry.driver, stats.SCRUB, counts)
        return summary


class _Scrub:
    def __init__(self, registry: Registry, rate: float, quarantine: bool, dry_run: bool) -> None:
        self.registry = registry
        self.throttle = _Throttle(rate)
        self.quarantine = quarantine and not dry_run
        self.dry_run = dry_run
        self.impact = _Impact(registry)
        self.corrupt: list[dict[str, Any]] = []
        self.quarantined = 0
        self.released = 0
        # Sizes of the blobs checked. Not the throttle's count of bytes read: a blob whose
        # digest mismatches is read twice (a push may have replaced it meanwhile), and one
        # that vanishes mid-read is not checked, so that count overstated what is stored.
        self.bytes_checked = 0

    def run(self, resume: bool, limit: int | None, progress: Progress | None) -> dict[str, Any]:
        started = time.monotonic()
        cursor = _load_cursor(self.registry) if resume else None
        run_started = _now_text()
        checked = 0
        complete = True
        for entry in iter_blobs(self.registry.driver, after=cursor):
            if limit is not None and checked >= limit:
                complete = False
                break
            if not self._check(entry.digest):
                continue
            checked += 1
            if not self.dry_run:
                state = {"cursor": str(entry.digest), "started_at": run_started, "updated_at": _now_text()}
                _save_state(self.registry, state)
            if progress is not None:
                progress(checked, None)
        missing: list[dict[str, Any]] = []
        if complete:
            missing = _missing(self.registry, self.impact)
            if not self.dry_run:
                _save_state(self.registry, {"cursor": None, "completed_at": _now_text()})
        seconds = time.monotonic() - started
        return {
            "checked": checked,
            "bytes": self.bytes_checked,
            "bytes_read": self.throttle.total,
            "corrupt": self.corrupt,
            "missing": missing,
            "quarantined": self.quarantined,
            "released": self.released,
            "complete": complete,
            "resumed_from": str(cursor) if cursor is not None else None,
            "dry_run": self.dry_run,
            "seconds": round(seconds, 3),
            "blobs_per_s": round(checked / seconds, 1) if seconds > 0 else None,
        }

    def _check(self, digest: Digest) -> bool:
        """Hash one blob, record and act on the result; False if it vanished meanwhile."""
        registry = self.registry
        try:
            actual, size = _hash_blob(registry, digest, self.throttle)
            if actual != digest:
                # A push may have replaced the bytes while we read the old ones: look again.
                actual, size = _hash_blob(registry, digest, self.throttle)
        except PathNotFound:
            return False  # deleted (garbage collection) while we walked
        self.bytes_checked += size
        record: dict[str, Any] = {"ok": actual == digest, "checked_at": _now_text(), "size": size}
        if actual == digest:
            if registry.blobs.is_quarantined(digest) and not self.dry_run:
                registry.blobs.clear_quarantine(digest)
                self.released += 1
        else:
            record["actual"] = str(actual)
            report = {"digest": str(digest), "actual": str(actual), "size": size, **self.impact.of(digest)}
            self.corrupt.append(report)
            if self.quarantine:
                marker = {**record, "digest": str(digest), "detected_at": record["checked_at"]}
                registry.driver.put_content(paths.quarantine_marker(digest), json.dumps(marker).encode())
                registry.blobs.cache.forget(digest)  # a cached HEAD must not vouch for it
                self.quarantined += 1
        if not self.dry_run:
            registry.driver.put_content(paths.scrub_record(digest), json.dumps(record).encode())
        return True


def _missing(registry: Registry, impact: _Impact) -> list[dict[str, Any]]:
    """Blobs and manifests that manifests (or revision links) name but storage lacks."""
    wanted: set[Digest] = set()
    for scan in impact.scans:
        wanted.update(scan.missing)
        for ref in scan.refs.values():
            wanted.update(d for d in ref.blobs if d not in ref.foreign)
            wanted.update(ref.children)
    absent = sorted((d for d in wanted if not registry.driver.exists(paths.blob_data(d))), key=str)
    return [{"digest": str(d), **impact.of(d)} for d in absent]
