"""The repository catalog: which repository names exist in storage.

A repository is a directory under `repositories/` that holds `_manifests` (distribution's
rule). Names nest (`a/b/c`), and a repository may itself sit under another repository's
directory (`a` and `a/b` both listed). Directories starting with `_` are never descended.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from pipeline.errors import PathNotFound
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver


class Catalog:
    """Lists repositories of one storage driver."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def _list(self, directory: str) -> list[str]:
        try:
            return self.driver.list(directory)
        except PathNotFound:
            return []

    def _names(self, directory: str, name: str, last: str | None, listing: list[str] | None) -> Iterator[str]:
        """Repository names strictly under `name` (its directory's `listing`, if already
        read) that sort after `last`, in lexical order, reading directories only as the
        iteration reaches them."""
        # A child `x` contributes two runs in the order: its own name ("x", if it holds
        # _manifests) and then its subtree ("x/..."); a sibling such as "x-y" sorts between
        # them, so the runs are ordered by the keys "x" and "x/".
        keys: list[tuple[str, int, str]] = []
        for child in self._list(directory) if listing is None else listing:
            base = child.rsplit("/", 1)[-1]
            if base.startswith("_"):
                continue
            sub = f"{name}/{base}" if name else base
            keys += [(sub, 0, child), (sub + "/", 1, child)]
        keys.sort()
        read: dict[str, list[str]] = {}
        for key, kind, child in keys:
            if kind == 0:
                if last is not None and key <= last:
                    continue
                read[child] = children = self._list(child)
                if any(c.rsplit("/", 1)[-1] == "_manifests" for c in children):
                    yield key
            # Every name under `key` ("x/") starts with it: skip the subtree when all of
            # them sort at or before `last`.
            elif last is None or key > last or last.startswith(key):
                yield from self._names(child, key[:-1], last, read.pop(child, None))

    def iter_repositories(self, last: str | None = None) -> Iterator[str]:
        """Repository names after `last` in lexical order, lazily: taking k of them reads
        about k directories (plus the path down to `last`), whatever the registry's size."""
        return self._names(paths.repositories_root(), "", last, None)

    def repositories(self, n: int | None = None, last: str | None = None) -> list[str]:
        """Repository names in lexical order, those after `last`, at most `n`."""
        if n is not None and n < 0:
            raise ValueError("n must not be negative")
        return list(itertools.islice(self.iter_repositories(last), n))

    def exists(self, repo: str) -> bool:
        """True when the repository directory holds manifests, layer links or uploads."""
        markers = (paths.manifests_dir(repo), paths.layers_dir(repo), paths.uploads_dir(repo))
        return any(self.driver.exists(marker) for marker in markers)
