"""pipeline.proxy: which repositories are proxied, the upstream client's auth and error
handling (against an httpx mock transport: fast, exact about what was sent), and expiry
of cached content on a real filesystem driver (expiry reads modification times)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from pipeline.blob_commit import commit_blob
from pipeline.config import ProxySettings, Settings, StorageSettings, Upstream
from pipeline.errors import ManifestUnknown, OperationUnsupported, UpstreamUnavailable
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_MANIFEST
from pipeline.manifest_commit import commit_manifest
from pipeline.proxy import route
from pipeline.proxy.cache import HOLD_BACK, BlobTail, blob_key, expire, fresh_tag
from pipeline.proxy.upstream import UpstreamClient, parse_challenge
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.filesystem import FilesystemDriver

HUB = Upstream(prefix="hub", remoteurl="http://hub.test", username="u", password="p", ttl_seconds=100)


def proxy_settings(local: bool = True, *upstreams: Upstream) -> Settings:
    return Settings(proxy=ProxySettings(upstreams=upstreams or (HUB,), local=local))


def test_route_maps_prefixes_and_refuses_other_names_when_local_is_off() -> None:
    ghcr = Upstream(prefix="ghcr", remoteurl="http://ghcr.test")
    settings = proxy_settings(True, HUB, ghcr)
    target = route(settings, "hub/library/alpine")
    assert target is not None and (target.upstream, target.remote_name) == (HUB, "library/alpine")
    assert route(settings, "ghcr/org/tool").remote_name == "org/tool"  # type: ignore[union-attr]
    assert route(settings, "hubble/app") is None  # a prefix is a whole path segment
    with pytest.raises(OperationUnsupported):
        route(proxy_settings(False, HUB), "local/app")
    mirror = Upstream(prefix="", remoteurl="http://mirror.test")
    assert route(proxy_settings(True, mirror), "library/alpine").remote_name == "library/alpine"  # type: ignore[union-attr]
    assert route(Settings(), "hub/x") is None
    docker_hub = Upstream(prefix="hub", remoteurl="https://registry-1.docker.io")
    assert route(proxy_settings(True, docker_hub), "hub/alpine").remote_name == "library/alpine"  # type: ignore[union-attr]
    assert route(proxy_settings(True, docker_hub), "hub/bitnami/redis").remote_name == "bitnami/redis"  # type: ignore[union-attr]


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.test/token",service="registry.test",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.test/token",
        "service": "registry.test",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


class FakeUpstream:
    """A token-protected upstream: answers 401 with a Bearer challenge unless the request
    carries the token the token endpoint hands out for u:p."""

    def __init__(self) -> None:
        self.token_requests = 0
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/token":
            self.token_requests += 1
            assert request.headers["authorization"].startswith("Basic ")
            assert request.url.params["scope"] == "repository:library/app:pull"
            return httpx.Response(200, json={"token": "t0k3n", "expires_in": 300})
        if request.headers.get("authorization") != "Bearer t0k3n":
            challenge = (
                'Bearer realm="http://hub.test/token",service="hub",scope="repository:library/app:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if request.url.path.endswith("/manifests/missing"):
            return httpx.Response(404)
        if request.url.path.endswith("/manifests/busy"):
            return httpx.Response(429, headers={"Retry-After": "7"})
        return httpx.Response(
            200,
            content=b"{}",
            headers={"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "0" * 64},
        )


def test_token_flow_fetches_one_token_and_reuses_it_until_it_expires() -> None:
    fake = FakeUpstream()
    client = UpstreamClient(HUB, transport=httpx.MockTransport(fake))
    body, content_type, digest = client.get_manifest("library/app", "v1", [OCI_MANIFEST])
    assert (body, content_type) == (b"{}", OCI_MANIFEST) and digest == "sha256:" + "0" * 64
    assert client.head_manifest("library/app", "v1", [OCI_MANIFEST]) == "sha256:" + "0" * 64
    assert fake.token_requests == 1
    assert fake.requests[-1].headers["accept"] == OCI_MANIFEST
    with pytest.raises(ManifestUnknown):
        client.get_manifest("library/app", "missing", [])
    with pytest.raises(UpstreamUnavailable) as busy:
        client.get_manifest("library/app", "busy", [])
    assert busy.value.detail["retry_after"] == "7"


def test_basic_challenge_is_answered_with_the_configured_credentials() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Basic dTpw":  # u:p
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200, json={"name": "library/app", "tags": ["v1"]})

    client = UpstreamClient(HUB, transport=httpx.MockTransport(handler))
    assert client.get_json("library/app", "tags/list")[0]["tags"] == ["v1"]
    assert client.get_json("library/app", "tags/list")[0]["tags"] == ["v1"]
    assert seen == [None, "Basic dTpw", "Basic dTpw"]  # the second call goes authenticated at once


def test_an_unreachable_upstream_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = UpstreamClient(HUB, transport=httpx.MockTransport(refuse))
    with pytest.raises(UpstreamUnavailable):
        client.head_manifest("library/app", "v1", [])


def _manifest(registry: Registry, repo: str, tag: str, layers: list[bytes]) -> Digest:
    config_bytes = json.dumps({"tag": tag}).encode()
    config = registry.blobs.put(config_bytes)
    registry.repo_blobs.link(repo, config)
    descriptors = []
    for data in layers:
        digest = registry.blobs.put(data)
        registry.repo_blobs.link(repo, digest)
        descriptors.append(
            {"mediaType": "application/octet-stream", "digest": str(digest), "size": len(data)}
        )
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(config),
                "size": len(config_bytes),
            },
            "layers": descriptors,
        }
    ).encode()
    return Digest.parse(commit_manifest(registry, repo, tag, OCI_MANIFEST, body)["digest"])


def test_expiry_removes_what_was_not_pulled_within_ttl_and_keeps_what_was(tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(root=str(tmp_path)), proxy=ProxySettings(upstreams=(HUB,)))
    driver = CheckedDriver(FilesystemDriver(str(tmp_path)))
    registry = Registry.from_driver(settings, driver)
    repo = "hub/library/app"
    shared = b"shared layer"
    old = _manifest(registry, repo, "old", [shared, b"only old"])
    kept = _manifest(registry, repo, "kept", [shared, b"only kept"])
    local = _manifest(registry, "local/app", "v1", [b"local"])
    now = time.time() + 150  # both stored ~150 s "ago", with a ttl of 100 s
    driver.put_content(paths.proxy_use_record(repo, kept), b"")
    used = tmp_path / paths.proxy_use_record(repo, kept).lstrip("/")
    os.utime(used, (now - 10, now - 10))  # pulled 10 s ago
    fresh_blob = registry.blobs.put(b"fetched alone, just now")
    registry.repo_blobs.link(repo, fresh_blob)
    link = tmp_path / paths.layer_link(repo, fresh_blob).lstrip("/")
    os.utime(link, (now - 5, now - 5))

    assert expire(registry, now=now) == {"manifests": 1, "blobs": 2}  # old's config and own layer
    assert not registry.manifests.exists(repo, old)
    with pytest.raises(ManifestUnknown):
        registry.tags.resolve(repo, "old")
    assert registry.tags.resolve(repo, "kept") == kept
    linked = set(registry.repo_blobs.links(repo))
    assert Digest.of(shared) in linked and Digest.of(b"only kept") in linked
    assert Digest.of(b"only old") not in linked
    assert fresh_blob in linked  # linked within the ttl: maybe being read right now
    assert registry.manifests.exists("local/app", local)  # local repositories never expire
    assert fresh_tag(registry, repo, "kept") is None  # no freshness record: ask upstream


def _tailing(tmp_path: Path, data: bytes) -> tuple[Registry, str, Digest, str]:
    from pipeline.proxy.leases import leases_for

    settings = Settings(storage=StorageSettings(root=str(tmp_path)), proxy=ProxySettings(upstreams=(HUB,)))
    registry = Registry.from_driver(settings, CheckedDriver(FilesystemDriver(str(tmp_path))))
    repo, digest = "hub/library/app", Digest.of(data)
    upload_id = registry.uploads.create(repo).upload_id
    registry.uploads.append(repo, upload_id, data)
    record = {"owner": "test", "state": "fetching", "upload_id": upload_id, "size": len(data)}
    leases_for(settings).put(blob_key(repo, digest), record, 30)
    return registry, repo, digest, upload_id


def test_a_tailing_reader_gets_the_last_bytes_only_after_verification(tmp_path: Path) -> None:
    data = os.urandom(3 * HOLD_BACK)
    registry, repo, digest, upload_id = _tailing(tmp_path, data)
    tail = BlobTail(registry, repo, digest, upload_id, len(data), timeout=30)
    head = b""
    while chunk := tail.read_available(1 << 20):
        head += chunk
    assert head == data[: len(data) - HOLD_BACK]  # all but the held-back bytes, then nothing yet
    commit_blob(registry, repo, upload_id, str(digest), len(data))
    assert head + tail.read() == data


def test_a_tailing_reader_stops_short_when_the_fetch_fails(tmp_path: Path) -> None:
    from pipeline.proxy.leases import leases_for

    data = os.urandom(2 * HOLD_BACK)
    registry, repo, digest, upload_id = _tailing(tmp_path, data)
    tail = BlobTail(registry, repo, digest, upload_id, len(data), timeout=30)
    assert tail.read_available(len(data)) == data[:HOLD_BACK]
    leases_for(registry.settings).put(blob_key(repo, digest), {"state": "failed"}, 30)
    with pytest.raises(OSError, match="failed"):
        tail.read_available(len(data))
