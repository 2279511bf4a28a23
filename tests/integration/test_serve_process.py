"""`voice-gateway serve` as a user runs it: a real process on embedded defaults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_GATEWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_gateway.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"gateway did not start: {proc.communicate()[0]}")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serve_runs_on_embedded_defaults_and_stops_cleanly_on_sigterm(
    gateway: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    proc, port = gateway
    assert get(f"http://127.0.0.1:{port}/healthz") == (200, '{"status": "ok"}')
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200 and '"ready": true' in body
    status, metrics = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "vg_calls_active" in metrics and "vg_archive_backlog" in metrics
    assert (tmp_path / "var" / "archive.db").is_file()  # the embedded SQLite archive
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines and all('"level"' in line for line in lines)  # JSON logs by default
