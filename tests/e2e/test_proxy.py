"""Lading as a pull-through cache of real upstream registries, pulled by skopeo.

Upstreams: CNCF distribution (`docker-registry`) open and behind htpasswd Basic auth, and a
second Lading behind the Docker token flow (its built-in token endpoint). Between Lading
and the open distribution sits tests.support.counting_proxy, which counts every request
Lading makes upstream, can be stopped (the upstream is then unreachable) and can corrupt a
blob's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api.auth.conftest import ec_key, write_htpasswd, write_private_key
from tests.lading.procs import Running, lading_command, process_env, running
from tests.support import skopeo
from tests.support.counting_proxy import CountingProxy, counting_proxy
from tests.support.distribution import distribution
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    make_image,
    read_oci_layout,
    sha256,
    write_oci_layout,
)
from tests.support.net import free_port, wait_http

pytestmark = pytest.mark.e2e

TAG_TTL = 3  # seconds: the tag freshness window of the upstreams these tests configure


@dataclass
class MultiArch:
    images: dict[str, Image]  # platform → image
    index: bytes

    @property
    def digest(self) -> str:
        return sha256(self.index)


def make_multi_arch() -> MultiArch:
    images = {"linux/amd64": make_image([30_000, 5_000]), "linux/arm64": make_image([40_000])}
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": len(image.manifest),
                    "platform": {"os": p.split("/")[0], "architecture": p.split("/")[1]},
                }
                for p, image in images.items()
            ],
        },
        separators=(",", ":"),
    ).encode()
    return MultiArch(images, index)


def write_index_layout(multi: MultiArch, directory: Path, tag: str) -> Path:
    return write_oci_layout(list(multi.images.values()), directory, tag, top=(OCI_INDEX, multi.index))


def lading_config(tmp: Path, port: int, upstreams: list[dict[str, Any]], **extra: Any) -> Path:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / f"root-{port}")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "lading": {"proxy": {"upstreams": upstreams}},
    }
    config.update(extra)
    path = tmp / f"lading-{port}.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def lading_proxy(
    tmp: Path, upstreams: list[dict[str, Any]], **extra: Any
) -> Iterator[tuple[str, Path, Running]]:
    """An embedded `lading serve` proxying `upstreams`; yields (host, storage root, process)."""
    port = free_port()
    config = lading_config(tmp, port, upstreams, **extra)
    with running([*lading_command(), "serve", str(config)], process_env(), cwd=tmp) as server:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=server.proc)
        try:
            yield f"127.0.0.1:{port}", tmp / f"root-{port}", server
        except BaseException:
            print(server.output[-20000:])  # shown by pytest with the failure
            raise


def pull_all(ref: str, out: Path, *extra: str) -> dict[str, bytes]:
    skopeo.copy(f"docker://{ref}", f"oci:{out}:x", "--all", *extra)
    return read_oci_layout(out)


def assert_has_image(pulled: dict[str, bytes], image: Image) -> None:
    for digest, data in image.blobs.items():
        assert pulled.get(digest) == data, digest


def wait_until(condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def blob_cached(root: Path, digest: str) -> bool:
    algorithm, hexpart = digest.split(":", 1)
    return (root / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data").exists()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, CountingProxy]]:
    """Open distribution behind a counting proxy: (distribution host, proxy)."""
    with distribution(tmp_path / "dist-root", tmp_path) as dist, counting_proxy(dist) as proxy:
        yield dist, proxy


def test_skopeo_pulls_through_then_from_cache_when_the_upstream_is_gone(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    dist, counter = upstream
    multi = make_multi_arch()
    single = make_image([1000, 200_000])
    skopeo.copy(
        f"oci:{write_index_layout(multi, tmp_path / 'multi', 'v1')}:v1",
        f"docker://{dist}/lib/multi:v1",
        "--all",
    )
    skopeo.copy(
        f"oci:{write_oci_layout(single, tmp_path / 'single', 'v1')}:v1", f"docker://{dist}/lib/app:v1"
    )
    upstreams = [
        {
            "prefix": "hub",
            "remoteurl": f"http://{counter.host}",
            "tag_ttl": TAG_TTL,
            "platforms": ["linux/amd64", "linux/arm64"],
        }
    ]
    with lading_proxy(tmp_path, upstreams) as (host, root, server):
        pulled = pull_all(f"{host}/hub/lib/multi:v1", tmp_path / "p1")
        assert pulled[multi.digest] == multi.index
        for image in multi.images.values():
            assert_has_image(pulled, image)
        assert_has_image(pull_all(f"{host}/hub/lib/app:v1", tmp_path / "p2"), single)
        assert skopeo.raw_manifest(f"docker://{host}/hub/lib/app:v1") == single.manifest

        # A second tag pushed upstream is there at once (never cached); a tag moved
        # upstream shows its new manifest once the freshness window has passed.
        moved = make_image([3000])
        skopeo.copy(
            f"oci:{write_oci_layout(moved, tmp_path / 'moved', 'v2')}:v2", f"docker://{dist}/lib/app:v2"
        )
        skopeo.copy(f"docker://{dist}/lib/app:v2", f"docker://{dist}/lib/app:v1")
        assert skopeo.raw_manifest(f"docker://{host}/hub/lib/app:v2") == moved.manifest
        tags = json.loads(
            skopeo.skopeo("list-tags", "--tls-verify=false", f"docker://{host}/hub/lib/app").stdout
        )
        assert sorted(tags["Tags"]) == ["v1", "v2"]
        wait_until(
            lambda: skopeo.raw_manifest(f"docker://{host}/hub/lib/app:v1") == moved.manifest,
            timeout=TAG_TTL * 10,
            what="the moved tag",
        )
        # Everything the pulls used is cached (the index's blobs by the warming job too).
        for image in [*multi.images.values(), single, moved]:
            for digest in image.blobs:
                wait_until(
                    lambda d=digest, i=image: blob_cached(root, d) or d == i.manifest_digest, what=digest
                )

        counter.stop()
        time.sleep(TAG_TTL + 0.5)  # past the freshness window: Lading must ask, and cannot
        again = pull_all(f"{host}/hub/lib/multi:v1", tmp_path / "p3")
        for image in multi.images.values():
            assert_has_image(again, image)
        assert_has_image(pull_all(f"{host}/hub/lib/app:v1", tmp_path / "p4"), moved)
        response = httpx.get(
            f"http://{host}/v2/hub/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30
        )
        assert response.status_code == 200 and "Stale" in response.headers.get("warning", "")
        assert "serving cached" in server.output


def test_pulls_by_tag_within_the_freshness_window_ask_the_upstream_nothing(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    dist, counter = upstream
    image = make_image([5000])
    skopeo.copy(f"oci:{write_oci_layout(image, tmp_path / 'src', 'v1')}:v1", f"docker://{dist}/lib/app:v1")
    upstreams = [{"prefix": "hub", "remoteurl": f"http://{counter.host}", "tag_ttl": 3600}]
    with lading_proxy(tmp_path, upstreams) as (host, _root, _server):
        assert_has_image(pull_all(f"{host}/hub/lib/app:v1", tmp_path / "first"), image)
        wait_until(lambda: counter.count("GET", "/blobs/") >= len(image.blobs) - 1, what="warming")
        counter.reset()
        for i in range(5):
            assert_has_image(pull_all(f"{host}/hub/lib/app:v1", tmp_path / f"again{i}"), image)
            manifest = httpx.get(
                f"http://{host}/v2/hub/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST}
            )
            assert manifest.content == image.manifest
        assert counter.requests == []


def test_push_and_delete_on_a_proxied_repository_answer_405_and_store_nothing(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    _dist, counter = upstream
    image = make_image([2000])
    upstreams = [{"prefix": "hub", "remoteurl": f"http://{counter.host}"}]
    with lading_proxy(tmp_path, upstreams) as (host, root, _server):
        base = f"http://{host}/v2/hub/lib/pushed"
        for method, url in [
            ("POST", f"{base}/blobs/uploads/"),
            ("PUT", f"{base}/manifests/v1"),
            ("DELETE", f"{base}/manifests/v1"),
            ("DELETE", f"{base}/blobs/{image.config_digest}"),
        ]:
            response = httpx.request(
                method, url, content=image.manifest, headers={"Content-Type": OCI_MANIFEST}
            )
            assert response.status_code == 405, (method, url, response.text)
            assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
        layout = write_oci_layout(image, tmp_path / "src", "v1")
        failed = subprocess.run(
            [
                skopeo.skopeo_binary(),
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
                f"oci:{layout}:v1",
                f"docker://{host}/hub/lib/pushed:v1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert failed.returncode != 0
        assert not (root / "docker/registry/v2/repositories/hub").exists()
        assert not (root / "docker/registry/v2/blobs").exists() or not any(
            (root / "docker/registry/v2/blobs").rglob("data")
        )
        # A repository outside every prefix is a normal local one.
        counter.reset()
        skopeo.copy(f"oci:{layout}:v1", f"docker://{host}/local/app:v1")
        assert counter.requests == []


def put_blob(registry: str, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = httpx.post(f"http://{registry}/v2/{repository}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = start.headers["location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    url = httpx.URL(location).copy_merge_params({"digest": digest})
    done = httpx.put(url, content=data, timeout=120)
    assert done.status_code == 201, done.text
    return digest


def concurrent_gets(urls: list[str]) -> list[tuple[int, bytes]]:
    results: list[tuple[int, bytes]] = [(0, b"")] * len(urls)
    barrier = threading.Barrier(len(urls))

    def get(i: int) -> None:
        barrier.wait()
        try:
            response = httpx.get(urls[i], timeout=300, follow_redirects=True)
            results[i] = (response.status_code, response.content)
        except httpx.HTTPError:
            results[i] = (-1, b"")

    threads = [threading.Thread(target=get, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_sixteen_concurrent_pulls_of_a_cold_blob_make_one_upstream_request(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    dist, counter = upstream
    data = os.urandom(64 * 1024 * 1024)
    digest = put_blob(dist, "lib/big", data)
    upstreams = [{"prefix": "hub", "remoteurl": f"http://{counter.host}"}]
    with lading_proxy(tmp_path, upstreams) as (host, root, _server):
        results = concurrent_gets([f"http://{host}/v2/hub/lib/big/blobs/{digest}"] * 16)
        assert [status for status, _ in results] == [200] * 16
        assert all(body == data for _, body in results)
        assert counter.count("GET", f"/blobs/{digest}") == 1
        assert blob_cached(root, digest)


def test_a_range_of_a_cold_blob_is_answered_206_with_that_range(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    dist, counter = upstream
    data = os.urandom(3 * 1024 * 1024)
    digest = put_blob(dist, "lib/ranged", data)
    upstreams = [{"prefix": "hub", "remoteurl": f"http://{counter.host}"}]
    with lading_proxy(tmp_path, upstreams) as (host, root, _server):
        url = f"http://{host}/v2/hub/lib/ranged/blobs/{digest}"
        r = httpx.get(url, headers={"Range": "bytes=1000-1999"}, timeout=120)
        assert r.status_code == 206, (r.status_code, len(r.content))
        assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        assert r.content == data[1000:2000]
        assert blob_cached(root, digest)
        past = httpx.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=60)
        assert past.status_code == 416
        assert counter.count("GET", f"/blobs/{digest}") == 1


def test_a_corrupted_upstream_blob_is_never_cached_nor_served_whole(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    dist, counter = upstream
    data = os.urandom(3 * 1024 * 1024)
    digest = put_blob(dist, "lib/bad", data)
    corrupted = bytes([data[0] ^ 0xFF]) + data[1:]
    counter.corrupt.add(digest)
    upstreams = [{"prefix": "hub", "remoteurl": f"http://{counter.host}"}]
    with lading_proxy(tmp_path, upstreams) as (host, root, _server):
        url = f"http://{host}/v2/hub/lib/bad/blobs/{digest}"
        results = concurrent_gets([url] * 4)
        for status, body in results:
            assert body != corrupted and body != data, status
        assert not blob_cached(root, digest)
        assert not (
            root / f"docker/registry/v2/repositories/hub/lib/bad/_layers/sha256/{digest[7:]}"
        ).exists()
        again = httpx.get(url, timeout=60)
        assert again.status_code in (503, 404) or again.content != corrupted
        counter.corrupt.clear()
        wait_until(lambda: httpx.get(url, timeout=60).content == data, what="a clean fetch", timeout=30)
        assert blob_cached(root, digest)


def lading_upstream_with_token(tmp: Path, users: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    port = free_port()
    htpasswd = write_htpasswd(tmp / "up-htpasswd", users)
    key = write_private_key(tmp / "up-signing.pem", ec_key())
    config = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(tmp / "up-root")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {
            "token": {
                "realm": f"http://127.0.0.1:{port}/auth/token",
                "service": "upstream",
                "issuer": "upstream-issuer",
            }
        },
        "lading": {
            "auth": {"token": {"htpasswd": str(htpasswd), "signing_key": str(key), "path": "/auth/token"}}
        },
    }
    path = tmp / "upstream.yml"
    path.write_text(yaml.safe_dump(config))
    return [*lading_command(), "serve", str(path)], {"port": port}


@pytest.mark.parametrize("auth", ["token", "basic"])
def test_pull_through_an_upstream_that_requires_credentials(auth: str, tmp_path: Path) -> None:
    users = {"mirror": "s3cret"}
    image = make_image([7000, 90_000])
    layout = write_oci_layout(image, tmp_path / "src", "v1")
    with authenticated_upstream(auth, tmp_path, users) as up:
        skopeo.copy(f"oci:{layout}:v1", f"docker://{up}/lib/app:v1", "--dest-creds=mirror:s3cret")
        upstreams = [
            {
                "prefix": "hub",
                "remoteurl": f"http://{up}",
                "username": "mirror",
                "password": "s3cret",
                "tag_ttl": 1,
            }
        ]
        with lading_proxy(tmp_path, upstreams) as (host, _root, _server):
            assert_has_image(pull_all(f"{host}/hub/lib/app:v1", tmp_path / "p1"), image)
            time.sleep(1.2)  # past the freshness window: one more authenticated check
            assert skopeo.raw_manifest(f"docker://{host}/hub/lib/app:v1") == image.manifest
        # Credentials the upstream refuses: a clear 503, nothing cached.
        wrong = [{"prefix": "hub", "remoteurl": f"http://{up}", "username": "mirror", "password": "nope"}]
        (tmp_path / "wrong").mkdir()
        with lading_proxy(tmp_path / "wrong", wrong) as (host, _root, _server):
            response = httpx.get(f"http://{host}/v2/hub/lib/app/manifests/v1", timeout=30)
            assert response.status_code == 503, response.text
            assert response.json()["errors"][0]["code"] == "UNAVAILABLE"


@contextmanager
def authenticated_upstream(auth: str, tmp: Path, users: dict[str, str]) -> Iterator[str]:
    if auth == "basic":
        htpasswd = write_htpasswd(tmp / "htpasswd", users)
        extra = f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
        with distribution(tmp / "dist-root", tmp, extra=extra) as dist:
            yield dist
        return
    args, info = lading_upstream_with_token(tmp, users)
    with running(args, process_env(), cwd=tmp) as server:
        wait_http(f"http://127.0.0.1:{info['port']}/v2/", timeout=60, proc=server.proc)
        yield f"127.0.0.1:{info['port']}"


REDIS_DB = 24


def test_scaled_out_two_api_processes_share_one_upstream_fetch(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    """distribution's own `proxy.remoteurl` (REGISTRY_PROXY_REMOTEURL: the whole registry
    mirrors it), two API processes and a worker on one Redis: 16 clients split between the
    two APIs cost one upstream blob request, and /metrics counts it deployment-wide."""
    import redis

    from tests.support import redis_server
    from tests.support.lading import base_env, process

    dist, counter = upstream
    data = os.urandom(64 * 1024 * 1024)
    digest = put_blob(dist, "lib/big", data)
    url = redis_server.url(REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    root = tmp_path / "root"
    ports = [free_port(), free_port()]
    env = {
        "REGISTRY_CELERY_BROKER_URL": url,
        "REGISTRY_CELERY_RESULT_BACKEND": url,
        "REGISTRY_PROXY_REMOTEURL": f"http://{counter.host}",
    }
    with (
        process(
            [*lading_command(), "worker", "--concurrency", "2"],
            base_env(root, ports[0], **env),
            tmp_path / "worker.log",
        ),
        process([*lading_command(), "serve"], base_env(root, ports[0], **env), tmp_path / "api0.log") as a,
        process([*lading_command(), "serve"], base_env(root, ports[1], **env), tmp_path / "api1.log") as b,
    ):
        wait_http(f"http://127.0.0.1:{ports[0]}/v2/", timeout=60, proc=a)
        wait_http(f"http://127.0.0.1:{ports[1]}/v2/", timeout=60, proc=b)
        urls = [f"http://127.0.0.1:{ports[i % 2]}/v2/lib/big/blobs/{digest}" for i in range(16)]
        results = concurrent_gets(urls)
        assert [status for status, _ in results] == [200] * 16
        assert all(body == data for _, body in results)
        assert counter.count("GET", f"/blobs/{digest}") == 1
        assert blob_cached(root, digest)
        image = make_image([3000])
        skopeo.copy(
            f"oci:{write_oci_layout(image, tmp_path / 'src', 'v1')}:v1", f"docker://{dist}/lib/app:v1"
        )
        manifests = [f"http://127.0.0.1:{ports[i % 2]}/v2/lib/app/manifests/v1" for i in range(16)]
        assert all(result == (200, image.manifest) for result in concurrent_gets(manifests))
        assert counter.count(contains="/lib/app/manifests/") == 1
        metrics = httpx.get(f"http://127.0.0.1:{ports[1]}/metrics").text
        fetched = re.search(r'lading_proxy_upstream_bytes_total\{upstream="_"\} (\S+)', metrics)
        assert fetched is not None and len(data) <= float(fetched.group(1)) < 2 * len(data), metrics
        assert 'lading_proxy_cache_misses_total{upstream="_"}' in metrics


def test_concurrent_pulls_of_a_cold_manifest_make_one_upstream_request(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    dist, counter = upstream
    image = make_image([4000])
    skopeo.copy(f"oci:{write_oci_layout(image, tmp_path / 'src', 'v1')}:v1", f"docker://{dist}/lib/app:v1")
    upstreams = [{"prefix": "hub", "remoteurl": f"http://{counter.host}", "tag_ttl": 3600}]
    with lading_proxy(tmp_path, upstreams) as (host, _root, _server):
        url = f"http://{host}/v2/hub/lib/app/manifests/v1"
        results = concurrent_gets([url] * 16)
        assert all(result == (200, image.manifest) for result in results)
        assert counter.count(contains="/manifests/") == 1


def test_a_pulled_index_warms_the_layers_of_the_listed_platforms(
    upstream: tuple[str, CountingProxy], tmp_path: Path
) -> None:
    """Only the index is pulled (no client fetches a child or a layer): the warming job
    fetches the listed platform's manifest and blobs, so the next pull is local."""
    dist, counter = upstream
    multi = make_multi_arch()
    layout = write_index_layout(multi, tmp_path / "multi", "v1")
    skopeo.copy(f"oci:{layout}:v1", f"docker://{dist}/lib/multi:v1", "--all")
    upstreams = [
        {
            "prefix": "hub",
            "remoteurl": f"http://{counter.host}",
            "tag_ttl": 3600,
            "platforms": ["linux/arm64"],
        }
    ]
    with lading_proxy(tmp_path, upstreams) as (host, root, _server):
        index = httpx.get(f"http://{host}/v2/hub/lib/multi/manifests/v1", headers={"Accept": OCI_INDEX})
        assert index.status_code == 200 and index.content == multi.index
        arm = multi.images["linux/arm64"]
        for digest in [arm.config_digest, *(layer.digest for layer in arm.layers)]:
            wait_until(lambda d=digest: blob_cached(root, d), what=f"warming of {digest}")
        wait_until(lambda: counter.count(contains=f"/manifests/{arm.manifest_digest}") == 1, what="child")
        counter.reset()
        out = tmp_path / "out"
        skopeo.skopeo(
            "--override-arch=arm64",
            "copy",
            "--src-tls-verify=false",
            f"docker://{host}/hub/lib/multi:v1",
            f"oci:{out}:x",
        )
        assert_has_image(read_oci_layout(out), arm)
        assert counter.count(contains="/blobs/") == 0
