"""Resumable SHA-256/512: saved states continue exactly, in Go's (distribution's) encoding."""

from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path

import httpx
import pytest

from pipeline.errors import DigestInvalid
from pipeline.formats.hashstate import ResumableHash, resumable_available
from tests.support.distribution import distribution

# FIPS 180-4 initial hash values.
SHA256_H0 = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
SHA512_H0 = (
    0x6A09E667F3BCC908,
    0xBB67AE8584CAA73B,
    0x3C6EF372FE94F82B,
    0xA54FF53A5F1D36F1,
    0x510E527FADE682D1,
    0x9B05688C2B3E6C1F,
    0x1F83D9ABFB41BD6B,
    0x5BE0CD19137E2179,
)
ALGORITHMS = ["sha256", "sha512"]


def test_available_for_sha256_and_sha512_only() -> None:
    assert resumable_available("sha256")
    assert resumable_available("sha512")
    assert not resumable_available("md5")
    with pytest.raises(DigestInvalid):
        ResumableHash("md5")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_random_splits_saved_and_restored_match_hashlib(algorithm: str) -> None:
    rng = random.Random(1234)
    data = rng.randbytes(300_000)
    for _ in range(25):
        cuts = sorted(rng.sample(range(len(data)), rng.randint(1, 6)))
        h = ResumableHash(algorithm)
        start = 0
        for cut in [*cuts, len(data)]:
            h.update(data[start:cut])
            assert h.offset == cut
            h = ResumableHash.restore(algorithm, h.state())  # every chunk ends with a save/restore
            assert h.offset == cut
            assert h.hexdigest() == hashlib.new(algorithm, data[:cut]).hexdigest()
            start = cut
        assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hexdigest_does_not_disturb_the_running_state(algorithm: str) -> None:
    h = ResumableHash(algorithm)
    h.update(b"abc" * 50)
    first = h.hexdigest()
    assert h.hexdigest() == first
    h.update(b"more")
    assert h.hexdigest() == hashlib.new(algorithm, b"abc" * 50 + b"more").hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bytearray_and_memoryview_updates(algorithm: str) -> None:
    data = os.urandom(10_000)
    h = ResumableHash(algorithm)
    h.update(bytearray(data[:3000]))
    h.update(memoryview(data)[3000:7000])  # read-only view
    h.update(memoryview(bytearray(data[7000:])))  # writable view, passed in place
    assert h.offset == len(data)
    assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest()


def test_sha256_state_is_go_marshal_binary() -> None:
    # Nothing hashed: the initial H constants, an empty buffer, length 0.
    empty = b"sha\x03" + struct.pack(">8I", *SHA256_H0) + bytes(64) + struct.pack(">Q", 0)
    assert ResumableHash("sha256").state() == empty
    # Three bytes: still no block compressed, so H is unchanged; they wait in the buffer.
    h = ResumableHash("sha256")
    h.update(b"abc")
    abc = b"sha\x03" + struct.pack(">8I", *SHA256_H0) + b"abc" + bytes(61) + struct.pack(">Q", 3)
    assert h.state() == abc
    # 100 bytes: one block compressed, 36 bytes pending, length in bytes.
    data = bytes(range(100))
    h = ResumableHash("sha256")
    h.update(data)
    state = h.state()
    assert len(state) == 108
    assert state[36:100] == data[64:] + bytes(28)
    assert state[100:] == struct.pack(">Q", 100)
    assert state[4:36] != struct.pack(">8I", *SHA256_H0)


def test_sha512_state_is_go_marshal_binary() -> None:
    empty = b"sha\x07" + struct.pack(">8Q", *SHA512_H0) + bytes(128) + struct.pack(">Q", 0)
    assert ResumableHash("sha512").state() == empty
    h = ResumableHash("sha512")
    h.update(b"x" * 130)
    state = h.state()
    assert len(state) == 204
    assert state[68:196] == b"xx" + bytes(126)
    assert state[196:] == struct.pack(">Q", 130)


def test_restore_a_state_written_by_hand() -> None:
    state = b"sha\x03" + struct.pack(">8I", *SHA256_H0) + b"hello" + bytes(59) + struct.pack(">Q", 5)
    h = ResumableHash.restore("sha256", state)
    assert h.offset == 5
    h.update(b" world")
    assert h.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


@pytest.mark.parametrize(
    "state",
    [b"", b"sha\x03", b"sha\x07" + bytes(104), b"xyz\x03" + bytes(104), b"sha\x03" + bytes(105)],
)
def test_malformed_state_is_rejected(state: bytes) -> None:
    with pytest.raises(ValueError):
        ResumableHash.restore("sha256", state)


def test_copy_is_independent() -> None:
    h = ResumableHash()
    h.update(b"a" * 70)
    c = h.copy()
    c.update(b"b")
    assert h.hexdigest() == hashlib.sha256(b"a" * 70).hexdigest()
    assert c.hexdigest() == hashlib.sha256(b"a" * 70 + b"b").hexdigest()


def test_states_are_byte_identical_to_distributions_hashstate_files(tmp_path: Path) -> None:
    """CNCF distribution saves `_uploads/<id>/hashstates/sha256/<offset>` after each PATCH;
    ours must be the same bytes, and restoring its file must continue the digest."""
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(100_003)
    with distribution(root, tmp_path) as host, httpx.Client(base_url=f"http://{host}", timeout=30) as client:
        location = client.post("/v2/t/blobs/uploads/").headers["location"]
        for chunk in (data[:70_001], data[70_001:]):
            r = client.patch(location, content=chunk, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 202, r.text
            location = r.headers["location"]
    files = {int(p.name): p.read_bytes() for p in root.rglob("hashstates/sha256/*")}
    assert {0, 70_001, 100_003} <= set(files)
    for offset, theirs in files.items():
        ours = ResumableHash()
        ours.update(data[:offset])
        assert ours.state() == theirs, offset
        resumed = ResumableHash.restore("sha256", theirs)
        resumed.update(data[offset:])
        assert resumed.hexdigest() == hashlib.sha256(data).hexdigest()
