"""The repository catalog: which repository names exist in storage.

A repository is a directory under `repositories/` that holds `_manifests` (distribution's
rule). Names nest (`a/b/c`), and a repository may itself sit under another repository's
directory (`a` and `a/b` both listed). Directories starting with `_` are never descended.
"""

from __future__ import annotations

from pipeline import paths
from pipeline.errors import PathNotFound
from pipeline.storage.driver import StorageDriver
from pipeline.tags import paginate


class Catalog:
    """Lists repositories of one storage driver."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def _walk(self, directory: str, name: str, last: str | None, found: list[str]) -> None:
        try:
            children = self.driver.list(directory)
        except PathNotFound:
            return
        for child in children:
            base = child.rsplit("/", 1)[-1]
            if base.startswith("_"):
                if base == "_manifests" and name:
                    found.append(name)
                continue
            sub = f"{name}/{base}" if name else base
            # Every name under `sub` starts with `sub/`; skip the subtree when all of them
            # sort at or before `last`.
            prefix = sub + "/"
            if last is not None and prefix < last and not last.startswith(prefix):
                continue
            self._walk(child, sub, last, found)

    def repositories(self, n: int | None = None, last: str | None = None) -> list[str]:
        """Repository names in lexical order, those after `last`, at most `n`."""
        if n is not None and n < 0:
            raise ValueError("n must not be negative")
        found: list[str] = []
        self._walk(paths.repositories_root(), "", last, found)
        return paginate(found, n, last)

    def exists(self, repo: str) -> bool:
        """True when the repository directory holds manifests, layer links or uploads."""
        markers = (paths.manifests_dir(repo), paths.layers_dir(repo), paths.uploads_dir(repo))
        return any(self.driver.exists(marker) for marker in markers)
