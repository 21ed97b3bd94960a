"""Helpers shared by the benchmarks: a node process on a free port, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REPLAY_BLENDER = str(BENCH / "replay_blender.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """``python -m rendernode serve`` with the replaying stand-in Blender, in a throwaway data dir."""

    def __init__(self, env: dict[str, str] | None = None, *extra: str, blender: str = REPLAY_BLENDER) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="rendernode-bench-")
        self.data = Path(self.tmp.name)
        (self.data / "scenes").mkdir()
        (self.data / "scenes" / "bench.blend").write_bytes(b"BLENDER-v304")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "rendernode", "serve", "--port", str(self.port), "--data-dir", str(self.data),
                "--blender", blender, "--scene", "bench.blend", *extra]
        self.proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("node did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.tmp.cleanup()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
