"""Every function in pipeline/storage/paths.py, with the exact string it must produce.

The distribution rows are CNCF distribution's layout (registry/storage/paths.go) byte for
byte: a tree written by one registry must be readable by the other. A function added to
paths.py without a row here fails `test_every_path_function_has_a_row`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.formats.digest import Digest
from pipeline.storage import paths
from pipeline.storage.checked import validate_path

NAME = "library/ubuntu"
HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b""
D = Digest("sha256", HEX)
HEX2 = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"  # sha256 of b"a"
D2 = Digest("sha256", HEX2)
UID = "6c7bd0c1-2f87-4f3a-9a28-4e0b3c5d9b11"
V2 = "/docker/registry/v2"
REPO = f"{V2}/repositories/library/ubuntu"

TABLE: list[tuple[Callable[..., str], tuple[Any, ...], str]] = [
    # --- distribution's layout ---
    (paths.blobs_root, (), f"{V2}/blobs"),
    (paths.blob_algorithm_dir, ("sha256",), f"{V2}/blobs/sha256"),
    (paths.blob_dir, (D,), f"{V2}/blobs/sha256/e3/{HEX}"),
    (paths.blob_data, (D,), f"{V2}/blobs/sha256/e3/{HEX}/data"),
    (paths.repositories_root, (), f"{V2}/repositories"),
    (paths.repository, (NAME,), REPO),
    (paths.layers_dir, (NAME,), f"{REPO}/_layers"),
    (paths.layer_link_dir, (NAME, D), f"{REPO}/_layers/sha256/{HEX}"),
    (paths.layer_link, (NAME, D), f"{REPO}/_layers/sha256/{HEX}/link"),
    (paths.manifests_dir, (NAME,), f"{REPO}/_manifests"),
    (paths.manifest_revisions_dir, (NAME,), f"{REPO}/_manifests/revisions"),
    (paths.manifest_revision_dir, (NAME, D), f"{REPO}/_manifests/revisions/sha256/{HEX}"),
    (paths.manifest_revision_link, (NAME, D), f"{REPO}/_manifests/revisions/sha256/{HEX}/link"),
    (paths.tags_dir, (NAME,), f"{REPO}/_manifests/tags"),
    (paths.tag_dir, (NAME, "22.04"), f"{REPO}/_manifests/tags/22.04"),
    (paths.tag_current_link, (NAME, "22.04"), f"{REPO}/_manifests/tags/22.04/current/link"),
    (paths.tag_index_dir, (NAME, "22.04"), f"{REPO}/_manifests/tags/22.04/index"),
    (paths.tag_index_link, (NAME, "22.04", D), f"{REPO}/_manifests/tags/22.04/index/sha256/{HEX}/link"),
    (paths.uploads_dir, (NAME,), f"{REPO}/_uploads"),
    (paths.upload_dir, (NAME, UID), f"{REPO}/_uploads/{UID}"),
    (paths.upload_data, (NAME, UID), f"{REPO}/_uploads/{UID}/data"),
    (paths.upload_started_at, (NAME, UID), f"{REPO}/_uploads/{UID}/startedat"),
    (paths.upload_completing, (NAME, UID), f"{REPO}/_uploads/{UID}/completing"),
    (paths.upload_hashstates_dir, (NAME, UID, "sha256"), f"{REPO}/_uploads/{UID}/hashstates/sha256"),
    (paths.upload_hashstate, (NAME, UID, "sha256", 1024), f"{REPO}/_uploads/{UID}/hashstates/sha256/1024"),
    # --- Lading's own records, where distribution never looks ---
    (paths.lading_repository_dir, (NAME,), f"{REPO}/_lading"),
    (paths.tag_moved_at, (NAME, "22.04"), f"{REPO}/_lading/tags/22.04/movedat"),
    (paths.referrers_dir, (NAME, D), f"{REPO}/_lading/referrers/sha256/{HEX}"),
    (paths.referrer_link, (NAME, D, D2), f"{REPO}/_lading/referrers/sha256/{HEX}/sha256/{HEX2}/link"),
    (paths.tarsum_record, (D,), f"{V2}/lading/tarsum/sha256/{HEX}"),
    (paths.verification_record, (NAME, D), f"{REPO}/_lading/verification/sha256/{HEX}"),
    (paths.scrub_record, (D,), f"{V2}/lading/scrub/sha256/{HEX}"),
    (paths.scrub_root, (), f"{V2}/lading/scrub"),
    (paths.quarantine_marker, (D,), f"{V2}/lading/quarantine/sha256/{HEX}"),
    (paths.quarantine_root, (), f"{V2}/lading/quarantine"),
    (paths.maintenance_state, ("gc",), f"{V2}/lading/state/gc"),
    (paths.maintenance_stats, ("scrub",), f"{V2}/lading/stats/scrub"),
    (paths.pending_commits_dir, (NAME,), f"{REPO}/_lading/pending"),
    (paths.pending_commit, (NAME, D), f"{REPO}/_lading/pending/sha256/{HEX}"),
    (paths.gc_candidates_root, (), f"{V2}/lading/gc/candidates"),
    (paths.gc_candidate, (D,), f"{V2}/lading/gc/candidates/sha256/{HEX}"),
    (paths.gc_trash_root, (), f"{V2}/lading/gc/trash"),
    (paths.gc_trash, (D,), f"{V2}/lading/gc/trash/sha256/{HEX}"),
    (paths.gc_trash_data, (D,), f"{V2}/lading/gc/trash/sha256/{HEX}/data"),
    (paths.gc_sweeping, (), f"{V2}/lading/gc/sweeping"),
    (paths.proxy_dir, (NAME,), f"{REPO}/_lading/proxy"),
    (paths.proxy_tag_record, (NAME, "v1.0"), f"{REPO}/_lading/proxy/tags/v1.0"),
    (paths.proxy_use_dir, (NAME,), f"{REPO}/_lading/proxy/used"),
    (paths.proxy_use_record, (NAME, D), f"{REPO}/_lading/proxy/used/sha256/{HEX}"),
]


@pytest.mark.parametrize(("function", "args", "expected"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_path(function: Callable[..., str], args: tuple[Any, ...], expected: str) -> None:
    assert function(*args) == expected


@pytest.mark.parametrize(("function", "args", "expected"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_every_path_obeys_the_storage_path_grammar(
    function: Callable[..., str], args: tuple[Any, ...], expected: str
) -> None:
    assert validate_path(function(*args)) == expected


def test_every_path_function_has_a_row() -> None:
    defined = {
        name
        for name, obj in inspect.getmembers(paths, inspect.isfunction)
        if obj.__module__ == paths.__name__ and not name.startswith("_")
    }
    covered = {row[0].__name__ for row in TABLE}
    assert defined - covered == set(), "add a row to TABLE for each new function in pipeline/storage/paths.py"


def test_sha512_blobs_fan_out_the_same_way() -> None:
    d = Digest.of(b"x", "sha512")
    assert paths.blob_data(d) == f"{V2}/blobs/sha512/{d.hex[:2]}/{d.hex}/data"
