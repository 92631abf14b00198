"""The `lading` command line: what a user typing commands sees."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lading import cli
from pipeline.formats.tarsum import tarsum_file
from tests.lading.procs import lading_command, process_env, running
from tests.support.net import free_port, wait_http
from tests.support.shared import shared_dir

COMMANDS = ("serve", "worker", "beat", "tarsum", "gc", "scrub", "purge-uploads", "check-config")
DEBIAN_CONFIG = Path("/etc/docker/registry/config.yml")


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's --help / --version / usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"lading {cli.version()}"


def test_version_as_a_real_process() -> None:
    result = subprocess.run(
        [*lading_command(), "--version"], env=process_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("lading ")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run_main(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: lading {command}")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys)
    assert code == 2 and "COMMAND" in err


def test_worker_options_become_celery_worker_arguments() -> None:
    args = cli.build_parser().parse_args(
        ["worker", "cfg.yml", "--queues", "ingest,verify", "--concurrency", "3", "--pool", "prefork"]
    )
    settings = cli.Settings()
    argv = cli.worker_argv(args, settings)
    assert argv[0] == "worker"
    assert argv[argv.index("--queues") + 1] == "ingest,verify"
    assert argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("--pool") + 1] == "prefork"
    assert argv[argv.index("--hostname") + 1].startswith("lading-ingest+verify-")
    default = cli.worker_argv(cli.build_parser().parse_args(["worker"]), settings)
    assert default[default.index("--queues") + 1] == "ingest,verify,maintenance,notify"
    # No options: the pool that measured fastest (python -m bench), as the README recommends.
    assert default[default.index("--pool") + 1] == "threads"


@pytest.mark.parametrize("bad", [["--pool", "gevent"], ["--concurrency", "0"], ["--concurrency", "x"]])
def test_worker_rejects_bad_options(capsys: pytest.CaptureFixture[str], bad: list[str]) -> None:
    code, _, err = run_main(capsys, "worker", *bad)
    assert code == 2 and "usage" in err


def test_worker_rejects_unknown_queue(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    code, _, err = run_main(capsys, "worker", "--queues", "ingest,bogus")
    assert code == 2 and "bogus" in err


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_need_a_broker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv("REGISTRY_CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("LADING_CONFIG", raising=False)
    monkeypatch.delenv("REGISTRY_CONFIGURATION_PATH", raising=False)
    code, _, err = run_main(capsys, command)
    assert code == 1 and "celery.broker_url" in err


def test_configuration_error_names_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("storage:\n  delete:\n    enabled: maybe\n")
    code, _, err = run_main(capsys, "check-config", str(config))
    assert code == 1 and "storage.delete.enabled" in err


def test_check_config_prints_warnings_for_distributions_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert DEBIAN_CONFIG.exists(), "docker-registry is not installed: apt-get install docker-registry"
    code, out, err = run_main(capsys, "check-config", str(DEBIAN_CONFIG))
    assert code == 0 and "configuration OK" in out
    assert "log.fields" in err and "storage.cache" not in err  # the blob cache is honoured


def test_config_path_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text("http:\n  addr: 127.0.0.1:5999\n")
    monkeypatch.setenv("LADING_CONFIG", str(config))
    code, out, _ = run_main(capsys, "check-config")
    assert code == 0 and "127.0.0.1:5999" in out


def _tar(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def test_tarsum_prints_the_same_sum_for_tar_and_tar_gz(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _tar({"a.txt": b"hello", "dir/b.bin": b"\x00" * 1000})
    plain = tmp_path / "layer.tar"
    plain.write_bytes(data)
    zipped = tmp_path / "layer.tar.gz"
    zipped.write_bytes(gzip.compress(data))
    code, out, _ = run_main(capsys, "tarsum", str(plain))
    assert code == 0 and out.strip().startswith("tarsum.v1+sha256:")
    assert out.strip() == tarsum_file(str(plain))
    code, out_gz, _ = run_main(capsys, "tarsum", str(zipped))
    assert code == 0 and out_gz == out


def test_tarsum_matches_the_reference_vector(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = shared_dir()
    line = (vectors / "testdata/tarsum/vectors.tsv").read_text().splitlines()[1]
    name, _, _, v1 = line.split("\t")
    code, out, _ = run_main(capsys, "tarsum", str(vectors / "testdata/tarsum" / name))
    assert code == 0 and out.strip() == v1


def test_tarsum_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "tarsum", str(tmp_path / "nope.tar"))
    assert code == 1 and "nope.tar" in err


def lading_failing(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lading_command(), *argv], env=process_env(**env), capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["jobs", "dead"], {}),
        (["--debug", "jobs", "dead"], {}),
        (["jobs", "dead"], {"LADING_DEBUG": "1"}),
        (["jobs", "drop", "some-id"], {}),
    ],
)
def test_unreachable_redis_is_one_line_naming_it(argv: list[str], env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    result = lading_failing(*argv, REGISTRY_CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0", **env)
    command = " ".join(a for a in argv if a != "--debug" and a != "some-id")
    lines = result.stderr.strip().splitlines()
    debug = "--debug" in argv or "LADING_DEBUG" in env
    assert result.returncode == 1 and lines, result.stderr
    assert lines[-1].startswith(f"lading: {command} failed: Redis is unreachable")
    assert f"127.0.0.1:{port}" in lines[-1]
    if debug:
        assert lines[0] == "Traceback (most recent call last):"
    else:
        assert len(lines) == 1 and "Traceback" not in result.stderr and "--debug" in lines[0]


@pytest.mark.parametrize("problem", ["no permission", "a file in the way"])
def test_unusable_root_directory_is_one_line_naming_the_path(tmp_path: Path, problem: str) -> None:
    if problem == "no permission":
        if os.geteuid() == 0:
            pytest.skip("root reads and writes through any permission bits")
        parent = tmp_path / "locked"
        parent.mkdir(mode=0)
        error = "Permission denied"
    else:
        parent = tmp_path / "file"
        parent.write_text("not a directory")
        error = "Not a directory"
    root = parent / "registry"
    for command in ("purge-uploads", "gc", "scrub"):
        result = lading_failing(command, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(root))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"lading: {command} failed: {error}: {root}/")


def test_maintenance_command_runs_the_pipeline_function(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[object, bool]] = []

    def purge_uploads(registry: object, dry_run: bool = False, progress: object = None) -> dict[str, int]:
        calls.append((registry, dry_run))
        return {"purged": 0}

    monkeypatch.setattr("pipeline.maintenance.purge_uploads", purge_uploads)
    monkeypatch.setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", str(tmp_path))
    code, out, _ = run_main(capsys, "purge-uploads", "--dry-run", "--json")
    assert code == 0 and json.loads(out) == {"purged": 0}
    assert calls and calls[0][1] is True
    assert calls[0][0].settings.storage.root == str(tmp_path)  # type: ignore[attr-defined]


def test_serve_scaled_with_broker_down_starts_and_reports_unhealthy(tmp_path: Path) -> None:
    port = free_port()
    env = process_env(
        REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}",
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
        REGISTRY_CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    with running([*lading_command(), "serve"], env, cwd=tmp_path) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc.proc)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert exc.value.code == 503
        body = json.loads(exc.value.read())
        assert body["checks"]["storage"]["ok"] and not body["checks"]["broker"]["ok"]
        # A push now cannot be committed: the client is told which service is down, and when
        # to retry, not that storage is unavailable.
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + "a" * 64,
                    "size": 2,
                },
                "layers": [],
            }
        ).encode()
        put = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/team/app/manifests/v1",
            data=manifest,
            method="PUT",
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=60)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"]
        error = json.loads(refused.value.read())["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert error["message"] == "job broker or result backend temporarily unavailable", error
        assert proc.stop() == 0, proc.output
    assert "scaled mode" in proc.output


def test_serve_embedded_answers_health_and_metrics_and_stops_cleanly(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = process_env(
        REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}",
        REGISTRY_HTTP_DEBUG_ADDR=f"127.0.0.1:{metrics_port}",  # metrics on their own port
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
    )
    with running([*lading_command(), "serve"], env, cwd=tmp_path) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc.proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            health = json.loads(response.read())
        assert health["checks"]["broker"] == {"ok": True, "broker": "embedded"}
        url = f"http://127.0.0.1:{port}/v2/"
        request = urllib.request.Request(url, headers={"X-Request-Id": "cli-test-1"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["X-Request-Id"] == "cli-test-1"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'lading_http_requests_total{method="GET",route="/v2/",status="200"}' in metrics
        with pytest.raises(urllib.error.HTTPError) as not_here:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert not_here.value.code == 404
        assert proc.stop() == 0, proc.output
    access = [json.loads(line) for line in proc.output.splitlines() if '"lading.access"' in line]
    assert any(e["request_id"] == "cli-test-1" and e["route"] == "/v2/" for e in access)
    assert not (tmp_path / "lading-data").exists()  # used the configured root, not the default
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


# --- check-config and serve: one validation path ------------------------------------------


def _serve_once(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`lading serve CONFIG` as a process; a config that cannot run ends it at once."""
    env = process_env(REGISTRY_HTTP_ADDR=f"127.0.0.1:{free_port()}")
    return subprocess.run(
        [*lading_command(), "serve", str(config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ("auth: {htpasswd: {realm: r, path: MISSING}}\n", "auth.htpasswd.path"),
        ("auth: {htpasswd: {realm: r, path: MISSING}}\nlading: {auth: {policy: MISSING}}\n", "auth.policy"),
        ("celery: {broker_ur: 'redis://127.0.0.1:1/0'}\n", "did you mean celery.broker_url?"),
        ("proxy: {remoteurl: 'ftp://registry-1.docker.io'}\n", "proxy.remoteurl: expected an http"),
        ("http: {adress: ':5000'}\n", "did you mean http.addr?"),
        ("http: {tls: {certificate: MISSING, key: MISSING}}\n", "http.tls.certificate/key: cannot load"),
    ],
)
def test_check_config_fails_exactly_where_serve_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, section: str, error: str
) -> None:
    config = tmp_path / "config.yml"
    missing = str(tmp_path / "no-such-file")
    config.write_text(
        f"storage: {{filesystem: {{rootdirectory: '{tmp_path / 'data'}'}}}}\n"
        + section.replace("MISSING", missing)
    )
    code, out, err = run_main(capsys, "check-config", str(config))
    assert code == 1 and "configuration OK" not in out and error in err
    served = _serve_once(config, tmp_path)
    assert served.returncode == 1 and error in served.stderr, served.stderr


def test_check_config_passes_what_serve_starts_with(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:$2y$05$abcdefghijklmnopqrstuu5Vq7Cz1Ed8zMTqv3lqS4G8hKP.qvYrW\n")
    config = tmp_path / "config.yml"
    config.write_text(
        f"storage: {{filesystem: {{rootdirectory: '{tmp_path / 'data'}'}}}}\n"
        f"auth: {{htpasswd: {{realm: r, path: '{htpasswd}'}}}}\n"
        "celery: {worker_prefetch_multiplier: 1}\n"
    )
    code, out, _ = run_main(capsys, "check-config", str(config))
    assert code == 0 and "configuration OK" in out


def test_serve_says_where_the_data_lives_and_where_it_listens(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = process_env(
        REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}", REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(data)
    )
    with running([*lading_command(), "serve"], env, cwd=tmp_path) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc.proc)
        assert proc.stop() == 0, proc.output
    lines = [json.loads(line) for line in proc.output.splitlines() if line.startswith("{")]
    start = [e["msg"] for e in lines if "listening on" in e["msg"]]
    assert start == [
        f"lading {cli.version()}: data in {data} (filesystem); listening on http://127.0.0.1:{port}"
    ]


def test_beat_keeps_its_schedule_under_the_data_directory(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["beat"])
    settings = cli.Settings(storage=cli.Settings().storage.__class__(root=str(tmp_path / "data")))
    path = cli.beat_schedule_file(args, settings)
    assert path == str(tmp_path / "data" / "lading-beat" / "celerybeat-schedule")
    assert (tmp_path / "data" / "lading-beat").is_dir()


def test_beat_schedule_from_the_configuration_or_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(f"lading: {{beat: {{schedule: '{tmp_path}/state/beat'}}}}\n")
    from pipeline.config import load_settings

    settings = load_settings(str(config), {})
    assert (
        cli.beat_schedule_file(cli.build_parser().parse_args(["beat"]), settings) == f"{tmp_path}/state/beat"
    )
    explicit = cli.build_parser().parse_args(["beat", "--schedule", str(tmp_path / "x" / "s")])
    assert cli.beat_schedule_file(explicit, settings) == str(tmp_path / "x" / "s")


def test_a_real_beat_writes_no_state_into_the_working_directory(tmp_path: Path) -> None:
    from tests.support import redis_server

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = process_env(
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
        REGISTRY_CELERY_BROKER_URL=redis_server.url(16),
    )
    state = tmp_path / "data" / "lading-beat"
    with running([*lading_command(), "beat"], env, cwd=cwd) as proc:
        deadline = time.monotonic() + 60
        while not any(state.glob("celerybeat-schedule*")):
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output
            time.sleep(0.05)
        proc.stop()
    assert list(cwd.iterdir()) == []
