"""End to end with the real Blender: the demo scene renders to real PNGs, failures and kills are reported,
an interrupted job resumes without re-rendering, and a .blend's embedded Python never runs."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import NodeFactory, eventually, wait_terminal

DEMO_SIZE = (320, 180)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def make_blend(blender: str, path: Path, script: str) -> Path:
    """Build a .blend with a few lines of bpy, run by the real Blender."""
    code = (
        "import bpy\nbpy.ops.wm.read_factory_settings(use_empty=True)\n"
        + script
        + (f"\nbpy.ops.wm.save_as_mainfile(filepath={str(path)!r})\n")
    )
    subprocess.run(
        [blender, "-b", "--factory-startup", "--python-expr", code], check=True, capture_output=True, timeout=120
    )
    assert path.is_file()
    return path


@pytest.fixture
async def blender_node(make_node: NodeFactory, real_blender: str, demo_scene: Path, tmp_path: Path) -> TestClient:
    return await make_node(blender=real_blender, scene=str(demo_scene), data_dir=tmp_path / "real")


async def test_demo_scene_renders_real_pngs(blender_node: TestClient, tmp_path: Path) -> None:
    response = await blender_node.post("/job", json={"from": 1, "to": 5})
    assert response.status == 202
    job = await response.json()
    done = await wait_terminal(blender_node, job["id"], timeout=120)
    assert done["status"] == "completed", done
    assert done["blender_version"].startswith(("3.", "4.", "5."))
    assert [r["frame"] for r in done["results"]] == [1, 2, 3, 4, 5]
    output = tmp_path / "real" / "output" / job["id"]
    files = sorted(output.glob("frame_*.png"))
    assert [f.name for f in files] == [f"frame_{n:05d}.png" for n in range(1, 6)]
    for path in files:
        assert png_size(path) == DEMO_SIZE
    # The animation moves: consecutive frames differ.
    assert files[0].read_bytes() != files[-1].read_bytes()
    served = await blender_node.get(done["results"][0]["url"])
    assert await served.read() == files[0].read_bytes()
    for result in done["results"]:
        assert 0 < result["render_seconds"] < 30
    metrics = await (await blender_node.get("/metrics")).text()
    assert "rendernode_frames_rendered_total 5.0" in metrics
    assert "rendernode_frame_render_seconds_count 5.0" in metrics
    assert 'rendernode_jobs{status="completed"} 1.0' in metrics


async def test_eevee_and_workbench_render_too(blender_node: TestClient, tmp_path: Path) -> None:
    for engine in ("BLENDER_WORKBENCH", "BLENDER_EEVEE"):
        job = await (
            await blender_node.post("/job", json={"from": 2, "to": 2, "engine": engine, "format": "JPEG"})
        ).json()
        done = await wait_terminal(blender_node, job["id"], timeout=120)
        assert done["status"] == "completed", (engine, done)
        assert (tmp_path / "real" / "output" / job["id"] / "frame_00002.jpg").stat().st_size > 0


async def test_scene_without_camera_fails_with_blenders_error(
    blender_node: TestClient, real_blender: str, tmp_path: Path
) -> None:
    scenes = tmp_path / "real" / "scenes"
    make_blend(real_blender, scenes / "nocamera.blend", "bpy.ops.mesh.primitive_cube_add()")
    job = await (await blender_node.post("/job", json={"from": 1, "to": 2, "scene": "nocamera.blend"})).json()
    done = await wait_terminal(blender_node, job["id"], timeout=120)
    assert done["status"] == "failed"
    assert done["error"] == "Cannot render, no camera"
    assert done["frames"]["done"] == 0


async def test_blender_killed_mid_render_fails_with_the_reason(blender_node: TestClient) -> None:
    job = await (await blender_node.post("/job", json={"from": 1, "to": 200})).json()

    async def rendering_pid() -> int | None:
        body = await (await blender_node.get(f"/job/{job['id']}")).json()
        return body["pid"] if body["status"] == "running" and body["current_frame"] is not None else None

    pid = await eventually(rendering_pid, timeout=60)
    os.kill(pid, signal.SIGKILL)
    done = await wait_terminal(blender_node, job["id"])
    assert done["status"] == "failed"
    assert done["exit_code"] == -9
    assert "SIGKILL" in done["error"]


async def test_interrupted_job_resumes_after_restart_without_rerendering(
    make_node: NodeFactory, real_blender: str, demo_scene: Path, tmp_path: Path
) -> None:
    data = tmp_path / "resume"
    first = await make_node(blender=real_blender, scene=str(demo_scene), data_dir=data)
    job = await (await first.post("/job", json={"from": 1, "to": 8})).json()

    async def two_done() -> bool:
        body = await (await first.get(f"/job/{job['id']}")).json()
        return bool(body["frames"]["done"] >= 2)

    await eventually(two_done, timeout=120)
    await first.close()  # graceful stop: Blender is terminated and the job goes back to the queue
    output = data / "output" / job["id"]
    kept = {p.name: p.stat().st_mtime_ns for p in output.glob("frame_*.png")}
    assert len(kept) >= 2

    second = await make_node(blender=real_blender, scene=str(demo_scene), data_dir=data)
    done = await wait_terminal(second, job["id"], timeout=120)
    assert done["status"] == "completed", done
    assert [r["frame"] for r in done["results"]] == list(range(1, 9))
    for name, mtime in kept.items():
        assert (output / name).stat().st_mtime_ns == mtime, f"{name} was rendered again"
    log = (data / "logs" / f"{job['id']}.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2
    assert f" -s {len(kept) + 1} " in commands[1] or f" -s {len(kept)} " in commands[1]


async def test_embedded_python_in_a_blend_never_runs(
    blender_node: TestClient, real_blender: str, tmp_path: Path
) -> None:
    marker = tmp_path / "autoexec-ran"
    script = (
        "bpy.ops.mesh.primitive_cube_add()\n"
        "cam = bpy.data.objects.new('Cam', bpy.data.cameras.new('Cam'))\n"
        "bpy.context.scene.collection.objects.link(cam)\n"
        "bpy.context.scene.camera = cam\n"
        "bpy.context.scene.render.resolution_x = 32\n"
        "bpy.context.scene.render.resolution_y = 32\n"
        "text = bpy.data.texts.new('payload.py')\n"
        f"text.write({f'open({str(marker)!r}, chr(119)).write(chr(49))'!r})\n"
        "text.use_module = True\n"
    )
    scenes = tmp_path / "real" / "scenes"
    blend = make_blend(real_blender, scenes / "payload.blend", script)
    # Control: with autoexec allowed, Blender does run the registered text on load.
    await asyncio.to_thread(
        subprocess.run, [real_blender, "-b", "--enable-autoexec", str(blend)], capture_output=True, timeout=120
    )
    assert marker.exists(), "control failed: the payload should run when autoexec is enabled"
    marker.unlink()
    job = await (
        await blender_node.post(
            "/job", json={"from": 1, "to": 1, "scene": "payload.blend", "engine": "BLENDER_WORKBENCH"}
        )
    ).json()
    done: dict[str, Any] = await wait_terminal(blender_node, job["id"], timeout=120)
    assert done["status"] == "completed", done
    assert not marker.exists(), "the .blend's embedded Python ran on the render node"
