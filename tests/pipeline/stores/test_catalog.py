"""Catalog: every repository in storage, nested names, lexical pagination."""

from __future__ import annotations

import pytest

from pipeline.formats.digest import Digest
from pipeline.storage import paths
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.catalog import Catalog

D = Digest.of(b"m")


@pytest.fixture
def driver() -> MemoryDriver:
    return MemoryDriver()


def make_repo(driver: MemoryDriver, name: str) -> None:
    driver.put_content(paths.manifest_revision_link(name, D), str(D).encode())


def test_empty_storage_has_no_repositories(driver: MemoryDriver) -> None:
    assert Catalog(driver).repositories() == []


def test_nested_names_and_repositories_inside_repositories(driver: MemoryDriver) -> None:
    for name in ("library/alpine", "a", "a/b", "a/b/c", "a-z", "zeta", "team/x/y/z"):
        make_repo(driver, name)
    # directories that are not repositories: only blobs or uploads, or Lading's own records
    driver.put_content(paths.layer_link("blobs/only", D), str(D).encode())
    driver.put_content(paths.upload_started_at("uploads/only", "u1"), b"2024-01-01T00:00:00Z")
    driver.put_content(paths.referrer_link("lading/only", D, D), str(D).encode())
    cat = Catalog(driver)
    assert cat.repositories() == sorted(["a", "a-z", "a/b", "a/b/c", "library/alpine", "team/x/y/z", "zeta"])


def test_pagination_with_n_and_last(driver: MemoryDriver) -> None:
    names = ["a", "a/b", "a/b/c", "b", "b0/x", "c/d", "library/alpine", "library/busybox"]
    for name in names:
        make_repo(driver, name)
    cat = Catalog(driver)
    assert cat.repositories(n=3) == ["a", "a/b", "a/b/c"]
    assert cat.repositories(n=3, last="a/b/c") == ["b", "b0/x", "c/d"]
    assert cat.repositories(last="a/b") == ["a/b/c", "b", "b0/x", "c/d", "library/alpine", "library/busybox"]
    assert cat.repositories(last="library/alpine") == ["library/busybox"]
    assert cat.repositories(last="c") == ["c/d", "library/alpine", "library/busybox"]
    assert cat.repositories(last="zzz") == []
    assert cat.repositories(n=0) == []
    pages: list[str] = []
    last = None
    for _ in range(len(names) + 1):
        page = cat.repositories(n=3, last=last)
        if not page:
            break
        pages.extend(page)
        last = page[-1]
    assert pages == names


def test_exists_for_manifests_layers_or_uploads(driver: MemoryDriver) -> None:
    make_repo(driver, "with/manifests")
    driver.put_content(paths.layer_link("with/layers", D), str(D).encode())
    driver.put_content(paths.upload_started_at("with/uploads", "u1"), b"2024-01-01T00:00:00Z")
    cat = Catalog(driver)
    assert cat.exists("with/manifests")
    assert cat.exists("with/layers")
    assert cat.exists("with/uploads")
    assert not cat.exists("with")
    assert not cat.exists("nothing/here")
