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

    def __init__(
        self, env: dict[str, str] | None = None, *extra: str, blender: str = REPLAY_BLENDER, scene: str | None = None
    ) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="rendernode-bench-")
        self.data = Path(self.tmp.name)
        if blender == REPLAY_BLENDER:
            # Run the stand-in with this interpreter directly: a `python3` found on PATH may be a
            # version-manager shim that adds 100+ ms to every start and would swamp the figures.
            wrapper = self.data / "blender"
            wrapper.write_text(f"#!{sys.executable} -S\nimport runpy, sys\nsys.argv[0] = {REPLAY_BLENDER!r}\n"
                               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
            wrapper.chmod(0o755)
            blender = str(wrapper)
        (self.data / "scenes").mkdir()
        (self.data / "scenes" / "bench.blend").write_bytes(b"BLENDER-v304")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "rendernode", "serve", "--port", str(self.port), "--data-dir", str(self.data),
                "--blender", blender, "--scene", scene or "bench.blend", *extra]
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


class Farm:
    """``python -m rendernode farm`` in front of the given nodes."""

    def __init__(self, nodes: list[Node], *extra: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="rendernode-farm-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "rendernode", "farm", "--port", str(self.port), "--data-dir", self.tmp.name,
                *[arg for node in nodes for arg in ("--node", node.url)], *extra]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/health")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.tmp.cleanup()


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def http_json(method: str, url: str, body: object | None = None) -> tuple[int, dict]:
    import json

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
