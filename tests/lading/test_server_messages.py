"""What `lading serve` says, as a process: a TLS probe on the plain-HTTP port is not a
warning, and an upload still running when the shutdown's drain time runs out gets 503 and
one log line (no traceback, no 500)."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path

from tests.lading.procs import lading_command, process_env, running
from tests.support.net import free_port, wait_http

# The first bytes of a TLS ClientHello, as skopeo and docker send to probe for HTTPS.
CLIENT_HELLO = bytes.fromhex("160301006b010000670303") + os.urandom(32) + b"\x00\x00\x02\x13\x01\x01\x00"


def _serve_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return process_env(
        REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}",
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
        **extra,
    )


def _lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_a_tls_probe_on_the_plain_port_is_no_warning(tmp_path: Path) -> None:
    port = free_port()
    with running([*lading_command(), "serve"], _serve_env(tmp_path, port), cwd=tmp_path) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc.proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
            probe.sendall(CLIENT_HELLO)
            answer = probe.recv(4096)  # uvicorn logs before it answers 400 and closes
        assert answer.startswith(b"HTTP/1.1 400")
        assert proc.stop() == 0, proc.output
    assert "Invalid HTTP request" not in proc.output
    assert not [e for e in _lines(proc.output) if e["level"] in ("warning", "error")], proc.output


def test_an_upload_cut_by_shutdown_gets_503_and_one_log_line(tmp_path: Path) -> None:
    port = free_port()
    env = _serve_env(tmp_path, port, REGISTRY_HTTP_DRAINTIMEOUT="1s")
    with running([*lading_command(), "serve"], env, cwd=tmp_path) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc.proc)
        start = urllib.request.Request(f"http://127.0.0.1:{port}/v2/team/app/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start, timeout=10) as response:
            location = response.headers["Location"]
        path = location.split(f"127.0.0.1:{port}", 1)[-1]
        with socket.create_connection(("127.0.0.1", port), timeout=60) as upload:
            # A chunk announced as 1 MiB of which only 1 KiB arrives: the request is in flight.
            head = (
                f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n"
            )
            upload.sendall(head.encode() + b"x" * 1024)
            os.kill(proc.proc.pid, signal.SIGTERM)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = upload.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"retry-after: 5" in answer.lower()
        assert proc.proc.wait(30) == 0, proc.output
        proc.stop()
    assert "Traceback" not in proc.output and "Exception in ASGI application" not in proc.output, proc.output
    cut = [e for e in _lines(proc.output) if "cut by shutdown" in str(e["msg"])]
    assert len(cut) == 1 and cut[0]["level"] == "warning", proc.output
    assert f"PATCH {path}" in str(cut[0]["msg"])
