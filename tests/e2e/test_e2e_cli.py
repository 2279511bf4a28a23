"""``voice-gateway simulate`` end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _summary(out: str) -> dict[str, str]:
    """The summary table: two-space-indented ``name  value`` lines."""
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()]
    return {row[0]: row[1] for row in rows if len(row) == 2}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "voice_gateway.cli", "simulate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_simulate_two_calls_in_process(tmp_path: Path) -> None:
    """Fresh directory, no config: the command starts its own gateway and fake Twilio API."""
    proc = _run(["--calls", "2", "--loop", "1", "--test"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "in-process gateway at http://127.0.0.1:" in out
    assert out.count("outcome=completed") == 2
    assert "summary:" in out
    summary = _summary(out)
    assert summary["calls"] == "2"
    assert summary["completed"] == "2"
    assert summary["failed"] == "0"
    assert summary["close codes"] == "1000 x2"
    assert summary["media frames sent"] == "100"
    assert "turn latency p50" in summary and "generator lateness" in summary
    assert (tmp_path / "var" / "archive.db").is_file()  # the embedded default archive


def test_simulate_exits_non_zero_when_calls_fail(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = _run(
        ["--url", f"http://127.0.0.1:{port}", "--auth-token", "x" * 32, "--loop", "0.2"],
        tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "outcome=failed" in proc.stdout
    assert _summary(proc.stdout)["failed"] == "1"
