"""Parsing pushed manifests: what is accepted, what is refused, and why."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from pipeline.errors import ManifestInvalid
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    EMPTY_DIGEST,
    MAX_MANIFEST_SIZE,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    detect_media_type,
    parse_manifest,
)

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def d(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def desc(content: bytes, media_type: str = LAYER, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": d(content), "size": len(content), **extra}


def image(
    media_type: str | None = OCI_MANIFEST, config_type: str = OCI_CONFIG, **fields: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc["config"] = desc(b"config", config_type)
    doc["layers"] = [desc(b"layer-1"), desc(b"layer-2")]
    doc.update(fields)
    return doc


def index(media_type: str | None = OCI_INDEX, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc["manifests"] = [
        desc(b"child-amd64", OCI_MANIFEST, platform={"architecture": "amd64", "os": "linux"}),
        desc(b"child-arm64", OCI_MANIFEST, platform={"architecture": "arm64", "os": "linux"}),
    ]
    doc.update(fields)
    return doc


def raw(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode()


def invalid(body: bytes, content_type: str | None) -> str:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(body, content_type)
    return str(info.value)


# --- each supported type ---------------------------------------------------------------


def test_oci_image_manifest_parses_with_digest_over_the_exact_bytes() -> None:
    body = raw(image())
    m = parse_manifest(body, OCI_MANIFEST)
    assert m.media_type == OCI_MANIFEST
    assert m.digest == Digest("sha256", hashlib.sha256(body).hexdigest())
    assert m.raw == body and m.size == len(body)
    assert m.config is not None and str(m.config.digest) == d(b"config")
    assert [str(x.digest) for x in m.layers] == [d(b"layer-1"), d(b"layer-2")]
    assert [str(x.digest) for x in m.blob_references()] == [d(b"config"), d(b"layer-1"), d(b"layer-2")]
    assert m.manifest_references() == []


def test_docker_schema2_manifest_parses() -> None:
    doc = image(DOCKER_MANIFEST, DOCKER_CONFIG, layers=[desc(b"l", DOCKER_LAYER)])
    m = parse_manifest(raw(doc), DOCKER_MANIFEST)
    assert m.media_type == DOCKER_MANIFEST
    assert m.config is not None and m.config.media_type == DOCKER_CONFIG
    assert [str(x.digest) for x in m.layers] == [d(b"l")]


def test_oci_index_parses_children_with_platforms() -> None:
    m = parse_manifest(raw(index()), OCI_INDEX)
    assert m.media_type == OCI_INDEX and m.config is None and m.layers == []
    assert [str(x.digest) for x in m.manifest_references()] == [d(b"child-amd64"), d(b"child-arm64")]
    assert m.manifests[1].platform == {"architecture": "arm64", "os": "linux"}
    assert m.blob_references() == []


def test_docker_manifest_list_parses() -> None:
    doc = index(DOCKER_LIST)
    doc["manifests"] = [desc(b"c", DOCKER_MANIFEST, platform={"architecture": "amd64", "os": "linux"})]
    m = parse_manifest(raw(doc), DOCKER_LIST)
    assert m.media_type == DOCKER_LIST
    assert [str(x.digest) for x in m.manifest_references()] == [d(b"c")]


def test_artifact_with_empty_config_artifact_type_and_subject() -> None:
    doc = image(
        config_type=OCI_EMPTY,
        artifactType="application/vnd.example.sbom",
        subject=desc(b"the-image", OCI_MANIFEST),
        layers=[],
        annotations={"org.example": "yes"},
    )
    doc["config"] = {"mediaType": OCI_EMPTY, "digest": str(EMPTY_DIGEST), "size": 2}
    m = parse_manifest(raw(doc), OCI_MANIFEST)
    assert m.artifact_type == "application/vnd.example.sbom"
    assert m.subject is not None and str(m.subject.digest) == d(b"the-image")
    assert m.layers == [] and m.annotations == {"org.example": "yes"}
    assert m.config is not None and m.config.digest == EMPTY_DIGEST


def test_empty_config_without_artifact_type_is_accepted() -> None:
    # The conformance suite pushes exactly this; the MUST in image-spec binds producers.
    doc = image()
    doc["config"] = {"mediaType": OCI_EMPTY, "digest": str(EMPTY_DIGEST), "size": 2}
    assert parse_manifest(raw(doc), OCI_MANIFEST).artifact_type is None


def test_unknown_descriptor_fields_are_ignored_and_bytes_kept() -> None:
    doc = image()
    doc["config"]["data"] = "Y29uZmln"  # base64 of the config's own bytes, b"config"
    doc["config"]["newUnspecifiedField"] = "aGVsbG8="
    body = raw(doc)
    assert parse_manifest(body, OCI_MANIFEST).raw == body


def test_foreign_layers_are_not_blob_references() -> None:
    foreign = desc(b"windows-base", FOREIGN, urls=["https://example.com/base.tar.gz"])
    doc = image(DOCKER_MANIFEST, DOCKER_CONFIG, layers=[foreign, desc(b"mine", DOCKER_LAYER)])
    m = parse_manifest(raw(doc), DOCKER_MANIFEST)
    assert m.layers[0].urls == ["https://example.com/base.tar.gz"]
    assert [str(x.digest) for x in m.blob_references()] == [d(b"config"), d(b"mine")]


# --- deciding the media type -----------------------------------------------------------


def test_content_type_agreeing_with_the_shape_is_used_when_the_field_is_missing() -> None:
    assert parse_manifest(raw(image(None)), OCI_MANIFEST).media_type == OCI_MANIFEST
    assert parse_manifest(raw(index(None)), OCI_INDEX).media_type == OCI_INDEX


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        (image(None), DOCKER_MANIFEST),
        (index(None), DOCKER_LIST),
        (image(None), OCI_INDEX),
        (index(None), OCI_MANIFEST),
    ],
    ids=["docker-manifest", "docker-list", "image-as-index", "index-as-image"],
)
def test_content_type_the_body_would_not_be_served_as_is_invalid(
    doc: dict[str, Any], content_type: str
) -> None:
    # Without the field, a stored manifest is served (and read back from distribution's
    # layout) by its shape: accepting it as another type would pull it as a different one.
    assert detect_media_type(raw(doc)) != content_type
    assert "needs the manifest's own mediaType" in invalid(raw(doc), content_type)


def test_shape_decides_when_neither_field_nor_content_type() -> None:
    assert parse_manifest(raw(image(None)), None).media_type == OCI_MANIFEST
    assert parse_manifest(raw(index(None)), None).media_type == OCI_INDEX
    assert parse_manifest(raw(image(None)), "application/json").media_type == OCI_MANIFEST


def test_content_type_parameters_are_ignored() -> None:
    assert parse_manifest(raw(image()), OCI_MANIFEST + "; charset=utf-8").media_type == OCI_MANIFEST


def test_field_and_content_type_disagreeing_is_invalid() -> None:
    text = invalid(raw(image(OCI_MANIFEST)), DOCKER_MANIFEST)
    assert "does not match Content-Type" in text


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_invalid(constant: str) -> None:
    # Python's json accepts them; Go clients could not parse the manifest when pulling it.
    body = raw(image())[:-1] + f',"x": {constant}}}'.encode()
    assert f"{constant} is not a JSON value" in invalid(body, OCI_MANIFEST)
    annotated = raw(image(annotations={"a": "b"})).replace(b'"b"', constant.encode())
    assert "not a JSON value" in invalid(annotated, OCI_MANIFEST)


def _with_key(doc: dict[str, Any], path: list[Any], key: str, value: Any) -> bytes:
    """`doc` as JSON with `key: value` added to the object at `path` (after its other keys)."""
    target: Any = doc
    for step in path:
        target = target[step]
    target[key] = value
    return raw(doc)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ([], "Layers"),
        ([], "layer\u017f"),  # long s: Go's folding takes it for `layers`
        ([], "MediaType"),
        ([], "SCHEMAVERSION"),
        (["config"], "Digest"),
        (["layers", 0], "SIZE"),
        (["layers", 0], "URLs"),
    ],
)
def test_a_key_that_is_a_field_in_another_case_is_invalid(path: list[Any], key: str) -> None:
    # Go's encoding/json folds case when it matches keys to fields (last match wins): the
    # key would be that field for every Go client, and ignored here.
    body = _with_key(image(), path, key, [desc(b"missing")] if key.lower().startswith("layer") else "x")
    assert "in another case" in invalid(body, OCI_MANIFEST)


def test_a_platform_key_in_another_case_is_invalid() -> None:
    doc = index()
    doc["manifests"][0]["platform"]["OS"] = "windows"
    assert "in another case" in invalid(raw(doc), OCI_INDEX)


def test_keys_that_are_no_field_in_any_case_are_kept() -> None:
    doc = image(annotations={"Layers": "x", "org.example.MediaType": "y"})
    doc["x-extension"] = {"Layers": []}
    assert parse_manifest(raw(doc), OCI_MANIFEST).annotations == {"Layers": "x", "org.example.MediaType": "y"}


def test_a_size_past_int64_is_invalid_even_on_a_foreign_layer() -> None:
    # Foreign layers (`urls`) are not looked up, so nothing else would catch it; Go clients
    # decode sizes as int64 and could not pull the manifest.
    foreign = desc(b"elsewhere", DOCKER_LAYER, urls=["https://example.com/l.tar.gz"])
    doc = image(layers=[{**foreign, "size": 2**63}])
    assert "int64" in invalid(raw(doc), OCI_MANIFEST)
    doc["layers"][0]["size"] = 2**63 - 1
    assert parse_manifest(raw(doc), OCI_MANIFEST).layers[0].size == 2**63 - 1


def test_schema1_is_refused_saying_so() -> None:
    schema1 = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": [], "history": []}
    assert "schema1" in invalid(raw(schema1), DOCKER_SCHEMA1)
    assert "schema1" in invalid(raw({**schema1, "signatures": []}), DOCKER_SCHEMA1_SIGNED)
    assert "schema1" in invalid(raw({**schema1, "signatures": []}), None)
    assert "schema1" in invalid(raw({**schema1, "mediaType": DOCKER_SCHEMA1}), None)


def test_unknown_media_type_is_refused() -> None:
    text = invalid(raw(image("application/vnd.example.thing+json")), None)
    assert "unsupported manifest media type" in text
    assert "unsupported" in invalid(raw(image(None)), "application/vnd.example.thing+json")


def test_no_clue_at_all_is_refused() -> None:
    assert "cannot tell" in invalid(raw({"schemaVersion": 2}), None)
    assert "cannot tell" in invalid(raw({"schemaVersion": 2, "config": {}, "manifests": []}), None)


# --- malformed documents ---------------------------------------------------------------


def test_body_over_4_mib_is_refused_and_exactly_4_mib_accepted() -> None:
    body = raw(image())
    at_limit = body + b" " * (MAX_MANIFEST_SIZE - len(body))
    assert parse_manifest(at_limit, OCI_MANIFEST).size == MAX_MANIFEST_SIZE
    assert "limit" in invalid(at_limit + b" ", OCI_MANIFEST)


@pytest.mark.parametrize("body", [b"blablabla", b"", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_non_object_bodies_are_refused(body: bytes) -> None:
    invalid(body, OCI_MANIFEST)


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:1234",  # too short
        "sha256:" + "A" * 64,  # upper-case hex
        "md5:" + "0" * 32,  # unsupported algorithm
        "not-a-digest",
        12345,
    ],
)
def test_malformed_descriptor_digest_is_manifest_invalid_naming_where(bad: Any) -> None:
    doc = image()
    doc["layers"][1]["digest"] = bad
    text = invalid(raw(doc), OCI_MANIFEST)
    assert "layers[1].digest" in text


@pytest.mark.parametrize("size", [-1, "12", True, 1.5, None])
def test_bad_descriptor_size_is_refused(size: Any) -> None:
    doc = image()
    doc["config"]["size"] = size
    assert "config.size" in invalid(raw(doc), OCI_MANIFEST)


def test_descriptor_without_media_type_is_refused() -> None:
    doc = index()
    del doc["manifests"][0]["mediaType"]
    assert "manifests[0].mediaType" in invalid(raw(doc), OCI_INDEX)


@pytest.mark.parametrize("version", [1, 3, "2", None, True, 2.0])
def test_schema_version_must_be_2(version: Any) -> None:
    doc = image()
    doc["schemaVersion"] = version
    if version is None:
        del doc["schemaVersion"]
    assert "schemaVersion" in invalid(raw(doc), OCI_MANIFEST)


def test_image_manifest_needs_config_and_layers() -> None:
    doc = image()
    del doc["layers"]
    assert "layers" in invalid(raw(doc), OCI_MANIFEST)
    doc = image()
    del doc["config"]
    assert "config" in invalid(raw(doc), OCI_MANIFEST)
    assert parse_manifest(raw(image(layers=[])), OCI_MANIFEST).layers == []


def test_index_and_manifest_fields_are_not_mixed() -> None:
    assert "index" in invalid(raw(image(manifests=[])), OCI_MANIFEST)
    assert "config" in invalid(raw(index(config=desc(b"c", OCI_CONFIG))), OCI_INDEX)
    assert "manifests" in invalid(raw({"schemaVersion": 2, "mediaType": OCI_INDEX}), OCI_INDEX)


def test_annotations_must_be_strings() -> None:
    assert "annotations" in invalid(raw(image(annotations={"a": 1})), OCI_MANIFEST)
    doc = image()
    doc["layers"][0]["annotations"] = ["x"]
    assert "layers[0].annotations" in invalid(raw(doc), OCI_MANIFEST)


def test_bad_subject_is_refused() -> None:
    assert "subject" in invalid(raw(image(subject={"mediaType": OCI_MANIFEST})), OCI_MANIFEST)


# --- serving stored manifests ----------------------------------------------------------


def test_detect_media_type_by_field_then_shape() -> None:
    assert detect_media_type(raw(image(DOCKER_MANIFEST))) == DOCKER_MANIFEST
    assert detect_media_type(raw(index(None))) == OCI_INDEX
    assert detect_media_type(raw(image(None))) == OCI_MANIFEST
    assert detect_media_type(raw({"schemaVersion": 1, "fsLayers": [], "signatures": []})) == (
        DOCKER_SCHEMA1_SIGNED
    )
    assert detect_media_type(b"not json") == OCI_MANIFEST


def test_descriptor_to_json_round_trips_the_optional_fields() -> None:
    m = parse_manifest(raw(index()), OCI_INDEX)
    assert m.manifests[0].to_json() == desc(
        b"child-amd64", OCI_MANIFEST, platform={"architecture": "amd64", "os": "linux"}
    )
    plain = Descriptor(OCI_CONFIG, Digest.of(b"x"), 1)
    assert plain.to_json() == {"mediaType": OCI_CONFIG, "digest": str(Digest.of(b"x")), "size": 1}
    full = Descriptor(OCI_MANIFEST, Digest.of(b"x"), 1, "a/b", {"k": "v"}, None, ["https://x"])
    assert full.to_json()["artifactType"] == "a/b"
    assert full.to_json()["annotations"] == {"k": "v"}
    assert full.to_json()["urls"] == ["https://x"]


def test_utf8_bom_is_refused() -> None:
    # Go clients (json.Unmarshal) cannot parse a stored manifest that starts with a BOM.
    assert "byte order mark" in invalid(b"\xef\xbb\xbf" + raw(image()), OCI_MANIFEST)


def test_non_utf8_encodings_are_refused() -> None:
    # json.loads would detect UTF-16 itself; a manifest is UTF-8 JSON.
    assert "UTF-8" in invalid(json.dumps(image()).encode("utf-16"), OCI_MANIFEST)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("!!!not-base64", "base64"),
        (5, "base64"),
        ("Y29uZmln\n", "base64"),
        ("Y29uZmlnIQ==", "size"),  # b"config!": one byte too many
        ("Y29uZmlH", "digest"),  # b"confiG": the right size, other bytes
    ],
)
def test_descriptor_data_must_be_base64_of_the_described_bytes(data: Any, why: str) -> None:
    doc = image()
    doc["config"]["data"] = data
    message = invalid(raw(doc), OCI_MANIFEST)
    assert "config.data" in message and why in message


def test_descriptor_data_matching_size_and_digest_is_accepted() -> None:
    doc = image()
    doc["layers"][0]["data"] = "bGF5ZXItMQ=="  # b"layer-1"
    assert parse_manifest(raw(doc), OCI_MANIFEST).layers[0].size == len(b"layer-1")
