"""Content digests (`alg:hex`) as a parsed value type, and the hashers behind them.

Only `sha256` and `sha512` are accepted, with lower-case hex of exactly the algorithm's
length — the OCI image-spec's registered algorithms. Anything else is `DigestInvalid`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pipeline.errors import DigestInvalid

HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha512": 128}
CANONICAL = "sha256"
UNSUPPORTED = "unsupported digest algorithm"
_GRAMMAR = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated digest. `str(d)` is the canonical `alg:hex` form."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `alg:hex`; raise DigestInvalid naming what is wrong."""
        if not isinstance(text, str):
            raise DigestInvalid(f"digest must be a string, got {type(text).__name__}")
        m = _GRAMMAR.fullmatch(text)
        if not m:
            raise DigestInvalid(f"malformed digest {text!r}", message="invalid digest")
        alg, hexpart = m.group(1), m.group(2)
        if alg not in HEX_LENGTHS:
            raise DigestInvalid(f"unsupported digest algorithm {alg!r}", message=UNSUPPORTED)
        if len(hexpart) != HEX_LENGTHS[alg] or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise DigestInvalid(
                f"{alg} digest needs {HEX_LENGTHS[alg]} lower-case hex characters: {text!r}",
                message="invalid digest",
            )
        return cls(alg, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = CANONICAL) -> Digest:
        """The digest of `data` under `algorithm`."""
        h = new_hasher(algorithm)
        h.update(data)
        return cls(algorithm, h.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def verify(self, data: bytes) -> bool:
        """True when `data` hashes to this digest."""
        return Digest.of(data, self.algorithm) == self


def new_hasher(algorithm: str) -> Any:
    """A fresh hashlib object for a supported algorithm."""
    if algorithm not in HEX_LENGTHS:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}", message=UNSUPPORTED)
    return hashlib.new(algorithm)
