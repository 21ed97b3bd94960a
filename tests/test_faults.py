"""Faults and hostile clients: a full disk, a broken output dir, a thousand submissions at once,
tokens, rate limits, and paths that try to leave their directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import NodeFactory, NodeProcess, eventually, stub_scene, wait_terminal

from rendernode import app as app_module


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 128 KiB tmpfs: room for one demo frame, not two."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_a_full_disk_fails_the_job_with_blenders_reason_and_the_node_keeps_serving(
    make_node: NodeFactory, real_blender: str, demo_scene: Path, tiny_disk: Path
) -> None:
    client = await make_node(blender=real_blender, scene=str(demo_scene), output_dir=tiny_disk)
    job = await (await client.post("/job", json={"from": 1, "to": 4})).json()
    done = await wait_terminal(client, job["id"], timeout=120)
    assert done["status"] == "failed"
    assert "No space left on device" in done["error"]
    assert done["frames"]["done"] < 4
    # The truncated frame Blender left behind is not counted or served.
    assert [r["frame"] for r in done["results"]] == list(range(1, done["frames"]["done"] + 1))
    assert (await client.get("/health")).status == 200
    assert (await client.post("/job", json={"from": 1, "to": 1})).status == 202


async def test_an_unusable_output_dir_fails_the_job_with_that_reason(node: TestClient, tmp_path: Path) -> None:
    outputs = tmp_path / "data" / "output"
    shutil.rmtree(outputs)
    outputs.write_text("a file where the output dir should be")
    done = await wait_terminal(node, (await (await node.post("/job", json={"from": 1, "to": 2})).json())["id"])
    assert done["status"] == "failed"
    assert done["error"].startswith("cannot create the output directory")
    assert (await node.get("/health")).status == 200


async def test_a_thousand_concurrent_submissions_are_each_answered_and_none_is_lost(
    make_node: NodeFactory, fake_env: Any
) -> None:
    fake_env(frame_seconds=0)
    client = await make_node(max_concurrent=4, queue_limit=150)

    async def submit_one() -> tuple[int, str | None]:
        response = await client.post("/job", json={"from": 1, "to": 1})
        body = await response.json()
        if response.status == 503:
            assert int(response.headers["Retry-After"]) >= 1
        return response.status, body.get("id")

    answers = await asyncio.gather(*(submit_one() for _ in range(1000)))
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[202] >= 150
    accepted = {job_id for status, job_id in answers if status == 202}
    assert len(accepted) == statuses[202]

    async def all_finished() -> bool:
        listing = await (await client.get("/jobs?limit=500&status=completed")).json()
        return bool(listing["total"] == len(accepted))

    await eventually(all_finished, timeout=240, interval=0.5)
    listing = await (await client.get("/jobs?limit=500")).json()
    everything: list[dict[str, Any]] = listing["jobs"]
    while listing["next"]:
        listing = await (await client.get(listing["next"])).json()
        everything += listing["jobs"]
    assert {j["id"] for j in everything} == accepted
    assert all(j["status"] == "completed" for j in everything)


async def test_every_endpoint_but_health_and_static_needs_the_token(make_node: NodeFactory) -> None:
    client = await make_node(token="correct horse")
    job_id = "anything"
    guarded = [("POST", "/job"), ("GET", f"/job/{job_id}"), ("DELETE", f"/job/{job_id}"), ("GET", "/jobs"),
               ("GET", f"/job/{job_id}/log"), ("GET", f"/job/{job_id}/frames/1"), ("GET", "/scenes"),
               ("POST", "/scenes"), ("GET", "/metrics"), ("GET", "/ws"), ("GET", f"/job/{job_id}/ws")]
    for method, path in guarded:
        response = await client.request(method, path)
        assert response.status == 401, (method, path)
        assert (await response.json())["error"] == "unauthorized"
        wrong = await client.request(method, path, headers={"Authorization": "Bearer correct horsE"})
        assert wrong.status == 401, (method, path)
    authorised = {"Authorization": "Bearer correct horse"}
    assert (await client.get("/jobs", headers=authorised)).status == 200
    assert (await client.get("/jobs?token=correct%20horse")).status == 200
    accepted = await client.post("/job", json={"from": 1, "to": 1}, headers=authorised)
    assert accepted.status == 202
    for public in ("/health", "/", "/static/app.js", "/openapi.yaml"):
        assert (await client.get(public)).status == 200, public


async def test_submissions_are_rate_limited_per_client(make_node: NodeFactory) -> None:
    client = await make_node(rate_limit=3)
    for _ in range(3):
        assert (await client.post("/job", json={"from": 1, "to": 1})).status == 202
    limited = await client.post("/job", json={"from": 1, "to": 1})
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    assert (await limited.json())["error"] == "too_many_requests"
    assert (await client.get("/jobs")).status == 200  # only submissions are limited


async def test_file_endpoints_cannot_escape_their_directories(
    make_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "static"
    shutil.copytree(app_module.static_dir(), static)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (static / "leak.txt").symlink_to(secret)
    monkeypatch.setattr(app_module, "static_dir", lambda: static)
    client = await make_node()
    job = await (await client.post("/job", json={"from": 1, "to": 1})).json()
    done = await wait_terminal(client, job["id"])
    frame = tmp_path / "data" / "output" / job["id"] / "frame_00001.png"
    frame.unlink()
    frame.symlink_to(secret)  # a frame swapped for a link to something else on the machine

    attempts = [
        "/static/leak.txt",
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/%2e%2e%2f%2e%2e%2fdata/rendernode.sqlite3",
        "/static//etc/passwd",
        f"/static/{tmp_path}/secret.txt",
        done["results"][0]["url"],
        f"/job/{job['id']}/frames/..%2F..%2Frendernode.sqlite3",
        f"/job/..%2F{job['id']}/log",
        "/job/%2e%2e/log",
    ]
    for path in attempts:
        response = await client.get(path)
        body = await response.read()
        assert response.status in (400, 403, 404), (path, response.status)
        assert b"top secret" not in body and b"SQLite format" not in body and b"root:" not in body, path
    assert (await client.get("/static/app.js")).status == 200


def test_binding_beyond_loopback_without_a_token_warns_loudly(
    tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    data = tmp_path / "data"
    stub_scene(data)
    exposed = NodeProcess(data, fake_blender, None, "--scene", "stub.blend", "--host", "0.0.0.0")
    node_processes.append(exposed)
    exposed.wait_ready()
    exposed.stop()
    assert "WITHOUT A TOKEN" in exposed.log_path.read_text()

    guarded = NodeProcess(data, fake_blender, None, "--scene", "stub.blend", "--host", "0.0.0.0", "--token", "t")
    node_processes.append(guarded)
    guarded.wait_ready()
    guarded.stop()
    assert "WITHOUT A TOKEN" not in guarded.log_path.read_text()

    local = NodeProcess(data, fake_blender, None, "--scene", "stub.blend")
    node_processes.append(local)
    local.wait_ready()
    local.stop()
    text = local.log_path.read_text()
    assert "WITHOUT A TOKEN" not in text and "on http://127.0.0.1:" in text
