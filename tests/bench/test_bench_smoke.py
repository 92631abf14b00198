"""`python -m bench` runs end to end against CNCF distribution and Lading (embedded), with
every scenario shrunk to a handful of tiny operations (`--smoke`). No timing is asserted:
only that every scenario ran against both registries without a failed request and that the
report and its JSON carry the numbers a reader looks for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.scenarios import PROFILES, SCENARIOS

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("distribution", "lading-embedded")


def test_smoke_run_covers_every_scenario_on_both_registries(tmp_path: Path) -> None:
    assert shutil.which("docker-registry"), "docker-registry (CNCF distribution 2.8.2) is not installed"
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--targets", ",".join(TARGETS), "--json", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    data = json.loads(out.read_text())
    results = {(r["scenario"], r["target"]): r for r in data["results"]}
    smoke = PROFILES["smoke"]
    for name in SCENARIOS:
        for target in TARGETS:
            r = results[(name, target)]
            assert r["errors"] == 0, (name, target, r["first_error"])
            assert r["ops"] == smoke.counts[name], (name, target)
            assert r["throughput"] > 0 and r["p99_ms"] > 0
            if r["unit"] == "MB/s":
                assert r["bytes"] >= r["ops"] * smoke.big
        assert results[(name, "distribution")]["ratio_vs_distribution"] == 1.0
        assert results[(name, "lading-embedded")]["ratio_vs_distribution"] > 0

    machine = data["machine"]
    assert machine["sha256_mb_s"] > 0 and machine["loopback_get_req_s"] > 0
    assert machine["disk_write_fsync_mb_s"] > 0 and machine["disk_read_mb_s"] > 0
    # The image scenarios report the manifest PUT latency on its own.
    assert results[("push-image-c8", "lading-embedded")]["extra_p99_ms"]["manifest_put"] > 0

    report = done.stdout
    assert "Machine limits" in report and "Throughput ratio Lading / distribution" in report
    assert "Server CPU by process kind" in report
    assert "api" in results[("push-small-c8", "lading-embedded")]["cpu_by_kind"]
    for name in SCENARIOS:
        assert name in report
    # Every server the run started is gone (storage and logs stay in --workdir).
    for pids in data["context"]["pids"].values():
        for pid in pids.values():
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
