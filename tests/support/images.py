"""Build real, small container images on disk as OCI image layouts, for real clients.

`build_oci_layout` writes an OCI image layout (oci-layout, index.json, blobs/) that
`skopeo copy oci:<dir>:<tag> docker://...` pushes as is. Layers are gzip-compressed tars of
random files, and the config lists the correct `rootfs.diff_ids`, so deep verification
accepts them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    tar: bytes  # uncompressed
    blob: bytes  # gzip-compressed

    @property
    def digest(self) -> str:
        return sha256(self.blob)

    @property
    def diff_id(self) -> str:
        return sha256(self.tar)


@dataclass
class Image:
    layers: list[Layer]
    config: bytes
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)


def make_layer(files: dict[str, bytes]) -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return Layer(tar=tar_bytes, blob=gzip.compress(tar_bytes, compresslevel=1, mtime=0))


def random_layer(size: int, name: str = "data.bin") -> Layer:
    return make_layer({name: os.urandom(size)})


def make_image(layer_sizes: list[int], diff_ids: list[str] | None = None) -> Image:
    """An OCI image with one random file per layer. `diff_ids` overrides the config's
    list (to build an image whose config lies about its layers)."""
    layers = [random_layer(size, f"layer{i}.bin") for i, size in enumerate(layer_sizes)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids or [layer.diff_id for layer in layers]},
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": len(layer.blob)}
                for layer in layers
            ],
        },
        separators=(",", ":"),
    ).encode()
    blobs = {layer.digest: layer.blob for layer in layers}
    blobs[sha256(config)] = config
    blobs[sha256(manifest)] = manifest
    return Image(layers=layers, config=config, manifest=manifest, blobs=blobs)


def write_oci_layout(
    images: Image | Sequence[Image],
    directory: Path,
    tag: str = "latest",
    top: tuple[str, bytes] | None = None,
) -> Path:
    """Write `images` as an OCI image layout at `directory` (reference `oci:<dir>:<tag>`).
    The tag names `top` (media type, content), e.g. an index over the images, else the
    one image's manifest."""
    every = [images] if isinstance(images, Image) else list(images)
    if top is None:
        (only,) = every
        top = (OCI_MANIFEST, only.manifest)
    media_type, content = top
    blobs = {sha256(content): content}
    for image in every:
        blobs.update(image.blobs)
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": media_type,
                "digest": sha256(content),
                "size": len(content),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def read_oci_layout(directory: Path) -> dict[str, bytes]:
    """Every blob of an OCI image layout, by digest (for comparing a pull with a push)."""
    blob_dir = directory / "blobs" / "sha256"
    return {f"sha256:{p.name}": p.read_bytes() for p in blob_dir.iterdir()}
