"""The farm: real node processes on loopback, an orchestrator in front, and the faults it must survive."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import NodeProcess, eventually, start_nodes, wait_terminal
from test_e2e_blender import DEMO_SIZE, png_size

from rendernode.farm.app import FarmSettings, create_farm_app, read_nodes_file

FarmFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_farm(aiohttp_client: Any, tmp_path: Path) -> FarmFactory:
    async def factory(nodes: list[NodeProcess], **overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "farm",
            "nodes": [n.url for n in nodes],
            "health_interval": 0.3,
        }
        values.update(overrides)
        client: TestClient = await aiohttp_client(create_farm_app(FarmSettings(**values)))
        return client

    return factory


async def submit(farm: TestClient, body: dict[str, Any], path: str = "/job") -> dict[str, Any]:
    response = await farm.post(path, json=body)
    assert response.status == 202, await response.text()
    assert response.headers["Location"].startswith("/job/") and int(response.headers["Retry-After"]) >= 1
    result: dict[str, Any] = await response.json()
    return result


def assert_every_frame_once(done: dict[str, Any], farm_dir: Path, first: int, last: int) -> None:
    frames = [r["frame"] for r in done["results"]]
    assert frames == list(range(first, last + 1)), frames
    files = sorted(p.name for p in (farm_dir / "output" / done["id"]).iterdir())
    assert files == [f"frame_{n:05d}.png" for n in range(first, last + 1)]


async def test_two_real_nodes_render_the_demo_scene_into_the_farm_output(
    make_farm: FarmFactory, tmp_path: Path, real_blender: str, demo_scene: Path, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(2, tmp_path, real_blender, node_processes, scene=str(demo_scene))
    scenes = tmp_path / "farm" / "scenes"
    scenes.mkdir(parents=True)
    shutil.copy(demo_scene, scenes / "demo.blend")
    farm = await make_farm(nodes)
    job = await submit(farm, {"from": 1, "to": 6, "scene": "demo.blend"})
    done = await wait_terminal(farm, job["id"], timeout=180)
    assert done["status"] == "completed", done
    assert_every_frame_once(done, tmp_path / "farm", 1, 6)
    for path in (tmp_path / "farm" / "output" / job["id"]).iterdir():
        assert png_size(path) == DEMO_SIZE
    assert len({r["node"] for r in done["results"]}) == 2, "both nodes should have rendered"
    # No shared storage: each node got the scene by upload, stored under its content hash.
    for index in range(2):
        uploaded = list((tmp_path / f"node{index}" / "scenes").glob("*.blend"))
        assert any(len(p.stem) == 64 for p in uploaded)
    served = await farm.get(done["results"][0]["url"])
    assert served.status == 200 and (await served.read()).startswith(b"\x89PNG")
    listing = await (await farm.get("/nodes")).json()
    assert sum(n["frames_rendered"] for n in listing["nodes"]) == 6
    assert all(n["state"] == "up" and n["blender_version"] for n in listing["nodes"])


async def test_a_node_killed_mid_job_loses_only_its_chunk(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(2, tmp_path, fake_blender, node_processes, env={"FAKE_BLENDER_FRAME_SECONDS": "0.15"})
    farm = await make_farm(nodes, chunk_size=3)
    job = await submit(farm, {"from": 1, "to": 24})

    async def some_done() -> bool:
        body = await (await farm.get(f"/job/{job['id']}")).json()
        return bool(body["frames"]["done"] >= 4)

    await eventually(some_done)
    nodes[1].stop(signal.SIGKILL)
    done = await wait_terminal(farm, job["id"], timeout=120)
    assert done["status"] == "completed", done
    assert_every_frame_once(done, tmp_path / "farm", 1, 24)
    listing = await (await farm.get("/nodes")).json()
    states = {n["url"]: n["state"] for n in listing["nodes"]}
    assert states[nodes[1].url] == "down" and states[nodes[0].url] == "up"


async def test_a_node_failing_every_chunk_is_blocklisted_and_the_job_completes(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(
        2,
        tmp_path,
        fake_blender,
        node_processes,
        env={"FAKE_BLENDER_FRAME_SECONDS": "0.1"},
        envs=[{}, {"FAKE_BLENDER_MODE": "exit1"}],
    )
    farm = await make_farm(nodes, chunk_size=2)
    job = await submit(farm, {"from": 1, "to": 16})
    done = await wait_terminal(farm, job["id"], timeout=120)
    assert done["status"] == "completed", done
    assert_every_frame_once(done, tmp_path / "farm", 1, 16)
    bad = next(n for n in (await (await farm.get("/nodes")).json())["nodes"] if n["url"] == nodes[1].url)
    assert bad["chunks_failed"] == 3, "the failing node kept getting chunks after three failures"
    assert bad["state"] == "up"  # it answers; it is only barred from this job
    metrics = await (await farm.get("/metrics")).text()
    assert f'rendernode_farm_node_chunks{{node="{bad["id"]}",status="failed"}} 3.0' in metrics
    assert f'rendernode_farm_node_up{{node="{bad["id"]}"}} 1.0' in metrics
    assert "rendernode_frames_rendered_total 16.0" in metrics


async def test_a_frame_failing_on_three_nodes_fails_the_job_with_blenders_error(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    env = {"FAKE_BLENDER_MODE": "exit1", "FAKE_BLENDER_FAIL_FRAME": "5", "FAKE_BLENDER_FRAME_SECONDS": "0.05"}
    nodes = start_nodes(3, tmp_path, fake_blender, node_processes, env=env)
    farm = await make_farm(nodes, chunk_size=2)
    job = await submit(farm, {"from": 1, "to": 8})
    done = await wait_terminal(farm, job["id"], timeout=120)
    assert done["status"] == "failed"
    assert "frame 5" in done["error"]
    assert "Render error (Invalid argument) cannot save" in done["error"]


async def test_an_orchestrator_restarted_mid_job_reattaches_and_completes(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(2, tmp_path, fake_blender, node_processes, env={"FAKE_BLENDER_FRAME_SECONDS": "0.2"})
    first = await make_farm(nodes, chunk_size=4)
    job = await submit(first, {"from": 1, "to": 20})

    async def under_way() -> bool:
        body = await (await first.get(f"/job/{job['id']}")).json()
        return bool(body["frames"]["done"] >= 2)

    await eventually(under_way)
    await first.close()
    second = await make_farm(nodes, chunk_size=4)
    done = await wait_terminal(second, job["id"], timeout=120)
    assert done["status"] == "completed", done
    assert_every_frame_once(done, tmp_path / "farm", 1, 20)


async def test_cancel_propagates_to_every_node(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(2, tmp_path, fake_blender, node_processes, env={"FAKE_BLENDER_FRAME_SECONDS": "3"})
    farm = await make_farm(nodes, chunk_size=5)
    job = await submit(farm, {"from": 1, "to": 40}, path="/render")

    async def both_busy() -> bool:
        body = await (await farm.get(f"/status/{job['id']}")).json()
        return len(body["chunks_running"]) >= 2

    await eventually(both_busy)
    response = await farm.delete(f"/job/{job['id']}")
    assert response.status == 200 and (await response.json())["status"] == "cancelled"

    async def node_statuses() -> list[str]:
        statuses: list[str] = []
        async with aiohttp.ClientSession() as session:
            for node in nodes:
                async with session.get(node.url + "/jobs") as answer:
                    statuses += [j["status"] for j in (await answer.json())["jobs"]]
        return statuses

    async def all_cancelled() -> bool:
        statuses = await node_statuses()
        return len(statuses) >= 2 and all(s == "cancelled" for s in statuses)

    await eventually(all_cancelled, timeout=15)
    assert (await farm.delete(f"/job/{job['id']}")).status == 409


async def test_nodes_are_added_and_removed_at_runtime(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(1, tmp_path, fake_blender, node_processes)
    farm = await make_farm([])
    assert (await (await farm.get("/nodes")).json())["nodes"] == []
    added = await farm.post("/nodes", json={"url": nodes[0].url})
    assert added.status == 201
    node = await added.json()
    assert node["state"] == "up"
    assert (await farm.post("/nodes", json={"url": nodes[0].url})).status == 200
    assert (await farm.post("/nodes", json={"url": "ftp://x"})).status == 400
    done = await wait_terminal(farm, (await submit(farm, {"from": 1, "to": 3}))["id"])
    assert done["status"] == "completed"
    assert {r["node"] for r in done["results"]} == {node["id"]}
    assert (await farm.delete(f"/nodes/{node['id']}")).status == 200
    assert (await farm.delete(f"/nodes/{node['id']}")).status == 404
    assert (await (await farm.get("/nodes")).json())["nodes"] == []
    assert (await farm.get("/job/nope")).status == 404
    assert (await farm.post("/job", json={"from": 3, "to": 1})).status == 400


async def test_a_node_that_comes_back_rejoins_and_its_abandoned_chunk_is_cancelled(
    make_farm: FarmFactory, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    env = {"FAKE_BLENDER_FRAME_SECONDS": "0.3"}
    (node,) = start_nodes(1, tmp_path, fake_blender, node_processes, env=env)
    farm = await make_farm([node], chunk_size=20)
    job = await submit(farm, {"from": 1, "to": 20})

    async def started() -> bool:
        body = await (await farm.get(f"/job/{job['id']}")).json()
        return bool(body["frames"]["done"] >= 1)

    await eventually(started)
    node.stop(signal.SIGTERM)  # the node leaves its job queued, to resume when it restarts

    async def farm_sees(state: str) -> bool:
        listing = await (await farm.get("/nodes")).json()
        return bool(listing["nodes"][0]["state"] == state)

    await eventually(lambda: farm_sees("down"))

    async def chunk_given_up() -> bool:
        body = await (await farm.get(f"/job/{job['id']}")).json()
        return not body["chunks_running"]

    # Down for longer than the follower's retries: the chunk is declared lost and its frames re-queued.
    await eventually(chunk_given_up, timeout=20)
    back = NodeProcess(node.data_dir, fake_blender, env, "--scene", "stub.blend", port=node.port)
    node_processes.append(back)
    back.wait_ready()
    await eventually(lambda: farm_sees("up"))
    done = await wait_terminal(farm, job["id"], timeout=60)
    assert done["status"] == "completed"
    assert_every_frame_once(done, tmp_path / "farm", 1, 20)

    async def node_jobs() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(back.url + "/jobs") as answer:
            jobs: list[dict[str, Any]] = (await answer.json())["jobs"]
            return jobs

    # The farm has every frame once the last one is downloaded; the node's Blender may still be exiting.
    await eventually(lambda: _newest_completed(node_jobs))
    jobs = await node_jobs()
    # The chunk the farm gave up on was cancelled on the node, not rendered a second time.
    assert jobs[-1]["status"] == "cancelled", jobs
    assert [j["status"] for j in jobs[:-1]] == ["completed"] * (len(jobs) - 1), jobs


async def _newest_completed(list_jobs: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    return (await list_jobs())[0]["status"] == "completed"


def test_a_nodes_file_lists_one_url_per_line(tmp_path: Path) -> None:
    listing = tmp_path / "nodes.txt"
    listing.write_text("# render nodes\nhttp://10.0.0.1:3000\n\n  http://10.0.0.2:3000  # the fast one\n")
    assert read_nodes_file(str(listing)) == ["http://10.0.0.1:3000", "http://10.0.0.2:3000"]
