"""Resumable SHA-256 / SHA-512: a running digest whose state can be saved and restored.

`hashlib` cannot export a hash's mid-state, so an upload's digest would otherwise have to
be recomputed over the whole blob at commit. OpenSSL's low-level `SHA256_*` / `SHA512_*`
functions (deprecated in OpenSSL 3 but still exported by libcrypto) work on a plain C
struct that can be copied byte for byte; this module drives them through `ctypes`
(which releases the GIL during each call, and hands `bytes` over without copying).

The saved state is Go's `crypto/sha256` / `crypto/sha512` `MarshalBinary` encoding — the
format of CNCF distribution's `_uploads/<id>/hashstates/<alg>/<offset>` files:

    sha256: "sha\\x03" | h[0..7] as big-endian uint32 | 64-byte block buffer | length (BE uint64)
    sha512: "sha\\x07" | h[0..7] as big-endian uint64 | 128-byte block buffer | length (BE uint64)

where the buffer holds the `length % block` bytes not yet compressed, zero-padded.

When libcrypto or its symbols are missing (or fail the self-test run at first use),
`resumable_available()` is False: `ResumableHash` still hashes (through hashlib), but
`state()` / `restore()` raise `NotImplementedError`, and callers hash whole blobs instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
import threading
from dataclasses import dataclass
from typing import Any

from pipeline.errors import DigestInvalid


class _Sha256Ctx(ctypes.Structure):
    # OpenSSL's SHA256_CTX (include/openssl/sha.h); `data` is used as a byte buffer.
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_ubyte * 64),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class _Sha512Ctx(ctypes.Structure):
    # OpenSSL's SHA512_CTX; the union of u64[16] / bytes[128] is used as a byte buffer.
    _fields_ = [
        ("h", ctypes.c_uint64 * 8),
        ("Nl", ctypes.c_uint64),
        ("Nh", ctypes.c_uint64),
        ("data", ctypes.c_ubyte * 128),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


@dataclass(frozen=True)
class _Spec:
    name: str
    ctx: type[ctypes.Structure]
    magic: bytes
    word: str  # struct code of one chaining value
    block: int
    digest_size: int
    counter_bits: int  # width of each of Nl / Nh


_SPECS: dict[str, _Spec] = {
    "sha256": _Spec("SHA256", _Sha256Ctx, b"sha\x03", "I", 64, 32, 32),
    "sha512": _Spec("SHA512", _Sha512Ctx, b"sha\x07", "Q", 128, 64, 64),
}


@dataclass
class _Funcs:
    init: Any
    update: Any
    final: Any


_loaded: dict[str, _Funcs | None] = {}
_load_lock = threading.RLock()  # re-entrant: the self-test constructs hashes while loading


def _load(algorithm: str) -> _Funcs | None:
    if algorithm in _loaded:
        return _loaded[algorithm]
    with _load_lock:
        if algorithm in _loaded:
            return _loaded[algorithm]
        return _load_locked(algorithm)


def _load_locked(algorithm: str) -> _Funcs | None:
    funcs: _Funcs | None = None
    spec = _SPECS[algorithm]
    try:
        path = ctypes.util.find_library("crypto")
        if path:
            lib = ctypes.CDLL(path)
            init = getattr(lib, f"{spec.name}_Init")
            update = getattr(lib, f"{spec.name}_Update")
            final = getattr(lib, f"{spec.name}_Final")
            init.argtypes = [ctypes.c_void_p]
            update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            init.restype = update.restype = final.restype = ctypes.c_int
            funcs = _Funcs(init, update, final)
    except (OSError, AttributeError):
        funcs = None
    _loaded[algorithm] = funcs  # provisionally, so the self-test's hashes can use it
    if funcs is not None and not _self_test(algorithm):
        _loaded[algorithm] = funcs = None
    return funcs


def _self_test(algorithm: str) -> bool:
    """The struct layout is assumed, not declared by the library: prove it before use."""
    data = bytes(range(256)) * 5
    try:
        for cut in (0, 1, 63, 64, 65, 127, 128, 200, len(data)):
            h = ResumableHash(algorithm)
            h.update(data[:cut])
            resumed = ResumableHash.restore(algorithm, h.state())
            resumed.update(data[cut:])
            if resumed.hexdigest() != hashlib.new(algorithm, data).hexdigest():
                return False
            if h.offset != cut or h.hexdigest() != hashlib.new(algorithm, data[:cut]).hexdigest():
                return False
    except (ValueError, OSError):
        return False
    return True


def resumable_available(algorithm: str = "sha256") -> bool:
    """True when `algorithm`'s running state can be saved and restored on this machine."""
    return algorithm in _SPECS and _load(algorithm) is not None


def _spec(algorithm: str) -> _Spec:
    if algorithm not in _SPECS:
        raise DigestInvalid(
            f"unsupported digest algorithm {algorithm!r}", message="unsupported digest algorithm"
        )
    return _SPECS[algorithm]


class ResumableHash:
    """A SHA-256 / SHA-512 hash whose running state can be serialised and restored."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._spec = _spec(algorithm)
        self._funcs = _load(algorithm)
        self._fallback: Any = None
        self._count = 0
        if self._funcs is None:
            self._fallback = hashlib.new(algorithm)
            self._ctx: Any = self._spec.ctx()
        else:
            self._ctx = self._spec.ctx()
            self._funcs.init(ctypes.byref(self._ctx))

    @property
    def offset(self) -> int:
        """Bytes hashed so far."""
        return self._count

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add `data`. `bytes` is passed to OpenSSL in place; a writable buffer too."""
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if not n:
            return
        if self._funcs is None:
            self._fallback.update(data)
        elif isinstance(data, bytes):
            self._funcs.update(ctypes.byref(self._ctx), data, n)
        else:
            view = memoryview(data)
            if view.readonly or not view.c_contiguous:
                self._funcs.update(ctypes.byref(self._ctx), bytes(view), n)
            else:
                buf = (ctypes.c_char * n).from_buffer(view.cast("B"))
                self._funcs.update(ctypes.byref(self._ctx), buf, n)
        self._count += n

    def digest(self) -> bytes:
        """The digest of everything so far; the running state is left untouched."""
        if self._funcs is None:
            return bytes(self._fallback.digest())
        copy = type(self._ctx).from_buffer_copy(self._ctx)
        out = ctypes.create_string_buffer(self._spec.digest_size)
        self._funcs.final(out, ctypes.byref(copy))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> ResumableHash:
        clone = ResumableHash.__new__(ResumableHash)
        clone.algorithm, clone._spec, clone._funcs, clone._count = (
            self.algorithm,
            self._spec,
            self._funcs,
            self._count,
        )
        clone._fallback = self._fallback.copy() if self._fallback is not None else None
        clone._ctx = type(self._ctx).from_buffer_copy(self._ctx)
        return clone

    def state(self) -> bytes:
        """The running state in Go's MarshalBinary encoding (see the module docstring)."""
        if self._funcs is None:
            raise NotImplementedError(f"resumable {self.algorithm} needs OpenSSL's libcrypto")
        spec, ctx = self._spec, self._ctx
        pending = self._count % spec.block
        words = struct.pack(f">8{spec.word}", *ctx.h)
        buffer = bytes(ctx.data[:pending]).ljust(spec.block, b"\0")
        return spec.magic + words + buffer + struct.pack(">Q", self._count)

    @classmethod
    def restore(cls, algorithm: str, state: bytes) -> ResumableHash:
        """A hash that continues exactly where the one that produced `state` stopped.
        Raises ValueError for a state that is not a well-formed encoding for `algorithm`."""
        spec = _spec(algorithm)
        size = len(spec.magic) + 8 * struct.calcsize(spec.word) + spec.block + 8
        if len(state) != size or not state.startswith(spec.magic):
            raise ValueError(f"not a {algorithm} hash state ({len(state)} bytes)")
        h = cls(algorithm)
        if h._funcs is None:
            raise NotImplementedError(f"resumable {algorithm} needs OpenSSL's libcrypto")
        words_end = len(spec.magic) + 8 * struct.calcsize(spec.word)
        words = struct.unpack(f">8{spec.word}", state[len(spec.magic) : words_end])
        buffer = state[words_end : words_end + spec.block]
        (length,) = struct.unpack(">Q", state[words_end + spec.block :])
        pending = length % spec.block
        ctx: Any = h._ctx
        for i, w in enumerate(words):
            ctx.h[i] = w
        bits = length * 8
        mask = (1 << spec.counter_bits) - 1
        ctx.Nl, ctx.Nh = bits & mask, bits >> spec.counter_bits
        ctypes.memmove(ctx.data, buffer[:pending], pending)
        ctx.num = pending
        ctx.md_len = spec.digest_size
        h._count = length
        return h
