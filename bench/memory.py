"""Node memory (RSS): idle, with 10,000 finished jobs in its history, and with 1,000 WebSocket subscribers.

The history is built as the node builds it: 10,000 one-frame jobs submitted over HTTP and rendered by
the stand-in Blender, each job's JSON then read back once. Goal: under 100 MB throughout.

    python bench/memory.py [--jobs 10000] [--subscribers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from _node import Node, http_json
from progress_latency import RawSubscriber, connect_subscribers

GOAL_MB = 100.0


async def fill_history(node: Node, jobs: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        submitted = 0
        while submitted < jobs:
            batch = min(200, jobs - submitted)  # within the queue limit

            async def submit() -> None:
                async with session.post(node.url + "/job", json={"from": 1, "to": 1}) as response:
                    assert response.status == 202, await response.text()

            await asyncio.gather(*(submit() for _ in range(batch)))
            submitted += batch
            while True:
                async with session.get(node.url + "/health") as response:
                    health = await response.json()
                if health["queued"] == 0 and health["running"] == 0:
                    break
                await asyncio.sleep(0.2)
        offset = 0
        while True:  # read every job back once, as pollers and dashboards do
            async with session.get(f"{node.url}/jobs?limit=500&offset={offset}") as response:
                page = await response.json()
            await asyncio.gather(*(session.get(f"{node.url}/job/{j['id']}") for j in page["jobs"][:100]))
            offset += len(page["jobs"])
            if not page["next"]:
                break


async def hold_subscribers(node: Node, count: int) -> list[RawSubscriber]:
    clients = await connect_subscribers(node, count)
    # One job's events go out to everyone while they are connected.
    http_json("POST", node.url + "/job", {"from": 1, "to": 5})
    await asyncio.sleep(3)
    for client in clients:
        received = b"".join(chunk for _, chunk in client.chunks)
        assert b'"type":"snapshot"' in received and b'"job_completed"' in received, "a subscriber missed events"
    return clients


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--subscribers", type=int, default=1000)
    args = parser.parse_args()
    node = Node({"RENDERNODE_BENCH_FRAME_SECONDS": "0"}, "--access-log", "0", "--max-concurrent", "2",
                "--queue-limit", "1000")
    try:
        time.sleep(1)
        idle = node.rss_mb()
        started = time.monotonic()
        asyncio.run(fill_history(node, args.jobs))
        history = node.rss_mb()
        filled = time.monotonic() - started

        async def with_subscribers() -> float:
            clients = await hold_subscribers(node, args.subscribers)
            rss = node.rss_mb()
            for client in clients:
                assert client.transport is not None
                client.transport.close()
            return rss

        subscribed = asyncio.run(with_subscribers())
    finally:
        node.stop()
    print("node RSS")
    print(f"  idle:                                  {idle:6.1f} MB")
    print(f"  {args.jobs:,} finished jobs in history:     {history:6.1f} MB  ({filled:.0f} s to render them)")
    print(f"  plus {args.subscribers:,} WebSocket subscribers:    {subscribed:6.1f} MB")
    print(f"  worst / goal: {max(idle, history, subscribed) / GOAL_MB:.2f} (goal: under {GOAL_MB:.0f} MB)")


if __name__ == "__main__":
    main()
