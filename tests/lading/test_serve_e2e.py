"""`lading serve` with nothing configured is a working registry: skopeo pushes and pulls.

No configuration file, no broker: the embedded worker runs the jobs. REDIS_URL points
at a closed port to prove nothing reaches for a Redis server.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lading.procs import lading_command, process_env, running
from tests.support import skopeo
from tests.support.images import make_image, read_oci_layout, write_oci_layout
from tests.support.net import free_port, wait_http


def metric_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.e2e
def test_embedded_serve_with_defaults_pushes_and_pulls_with_skopeo(tmp_path: Path) -> None:
    port = free_port()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = process_env(REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    image = make_image([3000, 120_000])
    source = write_oci_layout(image, tmp_path / "image")
    registry = f"127.0.0.1:{port}"

    with running([*lading_command(), "serve"], env, cwd=workdir) as server:
        wait_http(f"http://{registry}/v2/", timeout=60, proc=server.proc)
        skopeo.copy(f"oci:{source}:latest", f"docker://{registry}/team/app:1.0")
        skopeo.copy(f"docker://{registry}/team/app:1.0", f"oci:{tmp_path / 'pulled'}:1.0")
        with urllib.request.urlopen(f"http://{registry}/metrics", timeout=10) as response:
            metrics = metric_values(response.read().decode())
        assert server.stop() == 0, server.output[-3000:]

    pulled = read_oci_layout(tmp_path / "pulled")
    assert pulled[image.manifest_digest] == image.manifest
    assert pulled[image.config_digest] == image.config
    assert all(pulled[layer.digest] == layer.blob for layer in image.layers)

    # The default storage root, in distribution's layout.
    blobs = workdir / "lading-data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    for digest in (image.manifest_digest, *(layer.digest for layer in image.layers)):
        hexdigest = digest.split(":", 1)[1]
        assert (blobs / hexdigest[:2] / hexdigest / "data").exists()

    pushed = sum(v for (name, _), v in metrics.items() if name == "lading_bytes_pushed_total")
    assert pushed >= sum(len(layer.blob) for layer in image.layers)
    pulled_bytes = sum(v for (name, _), v in metrics.items() if name == "lading_bytes_pulled_total")
    assert pulled_bytes >= sum(len(layer.blob) for layer in image.layers)
    commits = metrics.get(("lading_job_round_trip_seconds_count", frozenset({("job", "lading.commit_blob")})))
    assert commits is not None and commits >= 3  # two layers and the config
    manifests = metrics.get(
        ("lading_job_round_trip_seconds_count", frozenset({("job", "lading.commit_manifest")}))
    )
    assert manifests == 1

    access = [json.loads(line) for line in server.output.splitlines() if '"lading.access"' in line]
    put = [e for e in access if e["method"] == "PUT" and e["route"] == "/v2/{name}/manifests/{reference}"]
    assert len(put) == 1 and put[0]["status"] == 201 and put[0]["request_id"]
    assert put[0]["path"] == "/v2/team/app/manifests/1.0"
    assert "Connection refused" not in server.output and "6379" not in server.output
