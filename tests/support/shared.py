"""Where the project's shared reference data lives: `shared/` beside the repository (as CI
lays it out), else the workplace's copy."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if (candidate / "testdata").is_dir():
            return candidate
    raise AssertionError(f"shared/testdata not found beside {REPO} nor at /work/shared")
