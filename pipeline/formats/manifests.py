"""Manifest documents: the media types Lading accepts, and parsing a pushed body into a
validated `Manifest` value.

Accepted: the OCI image manifest and image index (image-spec v1.1, including artifacts
with `artifactType`/`subject`), the Docker schema2 manifest and the Docker manifest list.
Docker schema1 (signed or not) and every other type are refused with `ManifestInvalid`
whose detail says why. Parsing is pure: nothing here touches storage.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import DigestInvalid, ManifestInvalid
from pipeline.formats.digest import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# The OCI "empty" descriptor: the two bytes `{}`. Artifacts use it as their config.
EMPTY_JSON = b"{}"
EMPTY_DIGEST = Digest("sha256", "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_SIZE = 2**63 - 1  # a descriptor's size is an int64 (image-spec, Go's json decoding)

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
SUPPORTED = IMAGE_TYPES | INDEX_TYPES
SCHEMA1 = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# Content-Types that say nothing about which manifest this is (curl defaults, proxies);
# treated as if no Content-Type had been sent rather than as a conflicting type.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (also the shape of Docker schema2 references)."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    urls: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest or a referrers index."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest. `raw` is exactly the bytes the client sent; `digest`
    is computed over them (sha256 unless the client pushed by a sha512 reference)."""

    media_type: str
    digest: Digest
    raw: bytes
    config: Descriptor | None
    layers: list[Descriptor]
    manifests: list[Descriptor]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def blob_references(self) -> list[Descriptor]:
        """Config and layers that must exist as blobs in the repository. Layers with
        `urls` (foreign / non-distributable) are fetched elsewhere and are not required."""
        refs = [self.config] if self.config is not None else []
        refs.extend(layer for layer in self.layers if not layer.urls)
        return refs

    def manifest_references(self) -> list[Descriptor]:
        """The child manifests of an index or manifest list."""
        return list(self.manifests)


def _base_type(content_type: str | None) -> str:
    """`application/x; charset=utf-8` → `application/x`."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _not_json(name: str) -> Any:
    """`NaN`, `Infinity`, `-Infinity`: Python's json takes them, JSON (RFC 8259) and Go's
    json.Unmarshal do not, so a manifest holding one could be pushed but not pulled."""
    raise ValueError(f"{name} is not a JSON value")


def _load(body: bytes) -> dict[str, Any]:
    # Decoded here rather than by json.loads, which would take a BOM or UTF-16 silently and
    # store a manifest Go clients (json.Unmarshal) cannot parse when they pull it.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestInvalid(f"manifest is not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        raise ManifestInvalid("manifest starts with a byte order mark; send plain UTF-8 JSON")
    try:
        doc = json.loads(text, parse_constant=_not_json)
    except ValueError as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        # 100,000 nested `[` exhaust the parser's recursion: no manifest nests like that.
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid(f"manifest must be a JSON object, not {type(doc).__name__}")
    return doc


def _shape_type(doc: dict[str, Any]) -> str | None:
    """The media type a document without a usable `mediaType` has by its fields."""
    if "signatures" in doc:
        return DOCKER_SCHEMA1_SIGNED
    if "fsLayers" in doc or doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    has_config, has_manifests = "config" in doc, "manifests" in doc
    if has_config and has_manifests:
        return None
    if has_config:
        return OCI_MANIFEST
    if has_manifests:
        return OCI_INDEX
    return None


def detect_media_type(body: bytes) -> str:
    """The media type of a stored manifest, for serving it: its `mediaType` field, else
    its shape (`manifests` → index, `config` → image manifest, schema1 fields → schema1).
    Never raises; bodies with no clue are served as OCI image manifests."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return OCI_MANIFEST
    if not isinstance(doc, dict):
        return OCI_MANIFEST
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in doc:
        return OCI_INDEX
    return _shape_type(doc) or OCI_MANIFEST


# The fields Go clients (and distribution) decode these objects into. encoding/json matches
# object keys to struct fields case-insensitively (with Unicode folding: `Layers`, `layer\u017f`), the
# last match winning; Python's dict lookups are exact. A key that is a field only under
# folding would make the document mean one thing here (verified, referenced by gc) and
# another to every Go client pulling it, so it is refused.
_MANIFEST_FIELDS = frozenset(
    {"schemaVersion", "mediaType", "artifactType", "config", "layers", "manifests", "subject", "annotations"}
)
_DESCRIPTOR_FIELDS = frozenset(
    {"mediaType", "digest", "size", "urls", "annotations", "data", "platform", "artifactType"}
)
_PLATFORM_FIELDS = frozenset({"architecture", "os", "os.version", "os.features", "variant", "features"})
_FOLDED = {
    fields: {name.casefold(): name for name in fields}
    for fields in (_MANIFEST_FIELDS, _DESCRIPTOR_FIELDS, _PLATFORM_FIELDS)
}


def _check_keys(value: dict[str, Any], fields: frozenset[str], where: str) -> None:
    folded = _FOLDED[fields]
    for key in value:
        field_name = folded.get(key.casefold())
        if field_name is not None and key != field_name:
            raise ManifestInvalid(
                f"{where}key {key!r} is {field_name!r} in another case: Go clients would read it as"
                f" {field_name!r}; use the exact name"
            )


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestInvalid(f"{where} must be an object of string values")
    return dict(value)


def _optional_string(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ManifestInvalid(f"{where} must be a non-empty string")
    return value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    _check_keys(value, _DESCRIPTOR_FIELDS, f"{where}: ")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}.mediaType must be a non-empty string")
    raw_digest = value.get("digest")
    if raw_digest is None:
        raise ManifestInvalid(f"{where}.digest is missing")
    try:
        digest = Digest.parse(raw_digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{where}.digest: {exc.detail}") from None
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    if size > MAX_SIZE:
        # Go clients decode sizes as int64: a larger one makes the manifest unpullable.
        raise ManifestInvalid(f"{where}.size {size} is past the int64 range of every client")
    urls = value.get("urls")
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where}.urls must be a list of strings")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestInvalid(f"{where}.platform must be an object")
    if platform is not None:
        _check_keys(platform, _PLATFORM_FIELDS, f"{where}.platform: ")
    if "data" in value:
        _check_data(value["data"], digest, size, f"{where}.data")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=_optional_string(value.get("artifactType"), f"{where}.artifactType"),
        annotations=_string_map(value.get("annotations"), f"{where}.annotations"),
        platform=platform,
        urls=list(urls),
    )


def _check_data(data: Any, digest: Digest, size: int, where: str) -> None:
    """image-spec: embedded `data` MUST be base64 and MUST match the descriptor's size and
    digest. Distribution refuses a manifest breaking that; so do we."""
    if not isinstance(data, str):
        raise ManifestInvalid(f"{where} must be a base64 string")
    try:
        content = base64.b64decode(data.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ManifestInvalid(f"{where} is not valid base64") from None
    if len(content) != size:
        raise ManifestInvalid(f"{where} holds {len(content)} bytes but the descriptor's size is {size}")
    if not digest.verify(content):
        raise ManifestInvalid(f"{where} does not match the descriptor's digest")


def _descriptor_list(value: Any, where: str) -> list[Descriptor]:
    if not isinstance(value, list):
        raise ManifestInvalid(f"{where} must be a list of descriptors")
    return [_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    field_value = doc.get("mediaType")
    if field_value is not None and (not isinstance(field_value, str) or not field_value):
        raise ManifestInvalid("mediaType must be a non-empty string")
    header = _base_type(content_type)
    if header in _GENERIC_CONTENT_TYPES:
        header = ""
    if field_value and header and field_value != header:
        raise ManifestInvalid(f"mediaType {field_value!r} does not match Content-Type {header!r}")
    shape = None if field_value else _shape_type(doc)
    if header and shape is not None and header != shape and header in SUPPORTED:
        # Without the field a stored manifest is served by its shape (detect_media_type,
        # as distribution does): a Docker type or a different OCI type would be accepted
        # as one type and pulled as another. Distribution refuses these too.
        raise ManifestInvalid(
            f"Content-Type {header!r} needs the manifest's own mediaType field set to it"
            f" (without it the document reads as {shape!r})"
        )
    chosen = field_value or header or shape
    if chosen is None:
        raise ManifestInvalid("cannot tell the manifest type: no mediaType, no Content-Type, unclear shape")
    if chosen in SCHEMA1:
        raise ManifestInvalid(f"Docker schema1 manifests ({chosen}) are not supported; push schema2 or OCI")
    if chosen not in SUPPORTED:
        raise ManifestInvalid(f"unsupported manifest media type {chosen!r}")
    return chosen


def parse_manifest(body: bytes, content_type: str | None) -> Manifest:
    """Parse and validate a pushed manifest; `ManifestInvalid` says what is wrong."""
    if len(body) > MAX_MANIFEST_SIZE:
        raise ManifestInvalid(f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_SIZE}")
    doc = _load(body)
    _check_keys(doc, _MANIFEST_FIELDS, "")
    media_type = _media_type(doc, content_type)
    version = doc.get("schemaVersion")
    if type(version) is not int or version != 2:  # not 2.0, "2" or true
        raise ManifestInvalid(f"schemaVersion must be 2, got {version!r}")
    is_oci = media_type in (OCI_MANIFEST, OCI_INDEX)

    config: Descriptor | None = None
    layers: list[Descriptor] = []
    children: list[Descriptor] = []
    if media_type in IMAGE_TYPES:
        if "manifests" in doc:
            raise ManifestInvalid("an image manifest must not have `manifests` (is this an index?)")
        if "config" not in doc:
            raise ManifestInvalid("an image manifest needs `config`")
        if "layers" not in doc:
            raise ManifestInvalid("an image manifest needs `layers` (an empty list for artifacts)")
        config = _descriptor(doc["config"], "config")
        layers = _descriptor_list(doc["layers"], "layers")
    else:
        if "config" in doc:
            raise ManifestInvalid("an index must not have `config` (is this an image manifest?)")
        if "manifests" not in doc:
            raise ManifestInvalid("an index needs `manifests`")
        children = _descriptor_list(doc["manifests"], "manifests")

    subject: Descriptor | None = None
    artifact_type: str | None = None
    if is_oci:
        if doc.get("subject") is not None:
            subject = _descriptor(doc["subject"], "subject")
        # image-spec says artifacts with the empty config MUST set artifactType, but that
        # binds the producer; registries (and the conformance suite) accept them without.
        artifact_type = _optional_string(doc.get("artifactType"), "artifactType")

    return Manifest(
        media_type=media_type,
        digest=Digest.of(body),
        raw=bytes(body),
        config=config,
        layers=layers,
        manifests=children,
        subject=subject,
        artifact_type=artifact_type,
        annotations=_string_map(doc.get("annotations"), "annotations"),
    )
