"""Wall time of a 10-frame demo render through the node against the same Blender command run directly.

Each round runs both, the order alternating from round to round, so drift on a shared machine hits both;
the medians are compared. The node is timed from POST /job to the moment its WebSocket reports the job completed.

    python bench/render_overhead.py [--rounds 3] [--frames 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from _node import Node

from rendernode.blender import OUTPUT_PATTERN, ensure_demo_scene, probe_version, render_argv


def direct(blender: str, scene: Path, frames: int, out: Path, major: int) -> float:
    argv = render_argv(blender, str(scene), engine="CYCLES", output_pattern=str(out / OUTPUT_PATTERN),
                       file_format="PNG", frame_start=1, frame_end=frames, threads=0, version_major=major)
    started = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=True)
    elapsed = time.monotonic() - started
    assert len(list(out.glob("frame_*.png"))) == frames
    return elapsed


async def through_node(node: Node, frames: int) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(node.url.replace("http", "ws") + "/ws") as ws:
            await ws.receive()  # snapshot
            started = time.monotonic()
            async with session.post(node.url + "/job", json={"from": 1, "to": frames}) as response:
                job = await response.json()
            async for msg in ws:
                event = json.loads(msg.data)
                if event.get("job_id") == job["id"] and event["type"] in ("job_completed", "job_failed"):
                    assert event["type"] == "job_completed", event
                    return time.monotonic() - started
    raise RuntimeError("the socket closed before the job ended")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    blender = shutil.which("blender") or "blender"
    work = Path(tempfile.mkdtemp(prefix="rendernode-overhead-"))
    info = asyncio.run(probe_version(blender))
    scene = asyncio.run(ensure_demo_scene(info, work / "scenes", work))
    node = Node(None, "--access-log", "0", blender=blender, scene=str(scene))
    direct_times, node_times = [], []
    try:
        asyncio.run(through_node(node, 1))  # warm-up: the node's first job pays one-time costs
        for round_number in range(args.rounds):
            out = work / f"direct-{round_number}"
            out.mkdir()
            # Alternate which goes first, so a drifting machine does not favour either.
            if round_number % 2:
                node_times.append(asyncio.run(through_node(node, args.frames)))
                direct_times.append(direct(blender, scene, args.frames, out, info.major))
            else:
                direct_times.append(direct(blender, scene, args.frames, out, info.major))
                node_times.append(asyncio.run(through_node(node, args.frames)))
    finally:
        node.stop()
        shutil.rmtree(work)
    d, n = statistics.median(direct_times), statistics.median(node_times)
    print(f"{args.frames}-frame demo render (Blender {info.version}, Cycles), {args.rounds} alternating rounds")
    print(f"  direct Blender: {', '.join(f'{t:.2f}' for t in direct_times)} s  (median {d:.2f} s)")
    print(f"  through node:   {', '.join(f'{t:.2f}' for t in node_times)} s  (median {n:.2f} s)")
    print(f"  ratio node/direct: {n / d:.3f} (goal <= 1.03)")


if __name__ == "__main__":
    main()
