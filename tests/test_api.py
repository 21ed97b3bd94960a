"""The 202/200 job contract, queueing, cancelling, failures and bad input, against the stand-in Blender."""

from __future__ import annotations

import io
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import BLEND_HEADER, NodeFactory, eventually, pid_alive, wait_terminal


async def submit(client: TestClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await client.post("/job", json=body or {"from": 1, "to": 3})
    assert response.status == 202, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_post_answers_202_with_location_and_retry_after_then_200_when_done(node: TestClient) -> None:
    response = await node.post("/job", json={"from": 1, "to": 3})
    assert response.status == 202
    body = await response.json()
    assert response.headers["Location"] == f"/job/{body['id']}"
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert body["status"] in ("queued", "running")
    assert body["frames"]["total"] == 3 and "pid" in body

    polled = await node.get(response.headers["Location"])
    if polled.status == 202:
        assert polled.headers["Location"] == f"/job/{body['id']}"
        assert 1 <= int(polled.headers["Retry-After"]) <= 30

    done = await wait_terminal(node, body["id"])
    assert done["status"] == "completed", done
    assert done["exit_code"] == 0 and isinstance(done["pid"], int)
    assert done["frames"] == {"from": 1, "to": 3, "total": 3, "done": 3}
    assert [r["frame"] for r in done["results"]] == [1, 2, 3]
    for result in done["results"]:
        assert result["render_seconds"] > 0
        image = await node.get(result["url"])
        assert image.status == 200
        assert image.content_type == "image/png"
        assert (await image.read()).startswith(b"\x89PNG")


async def test_ids_are_opaque_and_distinct(node: TestClient) -> None:
    ids = {(await submit(node, {"from": 1, "to": 1}))["id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(not i.isdigit() for i in ids)


async def test_unknown_job_is_404_with_json_error(node: TestClient) -> None:
    for method, path in [
        ("GET", "/job/nope"),
        ("DELETE", "/job/nope"),
        ("GET", "/job/nope/log"),
        ("GET", "/job/nope/frames/1"),
    ]:
        response = await node.request(method, path)
        assert response.status == 404, path
        assert (await response.json())["error"] == "not_found"


BAD_BODIES: list[tuple[Any, str]] = [
    ({}, "from"),
    ({"from": 1}, "to"),
    ({"to": 5}, "from"),
    ({"from": "1", "to": 5}, "from"),
    ({"from": "1; rm -rf /", "to": 5}, "from"),
    ({"from": 1, "to": "5; rm -rf /"}, "to"),
    ({"from": 1.5, "to": 5}, "from"),
    ({"from": True, "to": 5}, "from"),
    ({"from": None, "to": 5}, "from"),
    ({"from": 10**30, "to": 10**30 + 1}, "from"),
    ({"from": -1, "to": 5}, "from"),
    ({"from": 5, "to": 1}, "from"),
    ({"from": 1, "to": 20000}, "to"),
    ({"from": 1, "to": 2, "engine": "NOPE"}, "engine"),
    ({"from": 1, "to": 2, "engine": 7}, "engine"),
    ({"from": 1, "to": 2, "format": "GIF"}, "format"),
    ({"from": 1, "to": 2, "scene": "missing.blend"}, "scene"),
    ({"from": 1, "to": 2, "scene": "../etc/passwd"}, "scene"),
    ({"from": 1, "to": 2, "scene": "a/b.blend"}, "scene"),
    ({"from": 1, "to": 2, "scene": "..blend"}, "scene"),
    ([1, 5], ""),
    ("1-5", ""),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_job_bodies_get_400_and_nothing_is_queued(node: TestClient, body: Any, field: str) -> None:
    response = await node.post("/job", json=body)
    assert response.status == 400, await response.text()
    error = await response.json()
    assert error["error"] == "invalid_request" and error["message"]
    if field:
        assert error["field"] == field
    listing = await (await node.get("/jobs")).json()
    assert listing["total"] == 0
    assert (await node.get("/health")).status == 200


async def test_non_json_and_oversized_bodies(node: TestClient) -> None:
    form = await node.post("/job", data="from=1&to=5", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 415
    assert (await form.json())["error"] == "unsupported_media_type"
    garbage = await node.post("/job", data=b"\xff\xfe{not json", headers={"Content-Type": "application/json"})
    assert garbage.status == 400
    huge_digits = await node.post(
        "/job", data='{"from": 1' + "0" * 5000 + ', "to": 2}', headers={"Content-Type": "application/json"}
    )
    assert huge_digits.status in (400, 413)
    oversized = await node.post(
        "/job",
        data=b'{"from": 1, "to": 2, "pad": "' + b"x" * 200_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert oversized.status == 413
    assert (await oversized.json())["error"] == "payload_too_large"
    wrong_method = await node.put("/job")
    assert wrong_method.status == 405
    assert (await node.get("/health")).status == 200


async def test_blender_exit_zero_without_frames_is_failed_with_its_error_line(node: TestClient, fake_env: Any) -> None:
    fake_env(mode="no-camera")
    job = await submit(node)
    done = await wait_terminal(node, job["id"])
    assert done["status"] == "failed"
    assert done["exit_code"] == 0
    assert done["error"] == "Cannot render, no camera"


async def test_missing_last_frame_is_failed_even_with_exit_zero(node: TestClient, fake_env: Any) -> None:
    fake_env(mode="skip-last")
    done = await wait_terminal(node, (await submit(node))["id"])
    assert done["status"] == "failed"
    assert done["frames"]["done"] == 2
    assert "saved only 2 of 3" in done["error"]


async def test_nonzero_exit_reports_code_and_error_line(node: TestClient, fake_env: Any) -> None:
    fake_env(mode="exit1", fail_frame=2)
    done = await wait_terminal(node, (await submit(node))["id"])
    assert done["status"] == "failed"
    assert done["exit_code"] == 1
    assert done["error"].startswith("Render error (Invalid argument) cannot save")
    assert done["frames"]["done"] == 1


async def test_sigkill_mid_frame_fails_the_job_with_the_reason(node: TestClient, fake_env: Any) -> None:
    fake_env(frame_seconds=5)
    job = await submit(node, {"from": 1, "to": 2})

    async def running_pid() -> int | None:
        body = await (await node.get(f"/job/{job['id']}")).json()
        return body["pid"] if body["status"] == "running" and body["current_frame"] == 1 else None

    pid = await eventually(running_pid)
    os.kill(pid, signal.SIGKILL)
    done = await wait_terminal(node, job["id"])
    assert done["status"] == "failed"
    assert done["exit_code"] == -signal.SIGKILL
    assert done["error"] == "Blender was killed by SIGKILL while rendering frame 1"


async def test_jobs_wait_fifo_beyond_the_concurrency_limit(make_node: NodeFactory, fake_env: Any) -> None:
    fake_env(frame_seconds=0.3)
    client = await make_node(max_concurrent=1)
    jobs = [await submit(client, {"from": 1, "to": 1}) for _ in range(3)]
    second = await (await client.get(f"/job/{jobs[2]['id']}")).json()
    assert second["status"] == "queued" and second["pid"] is None
    assert second["queue_position"] == 2
    finished = [await wait_terminal(client, j["id"]) for j in jobs]
    assert [j["status"] for j in finished] == ["completed"] * 3
    starts = [j["started_at"] for j in finished]
    assert starts == sorted(starts)
    # One at a time: each started after the previous one finished.
    for before, after in itertools.pairwise(finished):
        assert after["started_at"] >= before["finished_at"]


async def test_full_queue_answers_503_with_retry_after(make_node: NodeFactory, fake_env: Any) -> None:
    fake_env(frame_seconds=2)
    client = await make_node(max_concurrent=1, queue_limit=2)
    accepted = [await submit(client, {"from": 1, "to": 1}) for _ in range(3)]  # one runs, two wait
    response = await client.post("/job", json={"from": 1, "to": 1})
    assert response.status == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"] == "queue_full"
    listing = await (await client.get("/jobs")).json()
    assert {j["id"] for j in listing["jobs"]} == {j["id"] for j in accepted}
    for job in accepted:
        await client.delete(f"/job/{job['id']}")


async def test_cancel_running_and_queued_jobs(make_node: NodeFactory, fake_env: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    fake_env(frame_seconds=5, pidfile=pidfile, mode="ignore-term")
    client = await make_node(max_concurrent=1, stop_grace=0.5)
    running = await submit(client, {"from": 1, "to": 5})
    queued = await submit(client, {"from": 1, "to": 5})

    async def rendering() -> bool:
        body = await (await client.get(f"/job/{running['id']}")).json()
        return body["status"] == "running" and body["current_frame_percent"] is not None and pidfile.exists()

    await eventually(rendering)
    response = await client.delete(f"/job/{queued['id']}")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"

    response = await client.delete(f"/job/{running['id']}")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    # The stand-in ignores SIGTERM, so this proves the SIGKILL after the grace period, and the reaping.
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 1
    assert not pid_alive(pids[0])

    again = await client.delete(f"/job/{running['id']}")
    assert again.status == 409
    assert (await again.json())["error"] == "conflict"
    final = await (await client.get(f"/job/{queued['id']}")).json()
    assert final["status"] == "cancelled" and final["pid"] is None


async def test_jobs_list_is_newest_first_and_paginated(node: TestClient) -> None:
    ids = [(await submit(node, {"from": 1, "to": 1}))["id"] for _ in range(5)]
    page1 = await (await node.get("/jobs?limit=2")).json()
    assert [j["id"] for j in page1["jobs"]] == ids[::-1][:2]
    assert page1["total"] == 5 and page1["next"] == "/jobs?limit=2&offset=2"
    page3 = await (await node.get("/jobs?limit=2&offset=4")).json()
    assert [j["id"] for j in page3["jobs"]] == [ids[0]] and page3["next"] is None
    assert (await node.get("/jobs?limit=0")).status == 400
    assert (await node.get("/jobs?limit=abc")).status == 400
    for job_id in ids:
        await wait_terminal(node, job_id)


async def test_log_endpoint_and_tail(node: TestClient) -> None:
    done = await wait_terminal(node, (await submit(node))["id"])
    full = await node.get(f"/job/{done['id']}/log")
    text = await full.text()
    assert "Blender 3.4.1" in text and "Saved: '" in text and "Blender quit" in text
    assert "--disable-autoexec" in text  # the command line is recorded at the top
    tail = await (await node.get(f"/job/{done['id']}/log?tail=2")).text()
    assert tail.splitlines() == text.splitlines()[-2:]
    assert (await node.get(f"/job/{done['id']}/log?tail=x")).status == 400


async def test_frame_endpoint_rejects_bad_numbers(node: TestClient) -> None:
    done = await wait_terminal(node, (await submit(node, {"from": 1, "to": 1}))["id"])
    assert (await node.get(f"/job/{done['id']}/frames/abc")).status == 400
    assert (await node.get(f"/job/{done['id']}/frames/2")).status == 404
    assert (await node.get(f"/job/{done['id']}/frames/..%2F..%2Fetc%2Fpasswd")).status in (400, 404)


async def test_health_reports_blender_version_and_capacity(node: TestClient) -> None:
    body = await (await node.get("/health")).json()
    assert body["status"] == "ok"
    assert body["blender"]["version"] == "3.4.1"
    assert body["capacity"] == 1 and body["running"] == 0 and body["queued"] == 0


@pytest.mark.parametrize("kind", ["missing", "not executable"])
async def test_an_unusable_blender_is_reported_and_jobs_fail_clearly(
    make_node: NodeFactory, tmp_path: Path, kind: str
) -> None:
    blender = tmp_path / "blender"
    if kind == "not executable":
        blender.write_text("#!/bin/sh\necho Blender 3.4.1\n")
        blender.chmod(0o644)
    client = await make_node(blender=str(blender))
    health = await client.get("/health")
    assert health.status == 503
    error = (await health.json())["blender"]["error"]
    assert "cannot run Blender" in error
    assert ("Permission denied" if kind == "not executable" else "No such file") in error
    done = await wait_terminal(client, (await submit(client))["id"])
    assert done["status"] == "failed" and "cannot run Blender" in done["error"]


async def test_scene_upload_is_checked_deduplicated_and_renderable(node: TestClient) -> None:
    not_blend = await node.post(
        "/scenes", data=b"hello, not a blend file", headers={"Content-Type": "application/octet-stream"}
    )
    assert not_blend.status == 400
    payload = BLEND_HEADER + b"scene-a"
    first = await node.post("/scenes", data=payload, headers={"Content-Type": "application/octet-stream"})
    assert first.status == 201
    scene = await first.json()
    assert scene["name"] == f"{scene['sha256']}.blend" and scene["size"] == len(payload)
    second = await node.post("/scenes", data=payload, headers={"Content-Type": "application/octet-stream"})
    assert second.status == 200 and (await second.json())["created"] is False
    listing = await (await node.get("/scenes")).json()
    assert scene["name"] in [s["name"] for s in listing["scenes"]]
    done = await wait_terminal(node, (await submit(node, {"from": 1, "to": 1, "scene": scene["name"]}))["id"])
    assert done["status"] == "completed" and done["scene"] == scene["name"]


async def test_scene_upload_size_limit(make_node: NodeFactory) -> None:
    client = await make_node(max_upload_mb=1)
    response = await client.post(
        "/scenes",
        data=io.BytesIO(BLEND_HEADER + b"x" * (2 * 1024 * 1024)),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status == 413
    assert (await client.get("/health")).status == 200


async def test_metrics_in_prometheus_format(node: TestClient) -> None:
    done = await wait_terminal(node, (await submit(node, {"from": 1, "to": 3}))["id"])
    assert done["status"] == "completed"
    async with node.ws_connect("/ws") as ws:
        await ws.receive()
        text = await (await node.get("/metrics")).text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['rendernode_jobs{status="completed"}'] == 1
    assert samples["rendernode_frames_rendered_total"] == 3
    assert samples["rendernode_frame_render_seconds_count"] == 3
    assert samples['rendernode_frame_render_seconds_bucket{le="+Inf"}'] == 3
    assert samples["rendernode_queue_length"] == 0 and samples["rendernode_running_blenders"] == 0
    assert samples["rendernode_websocket_subscribers"] == 1
