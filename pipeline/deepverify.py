"""Deep verification: do an image's layers really hold what its config says they hold?

An image config lists `rootfs.diff_ids`, the sha256 of each layer *uncompressed*, in
layer order. Ordinary manifest verification only checks that the (compressed) layer blobs
exist; this decompresses every layer and compares. The per-layer sums (TarSum, diff_id,
compressed size) are computed once per blob and cached at `paths.tarsum_record`; each
manifest's verdict is recorded at `paths.verification_record`.

Policies (`Settings.deep_verification`): "off" skips, "warn" records and reports a
failure without raising, "reject" records it and then raises ManifestInvalid listing
every mismatching layer.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.errors import DigestInvalid, LayerInvalid, ManifestInvalid, PathNotFound
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import Manifest, parse_manifest
from pipeline.formats.tarsum import layer_sums
from pipeline.storage import paths

if TYPE_CHECKING:
    from pipeline.registry import Registry

POLICIES = ("off", "warn", "reject")
MAX_CONFIG_SIZE = 32 * 1024 * 1024
_SUMS_KEYS = ("tarsum", "diff_id", "size")


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _load_record(registry: Registry, path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(registry.driver.get_content(path))
    except (PathNotFound, ValueError):
        return None
    return value if isinstance(value, dict) else None


def tarsum_blob(registry: Registry, digest: str) -> dict[str, Any]:
    """{"tarsum", "diff_id", "size"} of a stored layer blob, computed in one streaming
    pass and recorded; a recorded result is returned without reading the blob again
    (blobs are immutable). BlobUnknown if absent, LayerInvalid if it is not a tar."""
    d = Digest.parse(digest)
    path = paths.tarsum_record(d)
    cached = _load_record(registry, path)
    if cached is not None and all(k in cached for k in _SUMS_KEYS):
        return {k: cached[k] for k in _SUMS_KEYS}
    with registry.blobs.open(d) as stream:
        sums = layer_sums(stream).to_json()
    registry.driver.put_content(path, _dumps(sums))
    return sums


def verification_result(registry: Registry, repository: str, digest: str) -> dict[str, Any] | None:
    """The recorded deep-verification result of a manifest, or None if never verified."""
    return _load_record(registry, paths.verification_record(repository, Digest.parse(digest)))


def _diff_ids(registry: Registry, config_digest: Digest) -> tuple[list[str] | None, str | None]:
    """(diff_ids, None) from the config blob, or (None, why not)."""
    if registry.blobs.stat(config_digest) > MAX_CONFIG_SIZE:
        return None, "config blob is too large to inspect"
    try:
        config = json.loads(registry.blobs.get(config_digest))
    except ValueError:
        return None, "config blob is not JSON"
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(x, str) for x in diff_ids):
        return None, "config has no rootfs.diff_ids"
    return diff_ids, None


def _compare(registry: Registry, manifest_layers: list[Any], diff_ids: list[str]) -> dict[str, list[Any]]:
    mismatches: list[dict[str, Any]] = []
    unverified: list[dict[str, Any]] = []
    for index in range(max(len(manifest_layers), len(diff_ids))):
        layer = manifest_layers[index] if index < len(manifest_layers) else None
        expected = diff_ids[index] if index < len(diff_ids) else None
        entry: dict[str, Any] = {
            "index": index,
            "layer": str(layer.digest) if layer is not None else None,
            "expected": expected,
            "actual": None,
        }
        if layer is None:
            mismatches.append({**entry, "reason": "config lists more diff_ids than the manifest has layers"})
            continue
        if layer.urls:
            unverified.append({**entry, "reason": "foreign layer (fetched from its urls, not stored here)"})
            continue
        if expected is not None and _algorithm(expected) not in (None, "sha256"):
            unverified.append({**entry, "reason": "only sha256 diff_ids can be checked"})
            continue
        try:
            entry["actual"] = tarsum_blob(registry, str(layer.digest))["diff_id"]
        except LayerInvalid as exc:
            mismatches.append({**entry, "reason": f"layer is not a tar archive: {exc.detail}"})
            continue
        if expected is None:
            mismatches.append({**entry, "reason": "manifest has more layers than the config lists diff_ids"})
        elif entry["actual"] != expected:
            mismatches.append({**entry, "reason": "uncompressed digest differs from the config's diff_id"})
    return {"mismatches": mismatches, "unverified": unverified}


def _new_result(manifest: str, policy: str) -> dict[str, Any]:
    if policy not in POLICIES:
        raise ValueError(f"unknown deep-verification policy {policy!r} (one of {', '.join(POLICIES)})")
    return {
        "ok": True,
        "policy": policy,
        "manifest": manifest,
        "mismatches": [],
        "unverified": [],
        "skipped": "deep verification is off" if policy == "off" else None,
    }


def check_manifest(registry: Registry, manifest: Manifest, policy: str) -> dict[str, Any]:
    """Compare the layers of a parsed (not necessarily stored) manifest with its config's
    diff_ids and return the result dict described in `deep_verify`, without recording it.
    Under "reject" a failure raises ManifestInvalid (detail: the mismatches)."""
    result = _new_result(str(manifest.digest), policy)
    if policy == "off":
        return result
    diff_ids: list[str] | None = None
    if manifest.is_index:
        result["skipped"] = "an index has no layers of its own (verify its child manifests)"
    elif manifest.config is None:
        result["skipped"] = "manifest has no config"
    else:
        diff_ids, result["skipped"] = _diff_ids(registry, manifest.config.digest)
    if diff_ids is not None:
        result.update(_compare(registry, manifest.layers, diff_ids))
        result["ok"] = not result["mismatches"]
    result["verified_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return result


def record(registry: Registry, repository: str, result: dict[str, Any]) -> None:
    """Store a deep-verification result so `verification_result` can answer later."""
    if result.get("skipped") == "deep verification is off":
        return
    digest = Digest.parse(result["manifest"])
    registry.driver.put_content(paths.verification_record(repository, digest), _dumps(result))


def raise_if_rejected(result: dict[str, Any]) -> None:
    if not result["ok"] and result["policy"] == "reject":
        raise ManifestInvalid(
            result["mismatches"], message="layers do not match the image config's rootfs.diff_ids"
        )


def deep_verify(registry: Registry, repository: str, digest: str, policy: str) -> dict[str, Any]:
    """Check every layer of stored manifest `digest` in `repository` against its config's
    diff_ids. Returns {"ok", "policy", "mismatches": [{"index", "layer", "expected",
    "actual", "reason"}], "unverified", "skipped": reason | None, "manifest",
    "verified_at"}, recorded at `paths.verification_record` (except under "off").
    Under "reject" a failure raises ManifestInvalid (detail: the mismatches) after recording."""
    manifest_digest = Digest.parse(digest)
    if policy == "off":
        return _new_result(str(manifest_digest), policy)
    body, media_type = registry.manifests.get(repository, manifest_digest)
    manifest = parse_manifest(body, media_type)
    if manifest.digest != manifest_digest:
        manifest = dataclasses.replace(manifest, digest=manifest_digest)
    result = check_manifest(registry, manifest, policy)
    record(registry, repository, result)
    raise_if_rejected(result)
    return result


def _algorithm(text: str) -> str | None:
    """The algorithm of a well-formed digest (a malformed one simply never matches)."""
    try:
        return Digest.parse(text).algorithm
    except DigestInvalid:
        return None
