"""Repository names, tags and references under the OCI distribution-spec grammar."""

from __future__ import annotations

import pytest

from pipeline.errors import DigestInvalid, NameInvalid, TagInvalid
from pipeline.formats.digest import Digest
from pipeline.formats.names import (
    MAX_NAME_LENGTH,
    is_digest_reference,
    is_valid_name,
    parse_reference,
    validate_name,
    validate_tag,
)

VALID_NAMES = [
    "ubuntu",
    "library/ubuntu",
    "a/b/c/d/e",
    "my-org/my_app",
    "my.registry/app",
    "a__b",
    "a---b",
    "a.b_c-d/e",
    "0",
    "9a/b9",
    "x" * MAX_NAME_LENGTH,
    "/".join(["abc"] * 64),  # exactly 255 characters
]

INVALID_NAMES = [
    "",
    "Ubuntu",  # upper case
    "library/Ubuntu",
    "..",
    "a/../b",
    "a/./b",
    "/library/ubuntu",  # leading separator
    "library/ubuntu/",  # trailing separator
    "library//ubuntu",  # double slash
    "-abc",
    "abc-",
    "abc.",
    ".abc",
    "_abc",
    "a___b",  # three underscores
    "a..b",
    "a._b",
    "a b",
    "a:b",
    "a@b",
    "library/ubuntu\n",  # `$` would let a trailing newline through
    "x" * (MAX_NAME_LENGTH + 1),
    "/".join(["abc"] * 65),  # valid components, 259 characters
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert len(name) <= MAX_NAME_LENGTH
    assert validate_name(name) == name
    assert is_valid_name(name)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)
    assert not is_valid_name(name)


def test_length_limit_is_255() -> None:
    assert MAX_NAME_LENGTH == 255
    with pytest.raises(NameInvalid) as info:
        validate_name("a" * 256)
    assert "255" in str(info.value)


VALID_TAGS = ["latest", "v1.0.0", "1", "_", "_private", "A-Z_a.z-0", "a" * 128, "22.04", "sha256-abc.sig"]
INVALID_TAGS = ["", ".hidden", "-dash", "a" * 129, "a/b", "a:b", "a b", "a+b", "ünïcode", "v1\n"]


@pytest.mark.parametrize("tag", VALID_TAGS)
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", INVALID_TAGS)
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)


def test_reference_is_a_tag_or_a_digest() -> None:
    digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert parse_reference("latest") == "latest"
    assert parse_reference(digest) == Digest.parse(digest)
    assert is_digest_reference(digest)
    assert not is_digest_reference("latest")


def test_bad_references() -> None:
    with pytest.raises(DigestInvalid):
        parse_reference("sha256:abc")
    with pytest.raises(DigestInvalid):
        parse_reference("md5:d41d8cd98f00b204e9800998ecf8427e")
    with pytest.raises(TagInvalid):
        parse_reference("-bad")
    with pytest.raises(TagInvalid):
        parse_reference("a" * 129)
