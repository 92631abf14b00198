"""TarSum against the Moby reference vectors, and the streaming layer sums built on it."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, BinaryIO

import pytest
import zstandard

from pipeline.errors import LayerInvalid
from pipeline.formats.tarsum import LayerSums, layer_sums, open_layer, tarsum, tarsum_file
from tests.support.shared import shared_dir

VECTORS_DIR = shared_dir() / "testdata" / "tarsum"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _vectors() -> list[tuple[str, str, str, str]]:
    lines = (VECTORS_DIR / "vectors.tsv").read_text().splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines if line.strip()]  # type: ignore[misc]


VECTORS = _vectors()


class OneWay(io.RawIOBase):
    """A stream that can only be read forwards, in short reads (like a socket)."""

    def __init__(self, data: bytes, max_read: int = 7001) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._max = max_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *args: Any) -> int:
        raise AssertionError("tarsum must not seek")

    def tell(self) -> int:
        raise AssertionError("tarsum must not tell")

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._max, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def one_way(data: bytes) -> BinaryIO:
    return OneWay(data)  # type: ignore[return-value]


def make_tar(entries: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT, **info: Any) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for name, content in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(content)
            ti.mode = 0o644
            ti.mtime = 1_600_000_000
            ti.uname = "someone"
            for key, value in info.items():
                if key == "pax_headers":
                    ti.pax_headers = dict(value)
                else:
                    setattr(ti, key, value)
            tar.addfile(ti, io.BytesIO(content))
    return raw.getvalue()


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


# --- the reference vectors -------------------------------------------------------------


@pytest.mark.parametrize(("name", "sha", "v0", "v1"), VECTORS, ids=[v[0] for v in VECTORS])
def test_reference_vectors(name: str, sha: str, v0: str, v1: str) -> None:
    data = (VECTORS_DIR / name).read_bytes()
    assert tarsum(one_way(data), "v0") == v0
    assert tarsum(one_way(data), "v1") == v1
    assert tarsum(one_way(data)) == v1  # v1 is the default
    assert tarsum_file(str(VECTORS_DIR / name), "v0") == v0


@pytest.mark.parametrize(("name", "sha", "v0", "v1"), VECTORS, ids=[v[0] for v in VECTORS])
@pytest.mark.parametrize("compress", [gzip.compress, zstd], ids=["gzip", "zstd"])
def test_reference_vectors_compressed(name: str, sha: str, v0: str, v1: str, compress: Any) -> None:
    data = (VECTORS_DIR / name).read_bytes()
    blob = compress(data)
    assert tarsum(one_way(blob), "v0") == v0
    sums = layer_sums(one_way(blob))
    assert sums == LayerSums(tarsum=v1, diff_id=sha, size=len(blob))
    assert open_layer(one_way(blob)).read() == data


def test_layer_sums_of_a_plain_tar() -> None:
    name, sha, _, v1 = VECTORS[0]
    data = (VECTORS_DIR / name).read_bytes()
    assert layer_sums(one_way(data)) == LayerSums(tarsum=v1, diff_id=sha, size=len(data))
    assert layer_sums(one_way(data)).to_json() == {"tarsum": v1, "diff_id": sha, "size": len(data)}


def test_collisions_all_differ() -> None:
    names = [v[0] for v in VECTORS if v[0].startswith("collision-")]
    assert len(names) == 4
    for version in ("v0", "v1"):
        sums = {tarsum_file(str(VECTORS_DIR / n), version) for n in names}
        assert len(sums) == 4, version


def test_xattrs_count_in_v1_only() -> None:
    plain = make_tar([("file", b"x")])
    xattr = make_tar([("file", b"x")], pax_headers={"SCHILY.xattr.user.k": "v"})
    other = make_tar([("file", b"x")], pax_headers={"SCHILY.xattr.user.k": "w"})
    assert tarsum(io.BytesIO(plain), "v0") == tarsum(io.BytesIO(xattr), "v0")
    assert len({tarsum(io.BytesIO(t), "v1") for t in (plain, xattr, other)}) == 3


def test_mtime_counts_in_v0_only() -> None:
    a = make_tar([("f", b"1")], mtime=1)
    b = make_tar([("f", b"1")], mtime=2)
    assert tarsum(io.BytesIO(a), "v0") != tarsum(io.BytesIO(b), "v0")
    assert tarsum(io.BytesIO(a), "v1") == tarsum(io.BytesIO(b), "v1")


def test_single_entry_by_the_spec() -> None:
    """One regular file, checked against the spec's recipe computed by hand."""
    data = make_tar([("hello.txt", b"hi\n")], fmt=tarfile.USTAR_FORMAT, uid=1, gid=2, mtime=7)
    headers = (
        b"namehello.txt" + b"mode420" + b"uid1" + b"gid2" + b"size3" + b"typeflag0"
        b"linkname" + b"uname" + b"gname" + b"devmajor0" + b"devminor0"
    )
    entry = hashlib.sha256(headers + b"hi\n").hexdigest()
    assert tarsum(io.BytesIO(data)) == "tarsum.v1+sha256:" + hashlib.sha256(entry.encode()).hexdigest()
    entry_v0 = hashlib.sha256(headers.replace(b"size3", b"size3mtime7") + b"hi\n").hexdigest()
    assert tarsum(io.BytesIO(data), "v0") == "tarsum+sha256:" + hashlib.sha256(entry_v0.encode()).hexdigest()


def test_entry_order_does_not_matter_for_distinct_paths() -> None:
    a = make_tar([("a", b"1"), ("b", b"2"), ("c/d", b"3")])
    b = make_tar([("c/d", b"3"), ("a", b"1"), ("b", b"2")])
    assert tarsum(io.BytesIO(a)) == tarsum(io.BytesIO(b))


def test_content_change_changes_the_sum() -> None:
    a = make_tar([("a", b"1"), ("b", b"2")])
    b = make_tar([("a", b"1"), ("b", b"3")])
    assert tarsum(io.BytesIO(a)) != tarsum(io.BytesIO(b))


def test_long_names_are_the_same_in_every_tar_format() -> None:
    long_name = "dir/" + "d" * 120 + "/" + "f" * 90
    sums = {
        tarsum(io.BytesIO(make_tar([(long_name, b"content")], fmt=fmt)))
        for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
    }
    assert len(sums) == 1
    # ... and differ from a short name.
    assert tarsum(io.BytesIO(make_tar([("short", b"content")]))) not in sums


def test_old_style_regular_type_is_normalised() -> None:
    """A '\\0' type flag means a regular file (or a directory, with a trailing slash)."""
    modern = make_tar([("f", b"data")], fmt=tarfile.USTAR_FORMAT)
    legacy = bytearray(modern)
    legacy[156] = 0
    legacy[148:156] = b"%06o\0 " % (sum(legacy[:148]) + 8 * 32 + sum(legacy[156:512]))
    assert tarsum(io.BytesIO(bytes(legacy))) == tarsum(io.BytesIO(modern))


def test_empty_archive_and_empty_stream() -> None:
    empty_tar = make_tar([])
    assert tarsum(io.BytesIO(empty_tar)) == f"tarsum.v1+sha256:{EMPTY_SHA256}"
    assert tarsum(io.BytesIO(b""), "v0") == f"tarsum+sha256:{EMPTY_SHA256}"
    assert (
        layer_sums(io.BytesIO(gzip.compress(empty_tar))).diff_id
        == "sha256:" + hashlib.sha256(empty_tar).hexdigest()
    )


def test_other_algorithms_and_bad_arguments() -> None:
    data = make_tar([("a", b"1")])
    assert tarsum(io.BytesIO(data), algorithm="sha512").startswith("tarsum.v1+sha512:")
    with pytest.raises(ValueError):
        tarsum(io.BytesIO(data), version="v9")
    with pytest.raises(ValueError):
        tarsum(io.BytesIO(data), algorithm="crc32")


def test_multi_member_gzip_and_multi_frame_zstd() -> None:
    data = make_tar([("a", b"1" * 5000), ("b", b"2" * 5000)])
    expected = tarsum(io.BytesIO(data))
    assert tarsum(io.BytesIO(gzip.compress(data[:3000]) + gzip.compress(data[3000:]))) == expected
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"xyz"
    frames = zstd(data[:3000]) + skippable + zstd(data[3000:])
    assert layer_sums(io.BytesIO(frames)) == replace(layer_sums(io.BytesIO(data)), size=len(frames))


# --- bad input -----------------------------------------------------------------------


def _gzip_cut(data: bytes) -> bytes:
    return gzip.compress(data)[:-10]


BAD = {
    "not-a-tar": b"hello, this is not a tar archive at all" * 100,
    "short-garbage": b"garbage",
    "truncated-tar-header": make_tar([("a", b"x" * 2000)])[:300],
    "truncated-tar-body": make_tar([("a", b"x" * 2000)])[:1500],
    "corrupt-header-checksum": b"\xff" + make_tar([("a", b"x")])[1:],
    "zero-block-then-data": bytes(512) + make_tar([("a", b"x")]),
    "truncated-gzip": _gzip_cut(make_tar([("a", b"x" * 100_000)])),
    "corrupt-gzip": gzip.compress(make_tar([("a", b"x")]))[:20] + b"\x00" * 40,
    "gzip-then-garbage": gzip.compress(make_tar([("a", b"x")])) + b"trailing junk",
    "gzip-of-not-a-tar": gzip.compress(b"plain text, not a tar" * 50),
    "truncated-zstd": zstd(make_tar([("a", bytes(range(256)) * 400)]))[:-5],
    "zstd-then-garbage": zstd(make_tar([("a", b"x")])) + b"trailing junk",
    "bad-pax-record": make_tar([("a", b"x")], pax_headers={"comment": "x"}).replace(
        b"comment=x", b"commentXx"
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_layer_invalid(name: str) -> None:
    with pytest.raises(LayerInvalid):
        layer_sums(one_way(BAD[name]))
    with pytest.raises(LayerInvalid):
        tarsum(io.BytesIO(BAD[name]))


def test_storage_errors_pass_through_untranslated() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        layer_sums(Broken())  # type: ignore[arg-type]


# --- streaming -------------------------------------------------------------------------


class GeneratedTar(io.RawIOBase):
    """A one-entry tar of `size` bytes produced on the fly (never held in memory)."""

    def __init__(self, size: int) -> None:
        header = io.BytesIO()
        with tarfile.open(fileobj=header, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            ti = tarfile.TarInfo("big.bin")
            ti.size = size
            tar.addfile(ti)  # header only; tarfile pads with the end-of-archive blocks
        head = header.getvalue()[:512]
        self._parts: Iterator[bytes] = self._gen(head, size)
        self._buf = memoryview(b"")
        self.hasher = hashlib.sha256()

    @staticmethod
    def _gen(head: bytes, size: int) -> Iterator[bytes]:
        yield head
        block = bytes(range(256)) * 4096  # 1 MiB
        left = size
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n
        yield bytes(-size % 512 + 1024)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._buf:
            self._buf = memoryview(next(self._parts, b""))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self.hasher.update(self._buf[:n])
        self._buf = self._buf[n:]
        return n


def test_large_layer_streams_in_constant_memory() -> None:
    source = GeneratedTar(48 << 20)
    blob = io.BufferedReader(source)
    tracemalloc.start()
    try:
        sums = layer_sums(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, f"peak {peak} bytes for a 48 MiB layer"
    assert sums.diff_id == "sha256:" + source.hasher.hexdigest()
    assert sums.size == (48 << 20) + 512 + 1024


def test_gzip_bomb_does_not_inflate_in_memory() -> None:
    tar_head = make_tar([("zeros", b"")])[:512]
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    # An empty entry, then 96 MiB of zeros (end-of-archive blocks and padding) in a
    # gzip member of a few hundred KiB: all of it is hashed into the diff_id, none of it held.
    parts = [compressor.compress(tar_head)]
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(96)]
    parts.append(compressor.flush())
    blob = b"".join(parts)
    tracemalloc.start()
    try:
        sums = layer_sums(io.BytesIO(blob))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert sums.size == len(blob)
