"""TagStore: distribution's tag layout, moving tags, listing with pagination."""

from __future__ import annotations

import pytest

from pipeline.errors import ManifestUnknown, NameUnknown, TagInvalid
from pipeline.formats.digest import Digest
from pipeline.storage import paths
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.tags import TagStore

REPO = "library/alpine"
ROOT = "/docker/registry/v2/repositories/library/alpine/_manifests/tags"
A = Digest.of(b"manifest a")
B = Digest.of(b"manifest b")


@pytest.fixture
def driver() -> MemoryDriver:
    return MemoryDriver()


@pytest.fixture
def tags(driver: MemoryDriver) -> TagStore:
    return TagStore(driver)


def test_tag_writes_index_and_current_links_byte_exact(tags: TagStore, driver: MemoryDriver) -> None:
    tags.tag(REPO, "3.19", A)
    assert driver.get_content(f"{ROOT}/3.19/current/link") == f"sha256:{A.hex}".encode()
    assert driver.get_content(f"{ROOT}/3.19/index/sha256/{A.hex}/link") == f"sha256:{A.hex}".encode()
    assert tags.resolve(REPO, "3.19") == A


def test_retag_moves_current_and_keeps_the_old_index_entry(tags: TagStore, driver: MemoryDriver) -> None:
    tags.tag(REPO, "latest", A)
    tags.tag(REPO, "latest", B)
    assert tags.resolve(REPO, "latest") == B
    assert driver.exists(f"{ROOT}/latest/index/sha256/{A.hex}/link")
    assert driver.exists(f"{ROOT}/latest/index/sha256/{B.hex}/link")
    assert tags.lookup(REPO, A) == []
    assert tags.lookup(REPO, B) == ["latest"]


def test_unknown_tag_and_invalid_tag(tags: TagStore) -> None:
    with pytest.raises(ManifestUnknown):
        tags.resolve(REPO, "nope")
    with pytest.raises(ManifestUnknown):
        tags.untag(REPO, "nope")
    with pytest.raises(TagInvalid):
        tags.tag(REPO, ".hidden", A)
    with pytest.raises(TagInvalid):
        tags.tag(REPO, "x" * 129, A)


def test_untag_removes_the_tag_only(tags: TagStore) -> None:
    tags.tag(REPO, "a", A)
    tags.tag(REPO, "b", A)
    tags.untag(REPO, "a")
    assert tags.list(REPO) == ["b"]
    assert tags.lookup(REPO, A) == ["b"]


def test_list_is_lexical_and_paginates_with_n_and_last(tags: TagStore) -> None:
    names = ["v10", "v2", "latest", "Z-upper", "_under", "v1.0", "v1"]
    for name in names:
        tags.tag(REPO, name, A)
    ordered = sorted(names)
    assert ordered == ["Z-upper", "_under", "latest", "v1", "v1.0", "v10", "v2"]
    assert tags.list(REPO) == ordered
    assert tags.list(REPO, n=3) == ordered[:3]
    assert tags.list(REPO, n=3, last="_under") == ["latest", "v1", "v1.0"]
    assert tags.list(REPO, last="v10") == ["v2"]
    assert tags.list(REPO, last="v2") == []
    assert tags.list(REPO, last="m") == ["v1", "v1.0", "v10", "v2"]  # `last` need not be a tag
    assert tags.list(REPO, n=0) == []
    # walking page by page yields every tag exactly once
    seen: list[str] = []
    last = None
    while True:
        page = tags.list(REPO, n=2, last=last)
        if not page:
            break
        seen.extend(page)
        last = page[-1]
    assert seen == ordered


def test_list_of_unknown_repository_is_name_unknown(tags: TagStore, driver: MemoryDriver) -> None:
    with pytest.raises(NameUnknown):
        tags.list("no/such/repo")
    driver.put_content(paths.layer_link("blobs/only", A), str(A).encode())
    with pytest.raises(NameUnknown):
        tags.list("blobs/only")


def test_list_of_repository_without_tags_is_empty(tags: TagStore, driver: MemoryDriver) -> None:
    driver.put_content(paths.manifest_revision_link(REPO, A), str(A).encode())
    assert tags.list(REPO) == []
    tags.tag(REPO, "x", A)
    tags.untag(REPO, "x")
    assert tags.list(REPO) == []


def test_half_written_tag_is_not_listed(tags: TagStore, driver: MemoryDriver) -> None:
    tags.tag(REPO, "good", A)
    driver.put_content(paths.tag_index_link(REPO, "torn", B), str(B).encode())  # crash before current
    assert tags.list(REPO) == ["good"]
    with pytest.raises(ManifestUnknown):
        tags.resolve(REPO, "torn")


def test_lookup_finds_every_tag_for_a_digest(tags: TagStore) -> None:
    for name in ("b", "a", "c"):
        tags.tag(REPO, name, A)
    tags.tag(REPO, "d", B)
    assert tags.lookup(REPO, A) == ["a", "b", "c"]
    assert tags.lookup("unknown/repo", A) == []
