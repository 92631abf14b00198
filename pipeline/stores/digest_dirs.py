"""Listing `<root>/<algorithm>/<hex>` directories — the shape distribution gives every
per-repository index (layer links, manifest revisions, tag indexes) and Lading gives its
own records (referrers, pending commits) — as the digests they name."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.errors import DigestInvalid, PathNotFound
from pipeline.formats.digest import HEX_LENGTHS, Digest
from pipeline.storage.driver import StorageDriver


def digests_in(driver: StorageDriver, root: str) -> Iterator[Digest]:
    """Every well-formed `<algorithm>/<hex>` entry under `root`, in listing (lexical)
    order. Unknown algorithms, malformed names and directories that vanish while being
    listed are skipped; a missing root yields nothing."""
    try:
        algorithm_dirs = driver.list(root)
    except PathNotFound:
        return
    for alg_dir in algorithm_dirs:
        algorithm = alg_dir.rsplit("/", 1)[-1]
        if algorithm not in HEX_LENGTHS:
            continue
        try:
            entries = driver.list(alg_dir)
        except PathNotFound:
            continue
        for entry in entries:
            try:
                yield Digest.parse(f"{algorithm}:{entry.rsplit('/', 1)[-1]}")
            except DigestInvalid:
                continue
