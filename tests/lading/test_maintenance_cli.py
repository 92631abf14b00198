"""`lading gc`, `lading scrub` and `lading purge-uploads` on a small filesystem registry:
the summary a person reads, --json, --dry-run changing nothing, the exit status, and the
progress display (a redrawn line on a terminal, rare plain lines elsewhere)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lading import cli
from lading.reporting import ProgressDisplay, human_bytes
from pipeline.formats.digest import Digest
from pipeline.manifest_commit import delete_manifest
from pipeline.registry import Registry
from pipeline.storage import paths
from tests.lading.procs import lading_command, process_env
from tests.pipeline.maintenance.helpers import Image, age, age_blobs, flip_byte, fs_registry, push_image
from tests.support.lading import lading_embedded

WEEK = 7 * 24 * 3600


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LADING_CONFIG", "REGISTRY_CONFIGURATION_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", str(tmp_path))
    monkeypatch.setenv("REGISTRY_STORAGE_DELETE_ENABLED", "true")
    return tmp_path


@pytest.fixture
def registry(root: Path) -> Registry:
    return fs_registry(str(root))


def unreferenced_image(registry: Registry) -> Image:
    """An image in repository `old` whose manifest was deleted, blobs older than any grace."""
    push_image(registry, "app", "v1", layers=[os.urandom(4000)])
    old = push_image(registry, "old", "v1", layers=[os.urandom(6000)])
    delete_manifest(registry, "old", str(old.digest))
    age_blobs(registry, 2 * 24 * 3600)
    return old


def stored(registry: Registry, digest: Digest) -> bool:
    return registry.driver.exists(paths.blob_data(digest))


def test_gc_dry_run_then_gc(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    old = unreferenced_image(registry)
    size = len(old.manifest) + len(old.config) + len(old.layers[0])
    code, out, err = run(capsys, "gc", "--dry-run")
    assert code == 0, err
    assert out.startswith(f"Garbage collection (dry run): would delete 3 blobs ({human_bytes(size)})")
    assert "nothing was changed" in out and str(Digest.of(old.layers[0])) in out
    assert all(stored(registry, d) for d in old.all_digests())

    code, out, err = run(capsys, "gc")
    assert code == 0, err
    assert out.startswith(f"Garbage collection: deleted 3 blobs ({human_bytes(size)}) and 0 manifests")
    assert "examined 6 blobs in 2 repositories; 3 in use" in out
    assert not any(stored(registry, d) for d in old.all_digests())
    assert "gc:" not in err  # a quick run draws no plain progress lines

    code, out, _ = run(capsys, "gc", "--json")
    result = json.loads(out)
    assert code == 0 and result["blobs_deleted"] == 0 and result["blobs_examined"] == 3


def test_scrub_reports_corruption_with_what_it_breaks(
    capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    image = push_image(registry, "team/app", "v1", layers=[os.urandom(5000), os.urandom(3000)])
    bad = Digest.of(image.layers[0])
    flip_byte(registry, bad)

    code, out, _ = run(capsys, "scrub", "--dry-run")
    assert code == 1  # trouble found
    assert out.startswith("Scrub (dry run): checked 4 blobs")
    assert "1 corrupt blob" in out and f"{bad} ({human_bytes(5000)}) - tags: team/app:v1" in out
    assert "Dry run: nothing was quarantined or recorded." in out
    assert not registry.blobs.is_quarantined(bad)

    code, out, _ = run(capsys, "scrub")
    assert code == 1 and "quarantined 1" in out
    assert registry.blobs.is_quarantined(bad)

    code, out, _ = run(capsys, "scrub", "--json")
    result = json.loads(out)
    assert code == 1 and [c["digest"] for c in result["corrupt"]] == [str(bad)]
    assert result["corrupt"][0]["tags"] == ["team/app:v1"]


def test_scrub_of_a_healthy_registry(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    push_image(registry, "app", "v1")
    code, out, _ = run(capsys, "scrub")
    assert code == 0 and out.startswith("Scrub: checked 3 blobs") and "No problems found." in out


def test_purge_uploads_dry_run_then_purge(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    stale = registry.uploads.create("app").upload_id
    registry.uploads.append("app", stale, b"x" * 2048)
    registry.driver.put_content(paths.upload_started_at("app", stale), b"2020-01-01T00:00:00Z")
    age(registry, paths.upload_data("app", stale), 2 * WEEK)
    live = registry.uploads.create("app").upload_id

    code, out, _ = run(capsys, "purge-uploads", "--dry-run")
    assert code == 0
    assert out.startswith("Upload purge (dry run): would delete 1 abandoned upload session (2.0 KiB)")
    assert "kept 1 still active" in out and f"app {stale} (2.0 KiB, started 2020-01-01T00:00:00Z)" in out
    assert registry.uploads.status("app", stale).size == 2048

    code, out, _ = run(capsys, "purge-uploads")
    assert code == 0 and out.startswith("Upload purge: deleted 1 abandoned upload session (2.0 KiB)")
    assert not registry.driver.exists(paths.upload_dir("app", stale))
    assert registry.uploads.status("app", live).size == 0


def test_purge_uploads_reports_what_dead_writers_left(
    capsys: pytest.CaptureFixture[str], registry: Registry, root: Path
) -> None:
    dead = registry.driver.writer("/docker/registry/v2/blobs/x/data")
    dead.write(b"d" * (2 << 20))  # flushed to its temporary file; then the process dies
    (temp,) = [
        os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.startswith(".lading-tmp-")
    ]
    when = os.stat(temp).st_mtime - 2 * WEEK
    os.utime(temp, (when, when))
    code, out, _ = run(capsys, "purge-uploads", "--dry-run")
    assert code == 0 and "Storage: would delete 1 unfinished write of crashed writers (2.0 MiB)." in out
    assert os.path.exists(temp)
    code, out, _ = run(capsys, "purge-uploads")
    assert code == 0 and "Storage: deleted 1 unfinished write of crashed writers (2.0 MiB)." in out
    assert not os.path.exists(temp)
    del dead


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_at_most_one_line_per_second() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = ProgressDisplay("scrub", stream, tty=False, clock=clock)
    for done in range(1, 8):  # 7 blobs in 0.875 s: nothing to say yet
        clock.now += 0.125
        progress(done, None)
    assert stream.getvalue() == ""
    for done in range(8, 29):  # until 3.5 s
        clock.now += 0.125
        progress(done, None)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "scrub: 8 blobs checked (1s, 8.0/s)",
        "scrub: 16 blobs checked (2s, 8.0/s)",
        "scrub: 24 blobs checked (3s, 8.0/s)",
    ]
    progress.close()
    assert len(stream.getvalue().splitlines()) == 3


def test_terminal_progress_redraws_one_line_with_a_bar_when_the_total_is_known() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = ProgressDisplay("gc", stream, tty=True, clock=clock)
    progress(1, None)
    for done in range(1, 11):
        clock.now += 0.0625
        progress(done, 10)
    progress.close()
    text = stream.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")  # one line, ended once
    frames = [frame.removesuffix("\x1b[K") for frame in text[:-1].split("\r")[1:]]
    assert frames[0] == "gc: 1 repositories marked (0s)"
    counts = [f.split("] ")[1].split(" ")[0] for f in frames[1:]]
    assert counts == ["2/10", "4/10", "6/10", "8/10", "10/10", "10/10"]
    assert frames[2] == "gc: [" + "#" * 12 + "." * 18 + "] 4/10 candidate blobs swept  40% 0s"
    assert frames[-1] == "gc: [" + "#" * 30 + "] 10/10 candidate blobs swept 100% 1s"


def test_a_real_terminal_sees_the_progress_line_and_the_summary(registry: Registry, root: Path) -> None:
    push_image(registry, "app", "v1")
    env = process_env(REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(root))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*lading_command(), "scrub"], env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the terminal closed: the process is done
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0, output
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = output.decode()
    assert "\rscrub: 3 blobs checked" in text and "\x1b[K" in text
    assert "Scrub: checked 3 blobs" in text and "No problems found." in text


def maintenance_metrics(host: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{host}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("lading_scrub_", "lading_gc_"))
    }


def test_the_servers_metrics_count_runs_made_by_other_processes(registry: Registry, root: Path) -> None:
    image = push_image(registry, "app", "v1", layers=[os.urandom(7000)])
    total = len(image.manifest) + len(image.config) + 7000
    with lading_embedded(root, root.parent) as host:
        assert maintenance_metrics(host) == {
            "lading_scrub_blobs_total": 0,
            "lading_scrub_bytes_total": 0,
            "lading_scrub_corrupt_blobs_total": 0,
            "lading_gc_blobs_total": 0,
            "lading_gc_bytes_total": 0,
        }
        env = process_env(REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(root))
        for command in ("scrub", "gc"):
            done = subprocess.run([*lading_command(), command], env=env, capture_output=True, timeout=120)
            assert done.returncode == 0, done.stderr
        after = maintenance_metrics(host)
    assert after["lading_scrub_blobs_total"] == 3 and after["lading_scrub_bytes_total"] == total
    assert after["lading_scrub_corrupt_blobs_total"] == 0 and after["lading_gc_blobs_total"] == 0


def _bytes_on_disk(root: Path) -> int:
    blobs = root / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("data"))


def test_scrubs_bytes_checked_are_the_bytes_stored_even_with_a_corrupt_blob(
    capsys: pytest.CaptureFixture[str], registry: Registry, root: Path
) -> None:
    # A digest mismatch is re-read once (a push may have replaced the bytes meanwhile); the
    # second read used to be counted too, so the figure exceeded what is on disk.
    image = push_image(registry, "team/app", "v1", layers=[os.urandom(500_000), os.urandom(300_000)])
    flip_byte(registry, Digest.of(image.layers[0]))
    code, out, _ = run(capsys, "scrub", "--dry-run", "--json")
    result = json.loads(out)
    assert code == 1 and result["checked"] == 4
    assert result["bytes"] == _bytes_on_disk(root)
    code, out, _ = run(capsys, "scrub", "--dry-run")
    assert out.startswith(f"Scrub (dry run): checked 4 blobs ({human_bytes(_bytes_on_disk(root))})")


def test_gc_dry_run_says_what_the_grace_period_holds_back_and_until_when(
    capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    old = unreferenced_image(registry)  # aged: collectable
    fresh = push_image(registry, "new", "v1", layers=[os.urandom(7000)])
    delete_manifest(registry, "new", str(fresh.digest))  # unreferenced, but pushed just now
    newest = max(registry.driver.stat(paths.blob_data(d)).modified.timestamp() for d in fresh.all_digests())
    code, out, err = run(capsys, "gc", "--dry-run")
    assert code == 0, err
    size = len(fresh.manifest) + len(fresh.config) + len(fresh.layers[0])
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(newest + 3600))
    assert (
        f"  3 unreferenced blobs ({human_bytes(size)}) held back by the 1h grace period "
        f"(lading.maintenance.gc.grace), the last until {until}"
    ) in out.splitlines(), out
    assert out.startswith("Garbage collection (dry run): would delete 3 blobs")  # only `old`'s
    code, out, _ = run(capsys, "gc", "--dry-run", "--json")
    held = json.loads(out)["held_by_grace"]
    assert (held["blobs"], held["bytes"], held["grace_seconds"]) == (3, size, 3600.0)
    assert all(stored(registry, d) for d in (*old.all_digests(), *fresh.all_digests()))
