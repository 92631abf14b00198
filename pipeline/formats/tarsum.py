"""TarSum — the legacy Docker layer checksum — and the one-pass layer sums built on it.

TarSum hashes each tar entry on its own (selected header fields, then the entry's body),
sorts the per-entry hex digests (entries for the same path keep their archive order), and
hashes their concatenation. Version 0 (`tarsum`) includes the mtime; version 1
(`tarsum.v1`) drops it and adds the entry's extended attributes (PAX `SCHILY.xattr.*`
records) sorted by name. User and group names are hashed as empty, as the reference has
done since Go 1.10 to keep older sums valid. The reference implementation
reads the archive with Go's `archive/tar`, so this module parses tar headers itself,
following that reader's rules (USTAR prefix joined to the name, GNU long names, PAX
overrides, `'\\0'` type normalised to `'0'`/`'5'`, header-only types carrying no body,
global PAX headers reported as entries). Everything is bytes, never decoded text, exactly
as Go hashes its strings.

Everything streams in constant memory: an uncompressed, gzip- or zstd-compressed layer is
read once, front to back, and never seeked. `layer_sums` computes, in that same single
pass, the TarSum, the layer's `diff_id` (sha256 of the uncompressed tar) and the
compressed size. Input that is not a (possibly compressed) tar raises `LayerInvalid`.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import zstandard

from pipeline.errors import LayerInvalid

VERSION_PREFIXES: dict[str, str] = {"v0": "tarsum", "v1": "tarsum.v1"}
ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")

_BLOCK = 512
_CHUNK = 1 << 20
_MAX_SPECIAL = 1 << 20  # biggest PAX / GNU long-name body accepted (Go's limit too)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(rb"-?[0-9]+")
# Go's `time.Time{}.Unix()`: the mtime a global PAX header entry is hashed with (v0).
_ZERO_TIME_UNIX = -62135596800
# Types whose body is absent whatever the size field says (Go's isHeaderOnlyType).
_HEADER_ONLY = frozenset(b"123456")


# --- reading helpers ------------------------------------------------------------------


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Exactly `n` bytes, or fewer only at end of stream."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _drain(stream: BinaryIO) -> None:
    while stream.read(_CHUNK):
        pass


class _ChunkReader(io.RawIOBase):
    """A readable raw stream fed by a `fill()` callback returning the next chunk (b"" at end)."""

    def __init__(self, fill: Callable[[], bytes]) -> None:
        super().__init__()
        self._fill = fill
        self._buf = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._done:
            chunk = self._fill()
            if chunk:
                self._buf = memoryview(chunk)
            else:
                self._done = True
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Counting(io.RawIOBase):
    """Passes reads through, counting the bytes and showing each chunk to `observe`."""

    def __init__(self, inner: BinaryIO, observe: Callable[[bytes], None] | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._observe = observe
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.count += len(data)
        if self._observe is not None and data:
            self._observe(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `inner` — lets us sniff magic bytes without seeking."""

    def __init__(self, head: bytes, inner: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._inner = inner

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._inner.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._inner.read(size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


# --- decompression --------------------------------------------------------------------


def _gunzip(raw: BinaryIO) -> BinaryIO:
    """Stream-decompress gzip (every member, as Go's reader does); truncation or trailing
    garbage is LayerInvalid. Output per step is bounded, so a gzip bomb costs no memory."""
    state: dict[str, Any] = {"d": zlib.decompressobj(31), "pending": b"", "eof": False}

    def fill() -> bytes:
        d = state["d"]
        while True:
            if d.unconsumed_tail:
                out = _inflate(d, d.unconsumed_tail)
            else:
                if state["pending"]:
                    data, state["pending"] = state["pending"], b""
                elif state["eof"]:
                    data = b""
                else:
                    data = raw.read(_CHUNK // 4)
                    if not data:
                        state["eof"] = True
                if not data:
                    if d.eof:
                        return b""
                    raise LayerInvalid("truncated gzip stream")
                if d.eof:
                    # A new gzip member must follow the previous one.
                    if data[:2] != _GZIP_MAGIC[: len(data)]:
                        raise LayerInvalid("garbage after the end of the gzip stream")
                    d = state["d"] = zlib.decompressobj(31)
                out = _inflate(d, data)
            if d.eof and d.unused_data:
                state["pending"] = d.unused_data + state["pending"]
            if out:
                return out

    return io.BufferedReader(_ChunkReader(fill), _CHUNK)


def _inflate(d: Any, data: bytes) -> bytes:
    try:
        out: bytes = d.decompress(data, _CHUNK)
    except zlib.error as exc:
        raise LayerInvalid(f"corrupt gzip stream: {exc}") from exc
    return out


class _ZstdFrames:
    """Walks zstd frame and block headers over the compressed bytes (no decompression),
    so the end of input can be checked to fall on a frame boundary: the zstandard stream
    reader silently returns short output for a truncated frame."""

    _MAGIC, _FHD, _BLOCK, _SKIPSIZE = range(4)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._pending = b""
        self._skip = 0
        self._after_skip = self._MAGIC
        self._checksum = False
        self.frames = 0
        self.invalid = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self.invalid:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            take = data[i : i + self._need - len(self._pending)]
            i += len(take)
            self._pending += take
            if len(self._pending) == self._need:
                field_bytes, self._pending = self._pending, b""
                self._on_field(field_bytes)

    def _enter(self, state: int) -> None:
        self._state = state
        self._need = {self._MAGIC: 4, self._FHD: 1, self._BLOCK: 3, self._SKIPSIZE: 4}[state]

    def _skip_then(self, count: int, state: int) -> None:
        if count:
            self._skip, self._after_skip = count, state
        else:
            self._enter(state)

    def _on_field(self, b: bytes) -> None:
        if self._state == self._MAGIC:
            magic = int.from_bytes(b, "little")
            if magic == 0xFD2FB528:
                self._enter(self._FHD)
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._enter(self._SKIPSIZE)
            else:
                self.invalid = True
        elif self._state == self._SKIPSIZE:
            self._skip_then(int.from_bytes(b, "little"), self._MAGIC)
        elif self._state == self._FHD:
            fhd = b[0]
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs
            self._skip_then(rest, self._BLOCK)
        else:
            header = int.from_bytes(b, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:
                self.invalid = True
                return
            body = 1 if kind == 1 else size
            if last:
                self.frames += 1
                self._skip_then(body + (4 if self._checksum else 0), self._MAGIC)
            else:
                self._skip_then(body, self._BLOCK)

    def complete(self) -> bool:
        return (
            not self.invalid
            and self.frames > 0
            and self._state == self._MAGIC
            and not self._pending
            and not self._skip
        )


def _unzstd(raw: BinaryIO) -> BinaryIO:
    frames = _ZstdFrames()
    observed = cast(BinaryIO, _Counting(raw, frames.feed))
    reader = zstandard.ZstdDecompressor().stream_reader(observed, read_across_frames=True, closefd=False)

    def fill() -> bytes:
        try:
            out: bytes = reader.read(_CHUNK)
        except zstandard.ZstdError as exc:
            raise LayerInvalid(f"corrupt zstd stream: {exc}") from exc
        if frames.invalid:
            raise LayerInvalid("corrupt zstd stream")
        if not out:
            _drain(observed)  # trailing bytes the decoder never asked for
            if not frames.complete():
                raise LayerInvalid("truncated zstd stream")
        return out

    return io.BufferedReader(_ChunkReader(fill), _CHUNK)


def open_layer(stream: BinaryIO) -> BinaryIO:
    """The uncompressed tar inside `stream`: gunzipped, un-zstd'd, or `stream` itself
    (behind a read-only wrapper) when it starts with neither magic number."""
    head = _read_exact(stream, 4)
    joined = cast(BinaryIO, io.BufferedReader(_Prefixed(head, stream), _CHUNK))
    if head.startswith(_GZIP_MAGIC):
        return _gunzip(joined)
    if head == _ZSTD_MAGIC:
        return _unzstd(joined)
    return joined


# --- tar headers, the way Go's archive/tar reads them ---------------------------------


@dataclass
class TarHeader:
    """The fields TarSum hashes, as raw bytes / integers."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: int
    linkname: bytes
    uname: bytes
    gname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def _cstring(b: bytes) -> bytes:
    end = b.find(b"\0")
    return b if end < 0 else b[:end]


def _numeric(b: bytes) -> int:
    if b and b[0] & 0x80:
        # base-256: big-endian two's complement with the marker bit cleared
        negative = bool(b[0] & 0x40)
        value = int.from_bytes(bytes([b[0] & 0x7F]) + b[1:], "big")
        if negative:
            value -= 1 << (8 * len(b) - 1)
        if not -(1 << 63) <= value < (1 << 63):
            raise LayerInvalid("tar numeric field overflows")
        return value
    text = _cstring(b.strip(b" \0"))
    if not text:
        return 0
    if not _OCTAL.fullmatch(text) or int(text, 8) >= 1 << 63:
        raise LayerInvalid(f"malformed tar numeric field {b!r}")
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _numeric(block[148:156])
    except LayerInvalid:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for c in block[:148] + block[156:] if c >= 0x80)
    return stored in (unsigned, signed)


def _parse_pax(body: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    rest = body
    while rest:
        length_text, sep, _ = rest.partition(b" ")
        if not sep or not re.fullmatch(rb"[0-9]+", length_text):
            raise LayerInvalid("malformed PAX record")
        n = int(length_text)
        if n < 5 or n > len(rest) or n <= len(length_text) + 1:
            raise LayerInvalid("malformed PAX record length")
        record, rest = rest[len(length_text) + 1 : n], rest[n:]
        if not record.endswith(b"\n"):
            raise LayerInvalid("PAX record missing its newline")
        key, eq, value = record[:-1].partition(b"=")
        if not eq or not key:
            raise LayerInvalid("PAX record without a key")
        if key.startswith(b"GNU.sparse."):
            raise LayerInvalid("sparse tar entries are not supported")
        records[key] = value
    return records


def _pax_int(value: bytes) -> int:
    if not _DECIMAL.fullmatch(value):
        raise LayerInvalid(f"malformed PAX number {value!r}")
    return int(value)


def _pax_seconds(value: bytes) -> int:
    """Whole seconds (floored, as Go's Time.Unix) of a PAX `sec[.frac]` timestamp."""
    whole, dot, frac = value.partition(b".")
    if not _DECIMAL.fullmatch(whole) or whole == b"-" or (dot and not frac.isdigit()):
        raise LayerInvalid(f"malformed PAX time {value!r}")
    secs = int(whole)
    if whole.startswith(b"-") and frac.strip(b"0"):
        secs -= 1
    return secs


def _merge_pax(hdr: TarHeader, records: dict[bytes, bytes]) -> None:
    for key, value in records.items():
        if not value:
            continue  # an empty value keeps the header's own field (Go does the same)
        if key == b"path":
            hdr.name = value
        elif key == b"linkpath":
            hdr.linkname = value
        elif key == b"uname":
            hdr.uname = value
        elif key == b"gname":
            hdr.gname = value
        elif key == b"uid":
            hdr.uid = _pax_int(value)
        elif key == b"gid":
            hdr.gid = _pax_int(value)
        elif key == b"size":
            hdr.size = _pax_int(value)
        elif key == b"mtime":
            hdr.mtime = _pax_seconds(value)
        elif key.startswith(b"SCHILY.xattr."):
            hdr.xattrs[key[len(b"SCHILY.xattr.") :]] = value


class TarReader:
    """Iterates a tar stream's entries front to back: `for hdr in reader: reader.body()`.

    Each entry's body must be consumed through `body()` (or is skipped automatically when
    the next entry is requested)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._remaining = 0  # unread body bytes of the current entry
        self._padding = 0

    def _block(self) -> bytes:
        return _read_exact(self._stream, _BLOCK)

    def _special_body(self, size: int) -> bytes:
        if size < 0 or size > _MAX_SPECIAL:
            raise LayerInvalid("tar extended header too large")
        data = _read_exact(self._stream, size)
        if len(data) != size:
            raise LayerInvalid("truncated tar archive")
        self._skip_bytes(-size % _BLOCK)
        return data

    def _skip_bytes(self, n: int) -> None:
        while n > 0:
            got = len(self._stream.read(min(n, _CHUNK)))
            if not got:
                raise LayerInvalid("truncated tar archive")
            n -= got

    def body(self) -> Iterator[bytes]:
        """The current entry's body in chunks."""
        while self._remaining > 0:
            data = self._stream.read(min(self._remaining, _CHUNK))
            if not data:
                raise LayerInvalid("truncated tar archive")
            self._remaining -= len(data)
            yield data
        self._skip_bytes(self._padding)
        self._padding = 0

    def __iter__(self) -> Iterator[TarHeader]:
        return self

    def __next__(self) -> TarHeader:
        self._skip_bytes(self._remaining + self._padding)
        self._remaining = self._padding = 0
        pax: dict[bytes, bytes] = {}
        long_name = long_link = b""
        while True:
            block = self._block()
            if not block:
                raise StopIteration  # end of stream on a block boundary: Go accepts it
            if len(block) != _BLOCK:
                raise LayerInvalid("truncated tar archive")
            if block == bytes(_BLOCK):
                second = self._block()
                if not second or second == bytes(_BLOCK):
                    raise StopIteration
                raise LayerInvalid("malformed tar archive: data after a zero block")
            hdr = self._parse_block(block)
            kind = hdr.typeflag
            if kind in (ord("x"), ord("g")):
                records = _parse_pax(self._special_body(hdr.size))
                if kind == ord("g"):
                    # Go hands a global header back as an entry of its own, with only
                    # the name, type and xattrs set.
                    _merge_pax(hdr, records)
                    return TarHeader(
                        hdr.name, 0, 0, 0, 0, _ZERO_TIME_UNIX, kind, b"", b"", b"", 0, 0, hdr.xattrs
                    )
                pax = records
                continue
            if kind == ord("L"):
                long_name = _cstring(self._special_body(hdr.size))
                continue
            if kind == ord("K"):
                long_link = _cstring(self._special_body(hdr.size))
                continue
            if kind == ord("S"):
                raise LayerInvalid("sparse tar entries are not supported")
            _merge_pax(hdr, pax)
            if long_name:
                hdr.name = long_name
            if long_link:
                hdr.linkname = long_link
            if kind == 0:
                hdr.typeflag = ord("5") if hdr.name.endswith(b"/") else ord("0")
            body = 0 if hdr.typeflag in _HEADER_ONLY else hdr.size
            if body < 0:
                raise LayerInvalid("negative tar entry size")
            self._remaining, self._padding = body, -body % _BLOCK
            return hdr

    @staticmethod
    def _parse_block(block: bytes) -> TarHeader:
        if not _checksum_ok(block):
            raise LayerInvalid("not a tar archive (header checksum mismatch)")
        magic, version, trailer = block[257:263], block[263:265], block[508:512]
        hdr = TarHeader(
            name=_cstring(block[0:100]),
            mode=_numeric(block[100:108]),
            uid=_numeric(block[108:116]),
            gid=_numeric(block[116:124]),
            size=_numeric(block[124:136]),
            mtime=_numeric(block[136:148]),
            typeflag=block[156],
            linkname=_cstring(block[157:257]),
            uname=b"",
            gname=b"",
            devmajor=0,
            devminor=0,
        )
        gnu = magic == b"ustar " and version == b" \0"
        if magic == b"ustar\0" or gnu:
            hdr.uname = _cstring(block[265:297])
            hdr.gname = _cstring(block[297:329])
            hdr.devmajor = _numeric(block[329:337])
            hdr.devminor = _numeric(block[337:345])
            if not gnu:
                star = trailer == b"tar\0"
                prefix = _cstring(block[345:476] if star else block[345:500])
                if prefix:
                    hdr.name = prefix + b"/" + hdr.name
        return hdr


# --- TarSum ---------------------------------------------------------------------------


def _select_headers(hdr: TarHeader, version: str) -> bytes:
    fields: list[tuple[bytes, bytes]] = [
        (b"name", hdr.name),
        (b"mode", b"%d" % hdr.mode),
        (b"uid", b"%d" % hdr.uid),
        (b"gid", b"%d" % hdr.gid),
        (b"size", b"%d" % hdr.size),
    ]
    if version == "v0":
        fields.append((b"mtime", b"%d" % hdr.mtime))
    fields += [
        (b"typeflag", bytes([hdr.typeflag])),
        (b"linkname", hdr.linkname),
        # The reference hashes user and group *names* as empty (so that sums computed
        # before Go 1.10 started reporting them stay valid); the keys are still written.
        (b"uname", b""),
        (b"gname", b""),
        (b"devmajor", b"%d" % hdr.devmajor),
        (b"devminor", b"%d" % hdr.devminor),
    ]
    if version != "v0":
        fields += sorted(hdr.xattrs.items())
    return b"".join(k + v for k, v in fields)


def _check(version: str, algorithm: str) -> None:
    if version not in VERSION_PREFIXES:
        raise ValueError(f"unknown TarSum version {version!r} (known: {', '.join(VERSION_PREFIXES)})")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported TarSum algorithm {algorithm!r}")


def _entry_key(name: bytes) -> bytes:
    """The path an entry lands on once extracted (`dev/` and `/dev` are both `dev`)."""
    return posixpath.normpath(b"/" + name).lstrip(b"/") or b"."


def _ordered_sums(entries: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Entry sums in TarSum order: by hex sum, except that entries for the same path keep
    their archive order among the places their sums sort to — so re-ordering two
    versions of one file changes the TarSum. (The reference sorts with a comparator that
    mixes both rules; this agrees with it wherever that comparator is a consistent order.)"""
    by_sum = sorted(range(len(entries)), key=lambda i: entries[i][1])
    in_archive_order: dict[bytes, deque[int]] = {}
    for i, (key, _) in enumerate(entries):
        in_archive_order.setdefault(key, deque()).append(i)
    return [entries[in_archive_order[entries[i][0]].popleft()][1] for i in by_sum]


def _tarsum_plain(tar: BinaryIO, version: str, algorithm: str) -> str:
    reader = TarReader(tar)
    entries: list[tuple[bytes, bytes]] = []  # (path, hex sum) in archive order
    for hdr in reader:
        h = hashlib.new(algorithm)
        h.update(_select_headers(hdr, version))
        for chunk in reader.body():
            h.update(chunk)
        entries.append((_entry_key(hdr.name), h.hexdigest().encode()))
    final = hashlib.new(algorithm)
    for s in _ordered_sums(entries):
        final.update(s)
    return f"{VERSION_PREFIXES[version]}+{algorithm}:{final.hexdigest()}"


def tarsum(stream: BinaryIO, version: str = "v1", algorithm: str = "sha256") -> str:
    """The TarSum of a plain, gzip- or zstd-compressed tar stream, e.g.
    `tarsum.v1+sha256:<hex>`. Raises LayerInvalid for anything that is not one."""
    _check(version, algorithm)
    plain = open_layer(stream)
    result = _tarsum_plain(plain, version, algorithm)
    _drain(plain)  # a truncated or corrupt compressed tail is still an invalid layer
    return result


@dataclass
class LayerSums:
    """What one pass over a layer blob yields."""

    tarsum: str  # tarsum.v1+sha256:<hex>
    diff_id: str  # sha256:<hex> of the uncompressed tar (the config's rootfs.diff_ids entry)
    size: int  # bytes of the blob as stored (compressed)

    def to_json(self) -> dict[str, Any]:
        return {"tarsum": self.tarsum, "diff_id": self.diff_id, "size": self.size}


class _Hashing(io.RawIOBase):
    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.hasher.update(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def layer_sums(stream: BinaryIO) -> LayerSums:
    """TarSum v1, diff_id and compressed size of a layer blob, reading it exactly once."""
    counted = _Counting(stream)
    plain = _Hashing(open_layer(cast(BinaryIO, counted)))
    ts = _tarsum_plain(cast(BinaryIO, plain), "v1", "sha256")
    _drain(cast(BinaryIO, plain))  # bytes after the end-of-archive marker belong to the diff_id
    _drain(cast(BinaryIO, counted))
    return LayerSums(tarsum=ts, diff_id="sha256:" + plain.hasher.hexdigest(), size=counted.count)


def tarsum_file(path: str, version: str = "v1", algorithm: str = "sha256") -> str:
    """TarSum of the (possibly compressed) tar file at `path`."""
    with open(path, "rb") as fh:
        return tarsum(fh, version, algorithm)
