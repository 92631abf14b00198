"""ORAS against a real Lading: artifacts with custom artifact types pushed and pulled by the `oras`
client, referrers attached through `subject` (by oras and by hand over HTTP), and the referrers
API listing them with their artifact types and honouring `?artifactType=` filtering."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import oras.client
import oras.oci
import pytest

from tests.support.lading import lading_embedded

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
BUNDLE_TYPE = "application/vnd.lading.test.bundle.v1"
SBOM_CONFIG_TYPE = "application/vnd.lading.test.sbom.config.v1+json"
SIGNATURE_TYPE = "application/vnd.lading.test.signature.v1"


class ArtifactTypeClient(oras.client.OrasClient):
    """The oras client, but the manifests it pushes carry an OCI 1.1 `artifactType`: the Python
    client has no option for it, and a real artifact push (oras CLI `--artifact-type`) sets it."""

    def __init__(self, hostname: str, artifact_type: str) -> None:
        super().__init__(hostname=hostname, insecure=True)
        self.artifact_type = artifact_type

    def upload_manifest(self, manifest: dict[str, Any], container: Any) -> Any:
        manifest["artifactType"] = self.artifact_type
        return super().upload_manifest(manifest, container)


@dataclass(frozen=True)
class Pushed:
    digest: str
    size: int
    raw: bytes


@pytest.fixture(scope="module")
def lading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("lading-oras")
    with lading_embedded(workdir / "root", workdir) as host:
        yield host


def fetch_manifest(host: str, repo: str, reference: str) -> Pushed:
    resp = httpx.get(f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200, resp.text
    digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
    assert resp.headers["Docker-Content-Digest"] == digest
    return Pushed(digest, len(resp.content), resp.content)


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    done = client.put(
        location,
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def push_signature(host: str, repo: str, subject: Pushed, payload: bytes) -> tuple[Pushed, httpx.Response]:
    """A referrer in the OCI 1.1 artifact shape: empty config, `artifactType`, `subject`."""
    with httpx.Client(base_url=f"http://{host}") as client:
        config_digest = push_blob(client, repo, b"{}")
        layer_digest = push_blob(client, repo, payload)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": config_digest, "size": 2},
            "layers": [
                {"mediaType": "application/vnd.lading.test.sig", "digest": layer_digest, "size": len(payload)}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.size},
            "annotations": {"org.example.signed-by": "conformance"},
        }
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        resp = client.put(
            f"/v2/{repo}/manifests/{digest}", content=raw, headers={"Content-Type": OCI_MANIFEST}
        )
        assert resp.status_code == 201, resp.text
        assert resp.headers["Docker-Content-Digest"] == digest
        return Pushed(digest, len(raw), raw), resp


def referrers(host: str, repo: str, subject: str, **params: str) -> httpx.Response:
    resp = httpx.get(f"http://{host}/v2/{repo}/referrers/{subject}", params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == OCI_INDEX
    body = resp.json()
    assert body["schemaVersion"] == 2 and body["mediaType"] == OCI_INDEX
    return resp


def test_artifacts_and_referrers_round_trip(lading: str, tmp_path: Path) -> None:
    repo = f"oras/{uuid.uuid4().hex[:8]}/bundle"
    src = tmp_path / "src"
    src.mkdir()
    files = {"notes.txt": b"hello from lading\n" * 50, "payload.bin": os.urandom(300_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)

    # oras rejects paths outside the working directory unless told otherwise; relative paths
    # also become the layer titles that `pull` writes back.
    cwd = os.getcwd()
    os.chdir(src)
    try:
        bundle_client = ArtifactTypeClient(lading, BUNDLE_TYPE)
        resp = bundle_client.push(target=f"{lading}/{repo}:v1", files=list(files), quiet=True)
        assert resp.status_code == 201
        bundle = fetch_manifest(lading, repo, "v1")
        assert json.loads(bundle.raw)["artifactType"] == BUNDLE_TYPE
        assert resp.headers["Docker-Content-Digest"] == bundle.digest

        # Second artifact, attached by oras itself: no `artifactType`, so its type is the
        # config media type, which is what the referrers API must report for it.
        (src / "sbom.json").write_bytes(b'{"packages": []}')
        sbom_client = oras.client.OrasClient(hostname=lading, insecure=True)
        sbom_resp = sbom_client.push(
            target=f"{lading}/{repo}:sbom",
            files=["sbom.json"],
            manifest_config=f":{SBOM_CONFIG_TYPE}",
            manifest_annotations={"org.example.kind": "sbom"},
            subject=oras.oci.Subject(mediaType=OCI_MANIFEST, digest=bundle.digest, size=bundle.size),
            quiet=True,
        )
    finally:
        os.chdir(cwd)
    assert sbom_resp.status_code == 201
    assert sbom_resp.headers.get("OCI-Subject") == bundle.digest
    sbom = fetch_manifest(lading, repo, "sbom")
    assert json.loads(sbom.raw)["subject"]["digest"] == bundle.digest

    signature, sig_resp = push_signature(lading, repo, bundle, b"signature-bytes")
    assert sig_resp.headers.get("OCI-Subject") == bundle.digest

    # Pull both artifacts back with oras: the files come back byte for byte.
    puller = oras.client.OrasClient(hostname=lading, insecure=True)
    out = tmp_path / "pulled"
    pulled = puller.pull(target=f"{lading}/{repo}:v1", outdir=str(out))
    assert sorted(Path(p).name for p in pulled) == sorted(files)
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    out_sbom = tmp_path / "pulled-sbom"
    puller.pull(target=f"{lading}/{repo}@{sbom.digest}", outdir=str(out_sbom))
    assert (out_sbom / "sbom.json").read_bytes() == b'{"packages": []}'

    listed = referrers(lading, repo, bundle.digest)
    assert "OCI-Filters-Applied" not in listed.headers
    by_digest = {m["digest"]: m for m in listed.json()["manifests"]}
    assert set(by_digest) == {sbom.digest, signature.digest}
    assert by_digest[sbom.digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sbom.digest,
        "size": sbom.size,
        "artifactType": SBOM_CONFIG_TYPE,
        "annotations": {"org.example.kind": "sbom"},
    }
    assert by_digest[signature.digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": signature.digest,
        "size": signature.size,
        "artifactType": SIGNATURE_TYPE,
        "annotations": {"org.example.signed-by": "conformance"},
    }

    filtered = referrers(lading, repo, bundle.digest, artifactType=SIGNATURE_TYPE)
    assert filtered.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [signature.digest]

    none = referrers(lading, repo, bundle.digest, artifactType="application/vnd.lading.test.absent")
    assert none.headers.get("OCI-Filters-Applied") == "artifactType"
    assert none.json()["manifests"] == []

    # The bundle itself refers to nothing; a never-pushed digest still answers an empty index.
    assert referrers(lading, repo, signature.digest).json()["manifests"] == []
    assert referrers(lading, repo, "sha256:" + "0" * 64).json()["manifests"] == []
