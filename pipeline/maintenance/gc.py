"""Online garbage collection: mark every blob something still uses, sweep the rest —
while pushes keep running.

Mark. In every repository, keep every manifest revision (or, with `remove_untagged`, only
what the tags reach), then transitively: index children, and referrers whose subject is
kept. A kept manifest keeps its own bytes, its config and its layers. Upload sessions are
not blobs yet and need nothing. Sweep. A blob no repository keeps and whose data is older
than the grace window is deleted, and so are `_layers` links left pointing at no data;
with `remove_untagged`, unreachable revisions are deleted too.

Racing pushes. A client may HEAD an old unreferenced blob, skip its upload and PUT a
manifest naming it while the sweep runs. A grace window alone cannot help (the blob is
old), so the sweep and every writer that relies on an existing blob follow this protocol:

  GC  (a) writes the flag `paths.gc_sweeping()`, then a candidate marker
          `paths.gc_candidate(d)` for each blob it means to delete
      (b) then marks again, and in each repository first takes and drops the repository
          lock (a barrier) before reading it
      (c) per candidate still unmarked: moves the blob directory into `paths.gc_trash(d)`,
          THEN looks at the marker: still there → deletes the trash; gone → moves it back.
  Push  `BlobStore.rescue(d)` (delete the marker) BEFORE checking that `d` exists:
          commit_manifest (under the repository lock, for every reference and the manifest
          itself), BlobStore.put, commit_blob when the blob is already stored, mount. When
          the flag is absent there are no markers to delete (one check per commit).

Why no pushed manifest ever names a deleted blob — take a manifest commit that checked
`d` exists (E) after rescuing it (R), both under its repository lock, and wrote its links (W)
before releasing the lock:
  - R before the marker of `d` was written (R found no flag or no marker): the push held
    the lock across R..W, so the barrier in (b) waits for W and the second mark sees the
    new manifest: `d` is kept.
  - R after (a) and before the marker check in (c): the check finds no marker and the blob
    goes back. If E ran between the move and the move back it saw no blob and the push
    failed cleanly with MANIFEST_BLOB_UNKNOWN (the client retries); it never wrote a tag.
  - R after the check: E runs after the move and sees no blob (unless a concurrent push
    stored the bytes again), so the push fails cleanly.
Revisions (remove_untagged) and dangling links are deleted under the repository lock and
only after re-checking (marker still present; data still absent), for the same reason.

At most one collection runs at a time (the registry lock "_gc", taken without waiting), no
repository lock is held for longer than one check-and-delete, and the directories of a
killed run (markers, trash) are recovered at the start of the next run and by reconcile.
Each finished run (not a dry run) adds what it deleted to `paths.maintenance_stats("gc")`
(pipeline.maintenance.stats), which the API exports on /metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
    PathExists,
    PathNotFound,
    TooManyRequests,
)
from pipeline.formats.digest import Digest
from pipeline.maintenance import stats
from pipeline.maintenance.inventory import RepositoryScan, iter_blobs, iter_repositories, scan_repository
from pipeline.maintenance.locking import exclusive
from pipeline.registry import Registry
from pipeline.storage import paths

Progress = Callable[[int, int | None], None]

LOCK = "_gc"
BARRIER_TIMEOUT = 60.0  # a manifest commit holds its lock for milliseconds; minutes means trouble
SHORT_LOCK_TIMEOUT = 5.0  # for one check-and-delete; on timeout the item waits for the next run
REPORT_LIMIT = 1000  # digests listed in a dry-run summary


@dataclass
class _Mark:
    scans: list[RepositoryScan] = field(default_factory=list)
    blobs: set[Digest] = field(default_factory=set)
    kept: dict[str, set[Digest]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def _mark(registry: Registry, remove_untagged: bool, barrier: bool, progress: Progress | None) -> _Mark:
    mark = _Mark()
    for repo in iter_repositories(registry.driver):
        if barrier:
            # Waits for any manifest commit that rescued a blob before the candidate markers
            # were written; its links are then visible to the scan below.
            with registry.locks.lock(repo, timeout=BARRIER_TIMEOUT):
                pass
        scan = scan_repository(registry, repo)
        kept = scan.kept(remove_untagged)
        mark.scans.append(scan)
        mark.kept[repo] = kept
        mark.blobs |= scan.blobs_of(kept)
        mark.unreadable.extend(f"{repo}@{d}" for d in sorted(scan.unreadable & kept, key=str))
        if progress is not None:
            progress(len(mark.scans), None)
    return mark


def garbage_collect(
    registry: Registry,
    dry_run: bool = False,
    remove_untagged: bool | None = None,
    grace_seconds: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Mark and sweep (see the module docstring). None → lading.maintenance.gc settings.

    Returns {blobs_deleted, bytes_freed, manifests_deleted, links_removed, marked,
    candidates, rescued, blobs_examined, repositories, recovered, dry_run, seconds,
    blobs_per_s} (+ "would_delete" on a dry run, "sweep_skipped" when marking could not be
    trusted), or {"skipped": reason} while another collection runs."""
    maintenance = registry.settings.maintenance
    untagged = maintenance.gc_remove_untagged if remove_untagged is None else remove_untagged
    grace = maintenance.gc_grace_seconds if grace_seconds is None else grace_seconds
    with exclusive(registry, LOCK) as acquired:
        if not acquired:
            return {"skipped": "another garbage collection is running"}
        summary = _Collection(registry, dry_run, untagged, float(grace), progress).run()
        if not dry_run:
            counts = {
                "blobs": summary["blobs_deleted"],
                "bytes": summary["bytes_freed"],
                "manifests": summary["manifests_deleted"],
            }
            stats.add_run(registry.driver, stats.GC, counts)
        return summary


class _Collection:
    def __init__(
        self,
        registry: Registry,
        dry_run: bool,
        remove_untagged: bool,
        grace: float,
        progress: Progress | None,
    ) -> None:
        self.registry = registry
        self.driver = registry.driver
        self.dry_run = dry_run
        self.remove_untagged = remove_untagged
        self.grace = grace
        self.progress = progress
        self.started = time.monotonic()
        self.summary: dict[str, Any] = {
            "blobs_deleted": 0,
            "bytes_freed": 0,
            "manifests_deleted": 0,
            "links_removed": 0,
            "marked": 0,
            "candidates": 0,
            "rescued": 0,
            "blobs_examined": 0,
            "repositories": 0,
            "recovered": {},
            "dry_run": dry_run,
        }

    def run(self) -> dict[str, Any]:
        if not self.dry_run:
            self.summary["recovered"] = recover(self.registry)
        first = _mark(self.registry, self.remove_untagged, barrier=False, progress=self.progress)
        self.summary["repositories"] = len(first.scans)
        if first.unreadable:
            return self._skip(f"manifests whose references cannot be read: {first.unreadable[:20]}")
        now = time.time()
        candidates: dict[Digest, int] = {}
        held = {"blobs": 0, "bytes": 0, "until": 0.0, "grace_seconds": self.grace}
        for entry in iter_blobs(self.driver):
            self.summary["blobs_examined"] += 1
            if entry.digest in first.blobs:
                continue
            if now - entry.modified.timestamp() >= self.grace:
                candidates[entry.digest] = entry.size
            else:  # unreferenced but fresh: maybe a push's layer whose manifest is on its way
                held["blobs"] += 1
                held["bytes"] += entry.size
                held["until"] = max(held["until"], entry.modified.timestamp() + self.grace)
        # Unreferenced blobs the grace period keeps, and when the last of them becomes collectable.
        self.summary["held_by_grace"] = held
        revisions = [
            (scan.name, d)
            for scan in first.scans
            for d in sorted(scan.revisions - first.kept[scan.name], key=str)
        ]
        self.summary["candidates"] = len(candidates)
        if self.dry_run:
            self.summary["marked"] = len(first.blobs)
            self.summary["would_delete"] = {
                "blobs": len(candidates),
                "bytes": sum(candidates.values()),
                "manifests": len(revisions),
                "digests": [str(d) for d in sorted(candidates, key=str)[:REPORT_LIMIT]],
                "revisions": [f"{repo}@{d}" for repo, d in revisions[:REPORT_LIMIT]],
            }
            return self._finish()
        self.driver.put_content(paths.gc_sweeping(), b"")  # before any marker: pushes look here first
        for digest in {*candidates, *(d for _, d in revisions)}:
            self.driver.put_content(paths.gc_candidate(digest), b"")
        try:
            second = _mark(self.registry, self.remove_untagged, barrier=True, progress=self.progress)
        except TooManyRequests as exc:
            _clear_candidates(self.registry)
            return self._skip(f"a repository stayed locked: {exc}")
        if second.unreadable:
            _clear_candidates(self.registry)
            return self._skip(f"manifests whose references cannot be read: {second.unreadable[:20]}")
        self.summary["marked"] = len(second.blobs)
        scans = {scan.name: scan for scan in second.scans}
        for repo, digest in revisions:
            scan = scans.get(repo)
            if scan is not None and digest not in second.kept[repo] and self._delete_revision(scan, digest):
                self.summary["manifests_deleted"] += 1
        for done, (digest, size) in enumerate(candidates.items(), start=1):
            if digest not in second.blobs:
                outcome = _sweep(self.registry, digest)
                if outcome == "deleted":
                    self.summary["blobs_deleted"] += 1
                    self.summary["bytes_freed"] += size
                elif outcome == "rescued":
                    self.summary["rescued"] += 1
            if self.progress is not None:
                self.progress(done, len(candidates))
        self.summary["links_removed"] = self._remove_dangling_links(second.scans)
        _clear_candidates(self.registry)
        return self._finish()

    def _skip(self, reason: str) -> dict[str, Any]:
        self.summary["sweep_skipped"] = reason
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        self.summary["seconds"] = round(seconds, 3)
        examined = self.summary["blobs_examined"]
        self.summary["blobs_per_s"] = round(examined / seconds, 1) if seconds > 0 else None
        return self.summary

    def _delete_revision(self, scan: RepositoryScan, digest: Digest) -> bool:
        """Delete an unreachable revision unless a push rescued it or tagged it meanwhile."""
        repo = scan.name
        try:
            with self.registry.locks.lock(repo, timeout=SHORT_LOCK_TIMEOUT):
                if not self.driver.exists(paths.gc_candidate(digest)):
                    return False
                try:
                    tags = self.registry.tags.list(repo)
                except NameUnknown:
                    tags = []
                if any(self._tag_names(repo, tag, digest) for tag in tags):
                    return False
                for tag in tags:
                    with contextlib.suppress(PathNotFound):
                        self.driver.delete(paths.tag_index_link(repo, tag, digest).rsplit("/", 1)[0])
                try:
                    self.driver.delete(paths.manifest_revision_dir(repo, digest))
                except PathNotFound:
                    return False
                ref = scan.refs.get(digest)
                if ref is not None and ref.subject is not None:
                    self.registry.referrers.remove(repo, ref.subject, digest)
                return True
        except TooManyRequests:
            return False

    def _tag_names(self, repo: str, tag: str, digest: Digest) -> bool:
        try:
            return self.registry.tags.resolve(repo, tag) == digest
        except ManifestUnknown:
            return False

    def _remove_dangling_links(self, scans: list[RepositoryScan]) -> int:
        """Remove `_layers` links whose blob data is gone (checked again under the lock)."""
        removed = 0
        for scan in scans:
            for digest in sorted(scan.links, key=str):
                if self._link_data_present(scan.name, digest):
                    continue
                try:
                    linked = self.driver.stat(paths.layer_link(scan.name, digest)).modified.timestamp()
                except PathNotFound:
                    continue
                if time.time() - linked < self.grace:
                    continue  # a commit writes the link just before it moves the data in
                try:
                    with self.registry.locks.lock(scan.name, timeout=SHORT_LOCK_TIMEOUT):
                        if self._link_data_present(scan.name, digest):
                            continue
                        self.registry.repo_blobs.unlink(scan.name, digest)
                        removed += 1
                except (TooManyRequests, BlobUnknown):
                    continue
        return removed

    def _link_data_present(self, repo: str, digest: Digest) -> bool:
        """Whether the data the link names exists (a quarantined blob's data counts: its
        links must survive until a push replaces the bytes)."""
        try:
            content = self.driver.get_content(paths.layer_link(repo, digest))
            target = Digest.parse(content.decode("utf-8", "replace").strip())
        except (PathNotFound, DigestInvalid):
            target = digest
        return self.driver.exists(paths.blob_data(target))


def _sweep(registry: Registry, digest: Digest) -> str:
    """Delete one candidate blob unless rescued: "deleted", "rescued" or "gone"."""
    driver = registry.driver
    marker = paths.gc_candidate(digest)
    if not driver.exists(marker):
        return "rescued"
    with contextlib.suppress(PathNotFound):
        driver.delete(paths.gc_trash(digest))
    try:
        driver.move(paths.blob_dir(digest), paths.gc_trash(digest))
    except PathNotFound:
        return "gone"
    if driver.exists(marker):
        driver.delete(paths.gc_trash(digest))
        registry.blobs.cache.forget(digest)  # every process's HEAD now asks storage
        for path in (marker, paths.quarantine_marker(digest), paths.scrub_record(digest)):
            with contextlib.suppress(PathNotFound):
                driver.delete(path)
        return "deleted"
    _restore(registry, digest)
    return "rescued"


def _restore(registry: Registry, digest: Digest) -> None:
    """Put a blob from the trash back in place (or drop the trash if a push stored it again)."""
    driver = registry.driver
    try:
        driver.move(paths.gc_trash(digest), paths.blob_dir(digest))
        return
    except PathExists:
        pass  # every driver refuses to move onto a directory holding files: a push stored it again
    if not driver.exists(paths.blob_data(digest)):
        # The push has not finished writing; the bytes are the same, so ours may go first.
        driver.move(paths.gc_trash_data(digest), paths.blob_data(digest))
    driver.delete(paths.gc_trash(digest))


def _clear_candidates(registry: Registry) -> None:
    """Drop every candidate marker, then the flag that tells pushes to look for them."""
    for path in (paths.gc_candidates_root(), paths.gc_sweeping()):
        with contextlib.suppress(PathNotFound):
            registry.driver.delete(path)


def recover(registry: Registry) -> dict[str, int]:
    """Undo what a killed collection left: move every trashed blob back and drop every
    candidate marker. Only safe while holding the "_gc" lock. Returns {restored, markers}."""
    driver = registry.driver
    restored = 0
    try:
        algorithm_dirs = driver.list(paths.gc_trash_root())
    except PathNotFound:
        algorithm_dirs = []
    for alg_dir in algorithm_dirs:
        try:
            entries = driver.list(alg_dir)
        except PathNotFound:
            continue
        for entry in entries:
            try:
                digest = Digest.parse(f"{alg_dir.rsplit('/', 1)[-1]}:{entry.rsplit('/', 1)[-1]}")
            except DigestInvalid:
                continue
            try:
                _restore(registry, digest)
            except PathNotFound:
                continue
            restored += 1
    markers = 0
    try:
        for alg_dir in driver.list(paths.gc_candidates_root()):
            with contextlib.suppress(PathNotFound):
                markers += len(driver.list(alg_dir))
    except PathNotFound:
        pass
    _clear_candidates(registry)
    return {"restored": restored, "markers": markers}
