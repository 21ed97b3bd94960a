"""Poll throughput: GET /job/{id} on a real node against a bare aiohttp handler returning the same JSON.

Both servers run as separate processes with access logging off, measured one after the other by the same
load generator (aiohttp, 32 connections), for a running job (202) and a completed one (200).

    python bench/poll_throughput.py [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _node import BENCH, Node, free_port, http_json, wait_http


async def load(url: str, seconds: float, connections: int) -> float:
    """Requests per second over ``seconds`` with ``connections`` keep-alive connections."""
    count = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < deadline:
                async with session.get(url) as response:
                    await response.read()
                    assert response.status in (200, 202), response.status
                count += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return count / (time.monotonic() - started)


def bare_rate(body: dict, status: int, seconds: float, connections: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(body, handle)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "bare_server.py"), str(port), handle.name, str(status)])
    try:
        wait_http(f"http://127.0.0.1:{port}/job/{body['id']}")
        return asyncio.run(load(f"http://127.0.0.1:{port}/job/{body['id']}", seconds, connections))
    finally:
        proc.terminate()
        proc.wait()
        Path(handle.name).unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    # A long job keeps one job running while we poll it; a one-frame job gives a completed one.
    node = Node({"RENDERNODE_BENCH_FRAME_SECONDS": "1"}, "--max-concurrent", "2", "--access-log", "0")
    try:
        _, finished = http_json("POST", node.url + "/job", {"from": 1, "to": 1})
        _, running = http_json("POST", node.url + "/job", {"from": 1, "to": 1000})
        while http_json("GET", f"{node.url}/job/{finished['id']}")[0] != 200:
            time.sleep(0.1)
        print(f"poll throughput, {args.connections} connections, {args.seconds:.0f} s each")
        print(f"{'job':>10} {'node req/s':>11} {'bare req/s':>11} {'ratio':>6}")
        for label, job in (("running", running), ("completed", finished)):
            status, body = http_json("GET", f"{node.url}/job/{job['id']}")
            node_rate = asyncio.run(load(f"{node.url}/job/{job['id']}", args.seconds, args.connections))
            bare = bare_rate(body, status, args.seconds, args.connections)
            print(f"{label:>10} {node_rate:>11.0f} {bare:>11.0f} {node_rate / bare:>6.2f}", flush=True)
        print("goal: ratio >= 0.80")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
