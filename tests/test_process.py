"""The node as a real process: signals stop every Blender it started, and no accepted job is lost."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import NodeProcess, pid_alive, start_nodes


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


def running_pid(node: NodeProcess, job_id: str) -> int | None:
    _, body = http("GET", f"{node.url}/job/{job_id}")
    return body["pid"] if body["status"] == "running" and body["frames"]["done"] >= 1 else None


def wait_finished(node: NodeProcess, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        code, body = http("GET", f"{node.url}/job/{job_id}")
        return body if code == 200 else None

    result: dict[str, Any] = wait_until(finished)
    return result


def test_sigterm_stops_blender_and_the_job_resumes_after_restart(
    tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    env = {"FAKE_BLENDER_FRAME_SECONDS": "0.4"}
    (node,) = start_nodes(1, tmp_path, fake_blender, node_processes, env)
    data = node.data_dir
    status, job = http("POST", f"{node.url}/job", {"from": 1, "to": 10})
    assert status == 202
    pid = wait_until(lambda: running_pid(node, job["id"]))
    assert node.stop(signal.SIGTERM) == 0
    assert not pid_alive(pid), "Blender outlived the node"

    again = NodeProcess(data, fake_blender, env, "--scene", "stub.blend")
    node_processes.append(again)
    again.wait_ready()

    done = wait_finished(again, job["id"])
    assert done["status"] == "completed"
    assert [r["frame"] for r in done["results"]] == list(range(1, 11))
    again.stop()


def test_sigkill_of_the_node_leaves_no_blender_after_restart(
    tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    (node,) = start_nodes(1, tmp_path, fake_blender, node_processes, {"FAKE_BLENDER_FRAME_SECONDS": "0.4"})
    data = node.data_dir
    _, job = http("POST", f"{node.url}/job", {"from": 1, "to": 30})
    pid = wait_until(lambda: running_pid(node, job["id"]))
    node.stop(signal.SIGKILL)
    # Nobody could stop Blender: it runs on as an orphan until the next start finds it.
    assert pid_alive(pid)

    again = NodeProcess(data, fake_blender, {"FAKE_BLENDER_FRAME_SECONDS": "0.02"}, "--scene", "stub.blend")
    node_processes.append(again)
    again.wait_ready()
    wait_until(lambda: not pid_alive(pid), timeout=10)

    done = wait_finished(again, job["id"])
    assert done["status"] == "completed"
    assert done["frames"]["done"] == 30
    again.stop()


def test_real_blender_is_stopped_with_the_node(
    tmp_path: Path, real_blender: str, demo_scene: Path, node_processes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "data", real_blender, None, "--scene", str(demo_scene))
    node_processes.append(node)
    node.wait_ready()
    _, job = http("POST", f"{node.url}/job", {"from": 1, "to": 100})
    pid = wait_until(lambda: running_pid(node, job["id"]), timeout=120)
    assert node.stop(signal.SIGINT) == 0
    assert not pid_alive(pid)
