"""Drive `skopeo`, a real registry client, against loopback registries."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any


def skopeo_binary() -> str:
    path = shutil.which("skopeo")
    assert path, "skopeo is not installed: apt-get install skopeo"
    return path


def skopeo(*args: str, timeout: float = 120.0, creds: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [skopeo_binary(), "--insecure-policy", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def copy(source: str, dest: str, *extra: str) -> None:
    """`skopeo copy` over plain HTTP on loopback (no TLS verification either way)."""
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra, source, dest)


def inspect(ref: str, *extra: str) -> dict[str, Any]:
    out = skopeo("inspect", "--tls-verify=false", *extra, ref).stdout
    return dict(json.loads(out))


def raw_manifest(ref: str) -> bytes:
    return skopeo("inspect", "--raw", "--tls-verify=false", ref).stdout.encode()
