"""A scaled-out Lading as real processes for fault tests: `lading serve` and any number of
`lading worker` processes (each its own process group, so a test can SIGKILL one whole),
sharing one config file and storage root, plus an HTTP client that pushes like a registry
client does."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.lading import lading_command
from tests.support.net import free_port, wait_http

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Proc:
    """One Lading process with its log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.hostname = ""  # a worker's node name
        self._file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.log.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{needle!r} not in {self.log.name} after {timeout}s:\n{self.text()[-3000:]}"
                )
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a lost machine)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._file.close()


class Cluster:
    """Config file + storage root in `workdir`; `serve()` and `worker()` start processes."""

    def __init__(
        self, workdir: Path, broker_url: str, extra: dict[str, Any] | None = None, **celery: Any
    ) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "config.yml"
        document = {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "celery": {"broker_url": broker_url, "result_backend": broker_url, **celery},
            **(extra or {}),
        }
        self.config.write_text(yaml.safe_dump(document))
        self.procs: list[Proc] = []
        self.port = 0
        self._workers = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")}
        env.update({"LADING_CONFIG": str(self.config), "PYTHONUNBUFFERED": "1", **extra})
        return env

    def serve(self) -> Proc:
        self.port = free_port()
        proc = Proc(
            [*lading_command(), "serve", str(self.config)],
            self.env(REGISTRY_HTTP_ADDR=f"127.0.0.1:{self.port}"),
            self.workdir / "serve.log",
        )
        self.procs.append(proc)
        wait_http(f"{self.base}/v2/", timeout=60, proc=proc.proc)
        return proc

    def worker(self, pool: str = "threads", concurrency: int = 2, queues: str = "ingest,verify") -> Proc:
        self._workers += 1
        hostname = f"w{self._workers}-{os.getpid()}@localhost"
        proc = Proc(
            [
                *lading_command(),
                "worker",
                str(self.config),
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--queues",
                queues,
                "--hostname",
                hostname,
            ],
            self.env(),
            self.workdir / f"worker-{self._workers}.log",
        )
        proc.hostname = hostname
        self.procs.append(proc)
        proc.wait_for_line(" ready.")
        return proc

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    # --- pushing -------------------------------------------------------------------------

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=timeout)

    def push_blob(self, http: httpx.Client, repo: str, data: bytes) -> str:
        digest = sha256(data)
        started = http.post(f"/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        done = http.put(location, params={"digest": digest}, content=data)
        assert done.status_code == 201, done.text
        return digest

    def image(self, http: httpx.Client, repo: str, label: str) -> bytes:
        """Push a config and a layer; the manifest naming them (annotated with `label`)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "label": label}).encode()
        layer = f"layer of {label}".encode()
        descriptors = []
        for data, media_type in (
            (config, "application/vnd.oci.image.config.v1+json"),
            (layer, "application/vnd.oci.image.layer.v1.tar"),
        ):
            descriptors.append(
                {"mediaType": media_type, "digest": self.push_blob(http, repo, data), "size": len(data)}
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptors[0],
            "layers": descriptors[1:],
            "annotations": {"label": label},
        }
        return json.dumps(manifest).encode()

    @staticmethod
    def put_manifest(http: httpx.Client, repo: str, reference: str, body: bytes) -> httpx.Response:
        return http.put(
            f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )

    @staticmethod
    def tag_digest(http: httpx.Client, repo: str, tag: str) -> str | None:
        response = http.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        return response.headers.get("docker-content-digest") if response.status_code == 200 else None
