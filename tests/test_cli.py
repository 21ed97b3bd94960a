"""The command line: submit --follow (WebSocket, then polling as fallback), status, cancel."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from conftest import REPO, NodeProcess, stub_scene

from rendernode.cli import ProgressPrinter, _follow
from rendernode.client import NodeClient


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rendernode", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=180, env=env)


def test_submit_follow_renders_real_frames(
    tmp_path: Path, real_blender: str, demo_scene: Path, node_processes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "data", real_blender, None, "--scene", str(demo_scene))
    node_processes.append(node)
    node.wait_ready()
    result = cli("submit", "--from", "1", "--to", "3", "--follow", "--url", node.url)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    for frame in (1, 2, 3):
        assert f"frame {frame} done in" in result.stderr
    assert f"job {job_id} completed" in result.stderr
    assert len(list((tmp_path / "data" / "output" / job_id).glob("frame_*.png"))) == 3

    status = cli("status", job_id, "--url", node.url)
    assert status.returncode == 0
    assert json.loads(status.stdout)["status"] == "completed"
    node.stop()


def test_follow_exits_nonzero_when_the_job_fails_and_cancel_works(
    tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    data = tmp_path / "data"
    stub_scene(data)
    node = NodeProcess(data, fake_blender, {"FAKE_BLENDER_MODE": "no-camera"}, "--scene", "stub.blend")
    node_processes.append(node)
    node.wait_ready()
    failed = cli("submit", "--from", "1", "--to", "2", "--follow", "--url", node.url)
    assert failed.returncode == 1
    assert "failed: Cannot render, no camera" in failed.stderr
    node.stop()

    slow = NodeProcess(data, fake_blender, {"FAKE_BLENDER_FRAME_SECONDS": "5"}, "--scene", "stub.blend")
    node_processes.append(slow)
    slow.wait_ready()
    submitted = cli("submit", "--from", "1", "--to", "9", "--url", slow.url)
    job_id = submitted.stdout.strip()
    cancelled = cli("cancel", job_id, "--url", slow.url)
    assert cancelled.returncode == 0 and f"job {job_id} cancelled" in cancelled.stdout
    again = cli("cancel", job_id, "--url", slow.url)
    assert again.returncode == 2 and "HTTP 409" in again.stderr
    missing = cli("status", "nope", "--url", slow.url)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
    unreachable = cli("status", "x", "--url", "http://127.0.0.1:9", env={**os.environ})
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    slow.stop()


class SocketlessClient(NodeClient):
    async def events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        raise aiohttp.ClientConnectionError("WebSocket blocked by a proxy")
        yield {}  # pragma: no cover


async def test_follow_falls_back_to_polling_with_retry_after(node: TestClient, fake_env: Any) -> None:
    fake_env(frame_seconds=0.1)
    out = io.StringIO()
    async with SocketlessClient(str(node.make_url("")).rstrip("/")) as client:
        job = await client.submit({"from": 1, "to": 3})
        status = await _follow(client, job["id"], ProgressPrinter(out))
    assert status == "completed"
    text = out.getvalue()
    assert "polling instead" in text and f"job {job['id']} completed" in text
