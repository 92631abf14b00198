"""Real clients against a real Lading: skopeo pushes, inspects and pulls multi-layer images,
in the embedded one-process mode and scaled out (Redis broker + separate worker processes),
and copies images between Lading and CNCF distribution in both directions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import redis_server, skopeo
from tests.support.distribution import distribution
from tests.support.images import make_image, read_oci_layout, write_oci_layout
from tests.support.lading import lading_embedded, lading_scaled

pytestmark = pytest.mark.e2e

REDIS_DB = 11


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def lading(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(f"lading-{request.param}")
    if request.param == "embedded":
        with lading_embedded(workdir / "root", workdir) as host:
            yield host
    else:
        import redis

        url = redis_server.url(REDIS_DB)
        redis.Redis.from_url(url).flushdb()
        with lading_scaled(workdir / "root", workdir, url, url, workers=1) as host:
            yield host


def test_push_inspect_pull_multi_layer_image(lading: str, tmp_path: Path) -> None:
    image = make_image([1, 4096, 300_000, 2_500_000, 9_000_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    repo = f"e2e/{uuid.uuid4().hex[:8]}/app"
    skopeo.copy(f"oci:{layout}:v1", f"docker://{lading}/{repo}:v1")

    inspected = skopeo.inspect(f"docker://{lading}/{repo}:v1")
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == [layer.digest for layer in image.layers]
    assert skopeo.raw_manifest(f"docker://{lading}/{repo}:v1") == image.manifest

    out = tmp_path / "pulled"
    skopeo.copy(f"docker://{lading}/{repo}:v1", f"oci:{out}:v1")
    pulled = read_oci_layout(out)
    for digest, data in image.blobs.items():
        assert pulled[digest] == data, digest

    tags = skopeo.skopeo("list-tags", "--tls-verify=false", f"docker://{lading}/{repo}").stdout
    assert '"v1"' in tags


def test_push_by_digest_and_second_tag_reuses_blobs(lading: str, tmp_path: Path) -> None:
    image = make_image([50_000, 60_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="a")
    repo = f"e2e/{uuid.uuid4().hex[:8]}"
    skopeo.copy(f"oci:{layout}:a", f"docker://{lading}/{repo}:a")
    skopeo.copy(f"docker://{lading}/{repo}:a", f"docker://{lading}/{repo}:b")
    assert skopeo.inspect(f"docker://{lading}/{repo}:b")["Digest"] == image.manifest_digest
    by_digest = skopeo.inspect(f"docker://{lading}/{repo}@{image.manifest_digest}")
    assert by_digest["Digest"] == image.manifest_digest


def test_copy_between_distribution_and_lading(lading: str, tmp_path: Path) -> None:
    image = make_image([10_000, 700_000, 1_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    with distribution(tmp_path / "dist-root", tmp_path) as dist:
        skopeo.copy(f"oci:{layout}:v1", f"docker://{dist}/from/dist:v1")
        skopeo.copy(f"docker://{dist}/from/dist:v1", f"docker://{lading}/to/lading:v1")
        assert skopeo.raw_manifest(f"docker://{lading}/to/lading:v1") == image.manifest
        skopeo.copy(f"docker://{lading}/to/lading:v1", f"docker://{dist}/back/again:v1")
        assert skopeo.raw_manifest(f"docker://{dist}/back/again:v1") == image.manifest
        out = tmp_path / "round-trip"
        skopeo.copy(f"docker://{dist}/back/again:v1", f"oci:{out}:v1")
    pulled = read_oci_layout(out)
    for digest, data in image.blobs.items():
        assert pulled[digest] == data
