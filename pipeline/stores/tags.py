"""Tags: the mutable names of a repository's manifests, stored the distribution way.

    _manifests/tags/<tag>/current/link                 the digest the tag names now
    _manifests/tags/<tag>/index/<alg>/<hex>/link       every digest the tag ever named

Moving a tag writes the index entry first and then replaces `current` (each write is an
atomic `put_content`), so a reader sees the old or the new digest, never a torn link.

A move or delete may carry the time it was requested at (`requested_at`, ns since the
epoch, stamped by the API when the request arrived). The time of the change that is current
is kept in `_lading/tags/<tag>/movedat` (where distribution never looks); a move requested
before it is not applied. So a job redelivered long after its client gave up (a worker
killed mid-commit, its message restored later) cannot move a tag back over a newer push
or resurrect a tag deleted since. The stamp is written before the links: a crash between
the two leaves a stamp equal to the job's own time, which its redelivery still satisfies.
Callers hold the repository lock.
"""

from __future__ import annotations

import time

from pipeline.errors import DigestInvalid, ManifestUnknown, NameUnknown, PathNotFound
from pipeline.formats.digest import Digest
from pipeline.formats.names import validate_tag
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver


def put_link(driver: StorageDriver, path: str, content: bytes) -> None:
    """`put_content`, once more if it fails with PathNotFound: a writer that saw its
    directory removed between creating it and renaming its file into it (a delete racing
    the write, e.g. from a process that does not share the repository lock) writes again
    into a directory it creates anew, instead of failing the whole commit."""
    try:
        driver.put_content(path, content)
    except PathNotFound:
        driver.put_content(path, content)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def paginate(names: list[str], n: int | None, last: str | None) -> list[str]:
    """Sorted `names` strictly after `last`, at most `n` of them (the `?n=&last=` rule)."""
    if n is not None and n < 0:
        raise ValueError("n must not be negative")
    ordered = sorted(names)
    if last is not None:
        ordered = [name for name in ordered if name > last]
    return ordered if n is None else ordered[:n]


class TagStore:
    """Tags of every repository on one storage driver."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def resolve(self, repo: str, tag: str) -> Digest:
        """The digest `tag` points at; ManifestUnknown if there is no such tag."""
        try:
            text = self.driver.get_content(paths.tag_current_link(repo, tag))
        except PathNotFound:
            raise ManifestUnknown(f"tag {tag!r} not found in {repo!r}") from None
        try:
            return Digest.parse(text.decode("ascii", "replace").strip())
        except DigestInvalid:
            raise ManifestUnknown(f"tag {tag!r} in {repo!r} has a corrupt link") from None

    def moved_at(self, repo: str, tag: str) -> int | None:
        """The request time (ns) of the tag's current state, None if never recorded (a tag
        written by distribution, or before Lading kept stamps)."""
        try:
            text = self.driver.get_content(paths.tag_moved_at(repo, tag))
        except PathNotFound:
            return None
        try:
            return int(text.decode("ascii", "replace").strip())
        except ValueError:
            return None

    def tag(self, repo: str, tag: str, digest: Digest, requested_at: int | None = None) -> bool:
        """Point `tag` at `digest`: the index entry first, then `current`. With
        `requested_at`, only if no newer change of the tag is recorded; returns whether the
        tag was moved (False: a change requested later stands)."""
        validate_tag(tag)
        if requested_at is not None:
            current = self.moved_at(repo, tag)
            if current is not None and current > requested_at:
                return False
            put_link(self.driver, paths.tag_moved_at(repo, tag), str(requested_at).encode("ascii"))
        content = str(digest).encode("ascii")
        put_link(self.driver, paths.tag_index_link(repo, tag, digest), content)
        put_link(self.driver, paths.tag_current_link(repo, tag), content)
        return True

    def untag(self, repo: str, tag: str, requested_at: int | None = None) -> None:
        """Remove the tag and its history; ManifestUnknown if it does not exist. The
        deletion is recorded (at `requested_at`, default now) so an older move requested
        before it does not bring the tag back."""
        try:
            self.driver.delete(paths.tag_dir(repo, tag))
        except PathNotFound:
            raise ManifestUnknown(f"tag {tag!r} not found in {repo!r}") from None
        stamp = time.time_ns() if requested_at is None else requested_at
        if (self.moved_at(repo, tag) or 0) < stamp:
            self.driver.put_content(paths.tag_moved_at(repo, tag), str(stamp).encode("ascii"))

    def _all(self, repo: str) -> list[str]:
        try:
            children = self.driver.list(paths.tags_dir(repo))
        except PathNotFound:
            if not self.driver.exists(paths.manifests_dir(repo)):
                raise NameUnknown(f"repository {repo!r} not known") from None
            return []
        return [_basename(child) for child in children]

    def _is_live(self, repo: str, tag: str) -> bool:
        # A tag directory without `current/link` is the leftover of an interrupted write.
        return self.driver.exists(paths.tag_current_link(repo, tag))

    def lookup(self, repo: str, digest: Digest) -> list[str]:
        """Every tag whose `current` link is `digest`, sorted."""
        try:
            tags = self._all(repo)
        except NameUnknown:
            return []
        found = []
        for tag in sorted(tags):
            try:
                if self.resolve(repo, tag) == digest:
                    found.append(tag)
            except ManifestUnknown:
                continue
        return found

    def list(self, repo: str, n: int | None = None, last: str | None = None) -> list[str]:
        """Tags in lexical order, those after `last`, at most `n`. NameUnknown if the
        repository has no `_manifests` at all; [] if it exists without tags."""
        if n is not None and n < 0:
            raise ValueError("n must not be negative")
        out: list[str] = []
        for tag in paginate(self._all(repo), None, last):
            if n is not None and len(out) >= n:
                break
            if self._is_live(repo, tag):
                out.append(tag)
        return out
