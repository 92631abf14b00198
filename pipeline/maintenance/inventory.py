"""What is in storage, read the way maintenance needs it: every blob in digest order, every
repository directory, and each repository's manifests, tags and links as a graph.

Maintenance reads manifest bytes straight from the driver, bypassing BlobStore's
quarantine check (a quarantined manifest still names the blobs it references), and reads
references leniently: any JSON object with `config`, `layers`, `manifests`, `subject` or
schema1 `fsLayers` counts, in any case (Go readers fold case: `Layers` is `layers` to
them), so a manifest the push path would refuse today (schema1 written by distribution, a
field spelled in another case) still keeps its blobs alive.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.errors import DigestInvalid, ManifestUnknown, NameUnknown, PathNotFound
from pipeline.formats.digest import HEX_LENGTHS, Digest
from pipeline.formats.names import is_valid_name
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver

# A directory under repositories/ holding any of these is a repository (for maintenance:
# a repository with only layer links or uploads may be about to receive a manifest).
_REPOSITORY_MARKERS = ("_manifests", "_layers", "_uploads")


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BlobEntry:
    digest: Digest
    size: int
    modified: datetime


def iter_blobs(driver: StorageDriver, after: Digest | None = None) -> Iterator[BlobEntry]:
    """Every stored blob (a `data` file under blobs/), ordered by (algorithm, hex), only
    those after `after` when given. Directories without data are skipped."""
    try:
        algorithm_dirs = driver.list(paths.blobs_root())
    except PathNotFound:
        return
    for alg_dir in algorithm_dirs:
        algorithm = _base(alg_dir)
        if algorithm not in HEX_LENGTHS:
            continue
        if after is not None and algorithm < after.algorithm:
            continue
        resume = after is not None and algorithm == after.algorithm
        try:
            prefixes = driver.list(alg_dir)
        except PathNotFound:
            continue
        for prefix_dir in prefixes:
            prefix = _base(prefix_dir)
            if resume and after is not None and prefix < after.hex[:2]:
                continue
            try:
                entries = driver.list(prefix_dir)
            except PathNotFound:
                continue
            for entry in entries:
                try:
                    digest = Digest.parse(f"{algorithm}:{_base(entry)}")
                except DigestInvalid:
                    continue
                if resume and after is not None and digest.hex <= after.hex:
                    continue
                try:
                    info = driver.stat(paths.blob_data(digest))
                except PathNotFound:
                    continue
                if not info.is_dir:
                    yield BlobEntry(digest, info.size, info.modified)


def iter_repositories(driver: StorageDriver) -> Iterator[str]:
    """Every repository directory (holding `_manifests`, `_layers` or `_uploads`), in
    lexical order of the walk. `_`-prefixed directories are never descended."""
    yield from _walk(driver, paths.repositories_root(), "")


def _walk(driver: StorageDriver, directory: str, name: str) -> Iterator[str]:
    try:
        children = driver.list(directory)
    except PathNotFound:
        return
    bases = [_base(child) for child in children]
    if name and is_valid_name(name) and any(marker in bases for marker in _REPOSITORY_MARKERS):
        yield name
    for child, base in zip(children, bases, strict=True):
        if not base.startswith("_"):
            yield from _walk(driver, child, f"{name}/{base}" if name else base)


# --- manifests as a graph ----------------------------------------------------------------


@dataclass(frozen=True)
class References:
    """What one manifest points at."""

    blobs: tuple[Digest, ...]  # config and layers (schema1: fsLayers), foreign ones included
    foreign: frozenset[Digest]  # layers with `urls`: legitimately not stored
    children: tuple[Digest, ...]  # index / manifest-list entries
    subject: Digest | None


def _values(value: object, name: str) -> list[object]:
    """Every value of `value`'s keys that are `name` in any case, in document order: Go
    readers (distribution, clients) match keys to fields case-insensitively, so a manifest
    written by one of them may spell a field `Layers`; gc keeps what any reader sees."""
    if not isinstance(value, dict):
        return []
    folded = name.casefold()
    return [v for k, v in value.items() if k == name or k.casefold() == folded]


def _digests_of(value: object) -> list[Digest]:
    found = []
    for raw in _values(value, "digest"):
        try:
            found.append(Digest.parse(str(raw)))
        except DigestInvalid:
            continue
    return found


def _digest_of(value: object) -> Digest | None:
    digests = _digests_of(value)
    return digests[-1] if digests else None  # the last match wins, as in Go


def references(body: bytes) -> References:
    """The references of a manifest body; ValueError when it is not a JSON object."""
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("a manifest is a JSON object")
    blobs: list[Digest] = []
    foreign: set[Digest] = set()
    descriptors: list[object] = list(_values(doc, "config"))
    for layers in _values(doc, "layers"):
        if isinstance(layers, list):
            descriptors.extend(layers)
    for desc in descriptors:
        digests = _digests_of(desc)
        blobs.extend(digests)
        if any(_values(desc, "urls")):
            foreign.update(digests)
    for fs_layers in _values(doc, "fsLayers"):
        if isinstance(fs_layers, list):
            for layer in fs_layers:
                for raw in _values(layer, "blobSum"):
                    try:
                        blobs.append(Digest.parse(str(raw)))
                    except DigestInvalid:
                        continue
    children: list[Digest] = []
    for manifests in _values(doc, "manifests"):
        if isinstance(manifests, list):
            for desc in manifests:
                children.extend(_digests_of(desc))
    subjects = [d for value in _values(doc, "subject") if (d := _digest_of(value)) is not None]
    return References(tuple(blobs), frozenset(foreign), tuple(children), subjects[-1] if subjects else None)


@dataclass
class RepositoryScan:
    """One repository's manifests, tags and layer links, read once."""

    name: str
    revisions: set[Digest] = field(default_factory=set)
    tags: dict[str, Digest] = field(default_factory=dict)
    refs: dict[Digest, References] = field(default_factory=dict)
    missing: set[Digest] = field(default_factory=set)  # revision link without manifest bytes
    unreadable: set[Digest] = field(default_factory=set)  # bytes that are not a manifest
    links: set[Digest] = field(default_factory=set)

    def referrers(self) -> dict[Digest, list[Digest]]:
        """subject -> the revisions naming it as their subject."""
        out: dict[Digest, list[Digest]] = {}
        for digest, ref in self.refs.items():
            if ref.subject is not None:
                out.setdefault(ref.subject, []).append(digest)
        return out

    def reachable(self, roots: Iterable[Digest]) -> set[Digest]:
        """Manifests reachable from `roots` through index children and referrers (a
        referrer of a kept manifest is kept)."""
        referrers = self.referrers()
        kept: set[Digest] = set()
        todo = list(roots)
        while todo:
            digest = todo.pop()
            if digest in kept:
                continue
            kept.add(digest)
            ref = self.refs.get(digest)
            if ref is not None:
                todo.extend(ref.children)
            todo.extend(referrers.get(digest, ()))
        return kept

    def kept(self, remove_untagged: bool) -> set[Digest]:
        """The manifests a garbage collection keeps: every revision, or only what tags reach."""
        if not remove_untagged:
            return self.reachable(self.revisions)
        return self.reachable(self.tags.values())

    def blobs_of(self, manifests: Iterable[Digest]) -> set[Digest]:
        """The manifests themselves plus every blob they reference."""
        out: set[Digest] = set()
        for digest in manifests:
            out.add(digest)
            ref = self.refs.get(digest)
            if ref is not None:
                out.update(ref.blobs)
        return out


def scan_repository(registry: Registry, name: str) -> RepositoryScan:
    """Read a repository's revisions (and their references), tags and layer links."""
    scan = RepositoryScan(name)
    driver = registry.driver
    for digest in registry.manifests.revisions(name):
        scan.revisions.add(digest)
        try:
            body = driver.get_content(paths.blob_data(digest))
        except PathNotFound:
            scan.missing.add(digest)
            continue
        try:
            scan.refs[digest] = references(body)
        except ValueError:
            scan.unreadable.add(digest)
    try:
        tags = registry.tags.list(name)
    except NameUnknown:
        tags = []
    for tag in tags:
        try:
            scan.tags[tag] = registry.tags.resolve(name, tag)
        except ManifestUnknown:
            continue
    scan.links = set(registry.repo_blobs.links(name))
    return scan
