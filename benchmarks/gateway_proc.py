"""Start a real gateway process for a benchmark and read its CPU and memory from /proc."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

REDIS_URL = os.environ.get("VOICE_GATEWAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process and its waited-for children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + cutime) / CLK_TCK, (stime + cstime) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its waited-for children."""
    return sum(cpu_split(pid))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class GatewayProcess:
    """``voice-gateway serve`` on a free port, Redis-backed, pinned to ``cpu`` when possible.

    ``command``: argv to run instead of ``voice-gateway serve`` (same environment, working
    directory, pinning and ``/healthz`` readiness check), e.g. ``benchmarks/bare_loop.py``'s
    reference server.
    """

    workdir: Path
    cpu: int | None = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    account_sid: str = "AC" + "b" * 32
    port: int = field(default_factory=free_port)
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}:")
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_GATEWAY_")}
        env.update(
            {
                "VOICE_GATEWAY_PUBLIC_URL": self.base_url,
                "VOICE_GATEWAY_PORT": str(self.port),
                "VOICE_GATEWAY_REDIS_URL": REDIS_URL,
                "VOICE_GATEWAY_REDIS_PREFIX": self.prefix,
                "VOICE_GATEWAY_ARCHIVE_URL": f"sqlite:///{self.workdir / 'archive.db'}",
                "VOICE_GATEWAY_TWILIO_AUTH_TOKEN": self.auth_token,
                "VOICE_GATEWAY_TWILIO_ACCOUNT_SID": self.account_sid,
                "VOICE_GATEWAY_LOG_LEVEL": "WARNING",
                **self.extra_env,
            }
        )
        cmd = self.command or [sys.executable, "-m", "voice_gateway.cli", "serve"]
        if self.cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        self.log = (self.workdir / "gateway.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=self.workdir, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(
            f"gateway did not start: {(self.workdir / 'gateway.log').read_text()[-2000:]}"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        finally:
            client.close()
