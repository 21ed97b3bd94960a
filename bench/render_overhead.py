"""Wall time of a 10-frame demo render through the node against the same Blender command run directly.

Each round runs three variants in rotating order, so drift on a shared machine hits all of them: Blender
with its output discarded, Blender with its output read through a pipe (as the node must, for progress),
and the node. The medians are compared. The node is timed from POST /job to the moment its WebSocket
reports the job completed.

    python bench/render_overhead.py [--rounds 6] [--frames 10]
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


def direct(blender: str, scene: Path, frames: int, out: Path, major: int, *, keep_output: bool = False) -> float:
    """The node's own Blender command, run directly: output thrown away, or kept (read through a pipe)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    argv = render_argv(blender, str(scene), engine="CYCLES", output_pattern=str(out / OUTPUT_PATTERN),
                       file_format="PNG", frame_start=1, frame_end=frames, threads=0, version_major=major)
    started = time.monotonic()
    if keep_output:
        subprocess.run(argv, capture_output=True, check=True)
    else:
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
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    blender = shutil.which("blender") or "blender"
    work = Path(tempfile.mkdtemp(prefix="rendernode-overhead-"))
    info = asyncio.run(probe_version(blender))
    scene = asyncio.run(ensure_demo_scene(info, work / "scenes", work))
    node = Node(None, "--access-log", "0", blender=blender, scene=str(scene))
    times: dict[str, list[float]] = {"direct": [], "captured": [], "node": []}
    runs = {
        "direct": lambda: direct(blender, scene, args.frames, work / "direct", info.major),
        "captured": lambda: direct(blender, scene, args.frames, work / "captured", info.major, keep_output=True),
        "node": lambda: asyncio.run(through_node(node, args.frames)),
    }
    try:
        asyncio.run(through_node(node, 1))  # warm-up: the node's first job pays one-time costs
        order = list(runs)
        for round_number in range(args.rounds):
            # Rotate the order each round, so a drifting machine favours none of them.
            for name in order[round_number % 3 :] + order[: round_number % 3]:
                times[name].append(runs[name]())
    finally:
        node.stop()
        shutil.rmtree(work)
    d, c, n = (statistics.median(times[k]) for k in ("direct", "captured", "node"))
    print(f"{args.frames}-frame demo render (Blender {info.version}, Cycles), {args.rounds} rounds in rotating order")
    for label, key in (("direct, output discarded", "direct"), ("direct, output captured", "captured"),
                       ("through the node", "node")):
        values = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"  {label:<25} {values} s  (median {statistics.median(times[key]):.2f} s)")
    print(f"  ratio node / direct (discarded): {n / d:.3f}   node / direct (captured): {n / c:.3f}   (goal <= 1.03)")

if __name__ == "__main__":
    main()
