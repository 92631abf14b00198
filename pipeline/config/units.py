"""The value syntaxes of a configuration: Go durations ("10m30s"), byte sizes ("64MiB"),
booleans as the environment spells them ("true", "off") and listen addresses
("host:port", "[::1]:port", ":port")."""

from __future__ import annotations

import re

from pipeline.errors import ConfigurationError

__all__ = [
    "parse_addr",
    "parse_bool",
    "parse_duration",
    "parse_size",
]

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string ("168h", "10m30s", "1.5h", "300ms", "0").

    Raises ValueError for anything `time.ParseDuration` would reject.
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r} (write e.g. 90s, 10m30s, 168h)")
    return sign * total


def parse_size(text: str) -> int:
    """Bytes in "64MiB", "64M", "1.5GiB" or "1024" (K/M/G/T are powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r} (write e.g. 1048576, 64MiB)")
    return int(float(match.group(1)) * 1024 ** _SIZE_POWERS[match.group(2).lower()])


def parse_bool(text: str) -> bool:
    """A boolean as an environment variable spells it ("true", "yes", "on", "1", "off", …)."""
    lowered = text.strip().lower()
    if lowered in ("true", "t", "yes", "y", "on", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_ADDR = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_addr(addr: str, key: str = "http.addr") -> tuple[str, int]:
    """(host, port) of "host:port", "[::1]:port" or ":port" (every interface, as in
    distribution). ConfigurationError naming `key` otherwise."""
    match = _ADDR.match(addr.strip())
    if not match or not 0 < int(match.group("port")) < 65536:
        raise ConfigurationError(f"{key}: expected host:port (e.g. 127.0.0.1:5000, :5000), got {addr!r}")
    return match.group("v6") or match.group("host") or "0.0.0.0", int(match.group("port"))
