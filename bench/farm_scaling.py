"""Farm scheduling: makespan against the ideal, and the dynamic scheduler against static round-robin batches.

Stand-in nodes spend a fixed time per frame (RENDERNODE_BENCH_FRAME_SECONDS), so
the ideal makespan is frames x frame time / nodes. The baseline is the
tutorial's orchestrator: the range cut into fixed batches handed round-robin to
the nodes, all at once.

    python bench/farm_scaling.py [--frames-per-node 20] [--frame-seconds 0.25]
"""

from __future__ import annotations

import argparse
import math
import time

from _node import Farm, Node, http_json


def start_nodes(count: int, frame_seconds: float, slow_factor: float = 1.0) -> list[Node]:
    """``count`` nodes; the first is ``slow_factor`` times slower than the rest."""
    return [
        Node({"RENDERNODE_BENCH_FRAME_SECONDS": str(frame_seconds * (slow_factor if i == 0 else 1.0))})
        for i in range(count)
    ]


def wait_done(url: str) -> dict:
    while True:
        status, body = http_json("GET", url)
        if status == 200:
            return body
        time.sleep(0.05)


def farm_makespans(nodes: list[Node], frames: int, runs: int = 2) -> list[float]:
    """Makespans of ``runs`` jobs in a row: the first on a cold farm (nodes' paces unknown), then warm."""
    farm = Farm(nodes)
    spans = []
    try:
        while http_json("GET", farm.url + "/health")[1]["nodes"]["up"] < len(nodes):
            time.sleep(0.1)
        for _ in range(runs):
            started = time.monotonic()
            status, job = http_json("POST", farm.url + "/job", {"from": 1, "to": frames})
            assert status == 202, job
            done = wait_done(f"{farm.url}/job/{job['id']}")
            spans.append(time.monotonic() - started)
            assert done["status"] == "completed" and done["frames"]["done"] == frames, done
        return spans
    finally:
        farm.stop()


def round_robin_makespan(nodes: list[Node], frames: int, batch: int) -> float:
    """The tutorial's algorithm: fixed batches, assigned round-robin, all submitted at once."""
    started = time.monotonic()
    jobs = []
    for index, first in enumerate(range(1, frames + 1, batch)):
        node = nodes[index % len(nodes)]
        status, job = http_json("POST", node.url + "/job", {"from": first, "to": min(first + batch - 1, frames)})
        assert status == 202, job
        jobs.append(f"{node.url}/job/{job['id']}")
    for url in jobs:
        assert wait_done(url)["status"] == "completed"
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames-per-node", type=int, default=20)
    parser.add_argument("--frame-seconds", type=float, default=0.25)
    parser.add_argument("--nodes", default="1,2,4,8")
    args = parser.parse_args()
    seconds = args.frame_seconds

    print(f"scaling: {args.frames_per_node} frames per node, {seconds} s per frame (stand-in nodes on loopback)")
    print(f"{'nodes':>5} {'frames':>6} {'ideal s':>8} {'cold s':>7} {'cold eff':>8} {'warm s':>7} {'warm eff':>8}")
    for count in [int(n) for n in args.nodes.split(",")]:
        frames = args.frames_per_node * count
        nodes = start_nodes(count, seconds)
        try:
            cold, warm = farm_makespans(nodes, frames)
        finally:
            for node in nodes:
                node.stop()
        ideal = frames * seconds / count
        print(
            f"{count:>5} {frames:>6} {ideal:>8.2f} {cold:>7.2f} {ideal / cold:>8.2f} {warm:>7.2f} {ideal / warm:>8.2f}",
            flush=True,
        )
    print("goal: efficiency >= 0.90 at 8 nodes. cold = the farm's first job (node paces unknown, nodes' first")
    print("Blender starts); warm = the next job on the same farm, which knows each node's pace")

    count, frames = 4, args.frames_per_node * 4
    nodes = start_nodes(count, seconds, slow_factor=4.0)
    try:
        dynamic = farm_makespans(nodes, frames, runs=1)[0]
        batch = math.ceil(frames / count / 4)
        static = round_robin_makespan(nodes, frames, batch)
    finally:
        for node in nodes:
            node.stop()
    print(f"\none node 4x slower, {count} nodes, {frames} frames:")
    print(
        f"  dynamic scheduler {dynamic:.2f} s, static round-robin batches of {batch} {static:.2f} s,"
        f" ratio {dynamic / static:.2f} (goal <= 0.60)"
    )


if __name__ == "__main__":
    main()
