"""Digest parsing: only sha256/sha512 with exact-length lower-case hex are accepted."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.errors import DigestInvalid
from pipeline.formats.digest import Digest, new_hasher

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512_EMPTY = hashlib.sha512(b"").hexdigest()


@pytest.mark.parametrize(
    ("text", "algorithm", "hexpart"),
    [
        (f"sha256:{SHA256_EMPTY}", "sha256", SHA256_EMPTY),
        (f"sha512:{SHA512_EMPTY}", "sha512", SHA512_EMPTY),
        ("sha256:" + "0" * 64, "sha256", "0" * 64),
    ],
)
def test_parse_valid(text: str, algorithm: str, hexpart: str) -> None:
    d = Digest.parse(text)
    assert (d.algorithm, d.hex) == (algorithm, hexpart)
    assert str(d) == text


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{SHA256_EMPTY.upper()}",  # upper-case hex
        "sha256:E3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # one upper-case char
        f"sha256:{SHA256_EMPTY[:-1]}",  # 63 characters
        f"sha256:{SHA256_EMPTY}0",  # 65 characters
        f"sha512:{SHA256_EMPTY}",  # sha256 length under sha512
        f"sha256:{SHA512_EMPTY}",  # sha512 length under sha256
        "md5:d41d8cd98f00b204e9800998ecf8427e",  # unknown algorithm
        "sha384:" + "0" * 96,  # registered elsewhere, not accepted here
        "SHA256:" + SHA256_EMPTY,  # upper-case algorithm
        SHA256_EMPTY,  # missing colon
        "sha256" + SHA256_EMPTY,
        "sha256:",
        ":" + SHA256_EMPTY,
        "",
        "sha256:" + "g" * 64,  # not hex
        f"sha256: {SHA256_EMPTY}",
        f" sha256:{SHA256_EMPTY}",
        f"sha256:{SHA256_EMPTY}\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(text)


def test_unknown_algorithm_says_so() -> None:
    with pytest.raises(DigestInvalid) as info:
        Digest.parse("md5:d41d8cd98f00b204e9800998ecf8427e")
    assert "md5" in str(info.value)
    assert "unsupported" in str(info.value)


def test_non_string_is_invalid() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(None)  # type: ignore[arg-type]


def test_of_hashes_content() -> None:
    assert Digest.of(b"") == Digest("sha256", SHA256_EMPTY)
    assert Digest.of(b"", "sha512") == Digest("sha512", SHA512_EMPTY)
    assert str(Digest.of(b"a")) == "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    with pytest.raises(DigestInvalid):
        Digest.of(b"", "md5")


def test_verify() -> None:
    d = Digest.of(b"payload")
    assert d.verify(b"payload")
    assert not d.verify(b"payload!")


def test_digests_are_values() -> None:
    a = Digest.parse(f"sha256:{SHA256_EMPTY}")
    b = Digest.of(b"")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert sorted([Digest.of(b"b"), Digest.of(b"a")])[0] == min(Digest.of(b"a"), Digest.of(b"b"))


def test_new_hasher() -> None:
    h = new_hasher("sha256")
    h.update(b"a")
    assert h.hexdigest() == Digest.of(b"a").hex
    with pytest.raises(DigestInvalid):
        new_hasher("sha1")
